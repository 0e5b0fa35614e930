"""``regrow serve``: load the model, warm it up, serve it, follow its alias, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from regrow.api.modeldeployment import DEFAULT_SERVER as BOUNDS
from regrow.serving.app import App, State
from regrow.serving.feedback import MAX_AGE_SECONDS, Signer
from regrow.serving.httpserver import IDLE_TIMEOUT_SECONDS, HttpServer
from regrow.serving.labellers import Labellers
from regrow.serving.labels import READ_SECONDS, LabelReader
from regrow.serving.mirror import Mirror, ShadowKey
from regrow.serving.model import ModelUnavailable, load, resolve
from regrow.serving.predlog import PredictionLog
from regrow.storage import open_store
from regrow.storage.registry import Registry

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 8 * 1024 * 1024
SHUTDOWN_SECONDS = 10.0  # for requests still arriving when the drain ends (each is answered the moment it is whole)


@dataclass(frozen=True)
class ServeConfig:
    registry: str
    model: str
    alias: str | None = None
    version: str | None = None
    await_version: bool = False  # without a version: report the alias's, load none (the operator pins one)
    host: str = "0.0.0.0"
    port: int = 8080
    metrics_port: int = 0  # serves /metrics and the reference profile, which the port then does not (0: it does)
    threads: int = 1
    refresh_seconds: float = 30.0
    drain_seconds: float = 5.0
    idle_timeout: float = IDLE_TIMEOUT_SECONDS
    max_body: int = DEFAULT_MAX_BODY
    max_connections: int = BOUNDS.max_connections
    max_rows: int = BOUNDS.max_rows
    shed_after: float = BOUNDS.shed_after_milliseconds / 1000  # an inference request that waited longer gets 429
    feature_bins: bool = True
    log_percent: int = 0
    log_max_queue: int = 10000
    log_retention_seconds: float | None = None  # None: the log's old files are not deleted
    label_horizon_seconds: float = MAX_AGE_SECONDS  # a label is taken until its prediction is this old
    labellers_dir: str | None = None  # a folder per named labeller, its files their tokens (None: anyone labels)
    log_flush_seconds: float = 5.0
    label_read_seconds: float = READ_SECONDS  # how often the labels written to the store are read
    endpoint_url: str | None = None
    region: str | None = None
    feedback_key: str | None = field(default=None, repr=False)  # signs prediction ids (REGROW_FEEDBACK_KEY)
    feedback_previous_key: str | None = field(default=None, repr=False)  # the one before a rotation: verifies
    shadow_url: str | None = None  # mirror to the shadow Service there, as it asks (see regrow.serving.mirror)
    shadow_percent: int = 0  # serve as a shadow, asking the stable pods for this percent of their requests


class InferenceServer:
    """The HTTP server, the model it serves, and its shutdown.

    On the first SIGTERM (or ``drain()``) it reports not ready for ``drain_seconds`` (so that endpoints drop
    this pod) while it still answers; then it stops accepting and lets requests in progress finish. A second
    signal (or ``stop()``) stops at once. ``drain()`` and ``stop()`` may be called from any thread.
    """

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        signer = Signer.from_env(config.feedback_key, config.feedback_previous_key)
        self.state = State(name=config.model, alias=config.alias, feature_bins=config.feature_bins,
                           max_rows=config.max_rows, shed_after=config.shed_after, signer=signer,
                           label_horizon=config.label_horizon_seconds, keyed=config.feedback_key is not None,
                           shadow=config.shadow_percent or None, labellers=Labellers(config.labellers_dir),
                           mirror=Mirror(config.shadow_url, config.model, ShadowKey(*signer.keys))
                           if config.shadow_url else None)  # fmt: skip
        if config.log_percent > 0 and not config.feedback_key:
            log.warning("No REGROW_FEEDBACK_KEY: prediction ids verify on this process only, not on other replicas")
        if (config.shadow_url or config.shadow_percent) and not config.feedback_key:
            log.warning("No REGROW_FEEDBACK_KEY: no other process trusts this one's shadow handshake")
        apart = config.metrics_port > 0
        self.http = HttpServer(App(self.state, observed=not apart), config.max_body, config.max_connections,
                               config.idle_timeout)  # fmt: skip
        # Prometheus and the operator only: small bodies, few connections.
        self.metrics_http = HttpServer(App(self.state, inference=False), 64 * 1024, 64) if apart else None
        self.state.in_flight = self.http.in_flight
        self.state.lag = lambda: self.http.lag
        self.state.waited = self.http.busy
        self.registry = Registry(open_store(config.registry, endpoint_url=config.endpoint_url, region=config.region))
        self._loop: asyncio.AbstractEventLoop | None = None  # the one run() runs on
        self._stop = asyncio.Event()

    def drain(self) -> None:
        if self.state.draining or self.config.drain_seconds <= 0:
            self.stop()
            return
        log.info("Draining for %.1fs before shutting down", self.config.drain_seconds)
        self.state.draining = self.http.draining = True
        self._threadsafe(lambda loop: loop.call_later(self.config.drain_seconds, self._stop.set))

    def stop(self) -> None:
        self._threadsafe(lambda _: self._stop.set())

    def _threadsafe(self, call: Callable[[asyncio.AbstractEventLoop], object]) -> None:
        if self._loop is None:
            raise RuntimeError("the server is not running")
        self._loop.call_soon_threadsafe(call, self._loop)

    async def run(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.drain)
        await self.http.start(self.config.host, self.config.port)
        log.info("Listening on %s:%d", self.config.host, self.config.port)
        if self.metrics_http is not None:
            await self.metrics_http.start(self.config.host, self.config.metrics_port)
            log.info("Metrics and the reference profile on %s:%d", self.config.host, self.config.metrics_port)
        loader = asyncio.create_task(keep_model(self.state, self.registry, self.config))
        if self.state.mirror is not None:
            self.state.mirror.start()
        try:
            await self._stop.wait()
        finally:
            loader.cancel()
            if self.state.mirror is not None:
                await self.state.mirror.stop()
            await self.http.shutdown(SHUTDOWN_SECONDS)
            if self.metrics_http is not None:
                await self.metrics_http.shutdown(0)
            if self.state.predictions is not None:
                await asyncio.to_thread(self.state.predictions.close)
            if self.state.labels is not None:
                await asyncio.to_thread(self.state.labels.stop)


async def keep_model(state: State, registry: Registry, config: ServeConfig) -> None:
    """Load the model as soon as the registry has it (a pinned version wins over the alias), then keep the
    alias's reading current, for the operator to notice a moved alias and roll out its version."""
    retry = min(5.0, config.refresh_seconds)
    while state.model is None:
        try:
            try:  # where the alias points, reported from now on: the version to load, unless one is pinned
                await read_alias(state, registry, config)
            except Exception:
                if config.version is None:
                    raise
                log.exception("Could not look up alias %s", config.alias)
            version = resolve(registry, config.model, config.alias, config.version, state.alias_reading,
                              config.await_version)  # fmt: skip
            model = await asyncio.to_thread(load, registry, config.model, version, config.threads)
            await asyncio.to_thread(model.warm_up)
        except ModelUnavailable as error:
            state.error, state.reason = str(error), error.reason
            log.warning("Model not available yet (retrying in %.0fs): %s", retry, error)
            await asyncio.sleep(retry)
            continue
        except Exception as error:  # unreadable store, corrupt model: say why, keep trying, stay alive
            state.error, state.reason = f"could not load the model: {type(error).__name__}: {error}", "ModelUnavailable"
            log.exception("Could not load the model (retrying in %.0fs)", retry)
            await asyncio.sleep(retry)
            continue
        predictions = labels = None
        if config.log_percent > 0 and not state.shadow:
            predictions = PredictionLog(registry.store, model.name, model.version, config.log_percent,
                                        config.log_max_queue, config.log_flush_seconds,
                                        retention=config.log_retention_seconds)  # fmt: skip
            labels = LabelReader(registry.store, model.name, model.version, model.task == "classification",
                                 state.signer, state.issuer, config.label_read_seconds)  # fmt: skip
            labels.start()
        state.serve(model, predictions, labels)
        log.info("Serving %s version %s from %s", model.name, model.version, model.uri)
    while config.alias is not None:
        try:
            await read_alias(state, registry, config)
        except Exception:  # a store hiccup must not stop serving; the next refresh tries again
            log.exception("Could not look up alias %s", config.alias)
        await asyncio.sleep(config.refresh_seconds)


async def read_alias(state: State, registry: Registry, config: ServeConfig) -> None:
    """Read where the alias points now (nothing to read without one)."""
    if config.alias is not None:
        state.alias_reading = await asyncio.to_thread(registry.read_alias, config.model, config.alias)
        state.alias_read_at = time.monotonic()


def run(config: ServeConfig) -> None:
    import uvloop  # noqa: PLC0415

    uvloop.run(InferenceServer(config).run())
