"""The runtime image (serving_image/Dockerfile) installs regrow[training,serving], without the operator extra:
what its pods run must not need kopf or the Kubernetes client."""

from __future__ import annotations

import subprocess
import sys

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
