"""``regrow serve``: load the model, warm it up, serve it, follow its alias, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from types import FrameType

import uvicorn

from regrow.serving.app import DEFAULT_MAX_BODY, App, State
from regrow.serving.model import ModelNotPublished, ModelUnavailable, load, resolve
from regrow.serving.predlog import PredictionLog
from regrow.storage import open_store
from regrow.storage.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeConfig:
    registry: str
    model: str
    alias: str | None = None
    version: str | None = None
    host: str = "0.0.0.0"
    port: int = 8080
    threads: int = 1
    refresh_seconds: float = 30.0
    drain_seconds: float = 5.0
    max_body: int = DEFAULT_MAX_BODY
    feature_bins: bool = True
    log_percent: int = 0
    log_max_queue: int = 10000
    log_flush_seconds: float = 5.0
    endpoint_url: str | None = None
    region: str | None = None


class DrainingServer(uvicorn.Server):
    """On the first SIGTERM, report not ready for ``drain_seconds`` (so endpoints drop this pod) while still
    answering; then stop accepting and let in-flight requests finish. A second signal stops at once."""

    def __init__(self, config: ServeConfig) -> None:
        self.serve_config = config
        self.state = State(
            name=config.model, alias=config.alias, max_body=config.max_body, feature_bins=config.feature_bins
        )
        self.registry = Registry(open_store(config.registry, endpoint_url=config.endpoint_url, region=config.region))
        super().__init__(
            uvicorn.Config(
                App(self.state),
                host=config.host,
                port=config.port,
                http="httptools",
                loop="uvloop",
                lifespan="on",
                access_log=False,
                log_level="warning",
                timeout_graceful_shutdown=30,
            )
        )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = self.serve_config.drain_seconds
        if self.state.draining or drain <= 0:
            super().handle_exit(sig, frame)
            return
        log.info("Received signal %s: draining for %.1fs before shutting down", sig, drain)
        self.state.draining = True
        threading.Timer(drain, super().handle_exit, (sig, frame)).start()

    async def run_until_stopped(self) -> None:
        loader = asyncio.create_task(keep_model(self.state, self.registry, self.serve_config))
        try:
            await self.serve()
        finally:
            loader.cancel()
            if self.state.predictions is not None:
                await asyncio.to_thread(self.state.predictions.close)


async def keep_model(state: State, registry: Registry, config: ServeConfig) -> None:
    """Load the model as soon as the registry has it (a pinned version wins over the alias), then keep
    ``alias_version`` current, for the operator to notice a moved alias and roll out its version."""
    retry = min(5.0, config.refresh_seconds)
    while state.model is None:
        try:
            version = await asyncio.to_thread(resolve, registry, config.model, config.alias, config.version)
            model = await asyncio.to_thread(load, registry, config.model, version, config.threads)
            await asyncio.to_thread(model.warm_up)
        except ModelUnavailable as error:
            state.error, state.waiting = str(error), isinstance(error, ModelNotPublished)
            log.warning("Model not available yet (retrying in %.0fs): %s", retry, error)
            await asyncio.sleep(retry)
            continue
        except Exception as error:  # unreadable store, corrupt model: say why, keep trying, stay alive
            state.error, state.waiting = f"could not load the model: {type(error).__name__}: {error}", False
            log.exception("Could not load the model (retrying in %.0fs)", retry)
            await asyncio.sleep(retry)
            continue
        predictions = None
        if config.log_percent > 0:
            predictions = PredictionLog(registry.store, model.name, model.version, config.log_percent,
                                        config.log_max_queue, config.log_flush_seconds)  # fmt: skip
        state.serve(model, predictions)
        log.info("Serving %s version %s from %s", model.name, model.version, model.uri)
    while config.alias is not None:
        try:
            state.alias_version = await asyncio.to_thread(registry.resolve, config.model, config.alias)
        except Exception:  # a store hiccup must not stop serving; the next refresh tries again
            log.exception("Could not look up alias %s", config.alias)
        await asyncio.sleep(config.refresh_seconds)


def run(config: ServeConfig) -> None:
    import uvloop  # noqa: PLC0415

    uvloop.run(DrainingServer(config).run_until_stopped())
