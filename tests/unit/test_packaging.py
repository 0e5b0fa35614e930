"""The runtime image (serving_image/Dockerfile) installs regrow[training,serving], without the operator extra:
what its pods run must not need kopf or the Kubernetes client."""

from __future__ import annotations

import subprocess
import sys

import pytest

from regrow.cli import main

OPERATOR_ONLY = ("kopf", "kubernetes")


def loaded_top_level(modules: list[str]) -> set[str]:
    """The top-level packages that importing ``modules`` loads, in a fresh interpreter."""
    code = f"import sys\nfor m in {modules!r}: __import__(m)\nprint(' '.join({{n.split('.')[0] for n in sys.modules}}))"
    return set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())


def test_serving_and_training_load_no_kubernetes_client() -> None:
    loaded = loaded_top_level(["regrow.cli", "regrow.serving.server", "regrow.training.entrypoint"])
    assert "regrow" in loaded and "onnxruntime" in loaded  # the check sees what the imports load
    assert not loaded & set(OPERATOR_ONLY)


def test_the_operator_loads_them() -> None:
    assert loaded_top_level(["regrow.controller.handlers"]) >= set(OPERATOR_ONLY)


@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["approve", "iris"], "kubernetes", "operator"),
        (["promote", "iris"], "kubernetes", "operator"),
        (["sample-data", "iris"], "sklearn", "training"),
    ],
)
def test_a_missing_extra_is_named(
    argv: list[str], missing: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in [m for m in sys.modules if m == missing or m.startswith(f"{missing}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, missing, None)  # importing it now raises ModuleNotFoundError
    for name in [m for m in sys.modules if m.startswith(("regrow.controller", "regrow.training"))]:
        monkeypatch.delitem(sys.modules, name)  # so that the subcommand imports its dependencies again
    assert main(argv) == 1
    assert f"regrow {argv[0]} needs {missing}: pip install 'regrow[{extra}]'" in capsys.readouterr().err
