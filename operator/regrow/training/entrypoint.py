"""``regrow train``: what a training pod runs. Reports its outcome as JSON on stdout and in the
container's termination message, where the operator reads it without access to the store."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from regrow.api import InvalidSpec, TrainingJobSpec, parse_spec
from regrow.contracts import TrainerReport
from regrow.storage import StoreUnavailable, open_store
from regrow.storage.registry import Registry
from regrow.training.trainer import TrainingError, read_dataset, train

log = logging.getLogger(__name__)
TERMINATION_LOG = Path("/dev/termination-log")
MESSAGE_LIMIT = 4096  # what the kubelet keeps of a termination message


def report(outcome: TrainerReport, termination_log: Path | None) -> None:
    """The outcome on stdout, and in the termination message: whole, or without the passed checks' messages,
    or without the checks (the run record keeps them), so that it always parses."""
    text = outcome.to_json()
    print(text, flush=True)
    if len(text) > MESSAGE_LIMIT and outcome.validation:
        brief = [c.model_copy(update={"message": ""}) if c.passed else c for c in outcome.validation]
        text = outcome.model_copy(update={"validation": brief}).to_json()
    if len(text) > MESSAGE_LIMIT:
        text = outcome.model_copy(update={"validation": None}).to_json()
    if termination_log is not None:
        try:
            termination_log.write_text(text[:MESSAGE_LIMIT])
        except OSError as error:
            log.warning("Could not write the termination message to %s: %s", termination_log, error)


def run(spec_text: str, run_info: dict[str, str], termination_log: Path | None) -> int:
    """Exit status 0 on success, 1 when the run failed (the reason is in the report). Whatever happens, the
    report is written, so the kubelet never falls back to the log's tail (which may quote data) for the
    termination message that becomes the TrainingJob's status."""
    try:
        spec = parse_spec(TrainingJobSpec, json.loads(spec_text))
        storage = spec.storage
        store = open_store(
            spec.output.registry,
            endpoint_url=storage.endpoint_url if storage else None,
            region=storage.region if storage else None,
        )
        result = train(spec, read_dataset(spec), Registry(store), run_info)
    except (InvalidSpec, json.JSONDecodeError) as error:
        report(TrainerReport(succeeded=False, reason="InvalidSpec", message=str(error)), termination_log)
        return 1
    except TrainingError as error:
        report(error.report(), termination_log)
        return 1
    except StoreUnavailable as error:  # names the store and the call, not what it answered
        report(TrainerReport(succeeded=False, reason="StoreUnavailable", message=str(error)), termination_log)
        return 1
    except Exception as error:  # a bug or a store failure: its message may quote data, so the log gets it
        log.exception("Training failed")
        message = f"the trainer failed with {type(error).__name__}; the training pod's log has the details"
        report(TrainerReport(succeeded=False, reason="TrainerError", message=message), termination_log)
        return 1
    report(result.report(), termination_log)
    return 0


def default_termination_log() -> Path | None:
    return TERMINATION_LOG if TERMINATION_LOG.parent.is_dir() and TERMINATION_LOG.exists() else None
