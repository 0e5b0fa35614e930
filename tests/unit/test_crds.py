"""The generated CRDs: current, structural, and in step with the models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from regrow.api import KINDS
from regrow.api.crd import crd_files, custom_resource_definition
from regrow.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("folder", ["crds", "charts/regrow/crds"])
def test_committed_crds_match_the_models(folder: str) -> None:
    for name, text in crd_files().items():
        assert (ROOT / folder / name).read_text() == text, f"{folder}/{name} is stale: run `make crds`"
    assert sorted(p.name for p in (ROOT / folder).glob("*.yaml")) == sorted(crd_files())


def test_crds_command_writes_and_checks(tmp_path: Path) -> None:
    assert main(["crds", "--output-dir", str(tmp_path)]) == 0
    assert main(["crds", "--check", "--output-dir", str(tmp_path)]) == 0
    victim = next(tmp_path.glob("*.yaml"))
    victim.write_text(victim.read_text() + "# edited by hand\n")
    assert main(["crds", "--check", "--output-dir", str(tmp_path)]) == 1


def _walk(node: dict[str, Any], path: str) -> list[str]:
    """Violations of the structural-schema rules under ``node``."""
    problems = []
    if "$ref" in node or ("additionalProperties" in node and node["additionalProperties"] is False):
        problems.append(f"{path}: $ref or additionalProperties: false")
    if node.get("x-kubernetes-int-or-string"):
        if node.get("anyOf") != [{"type": "integer"}, {"type": "string"}]:
            problems.append(f"{path}: int-or-string without the canonical anyOf")
    elif "type" not in node:
        problems.append(f"{path}: no type")
    elif "anyOf" in node:
        problems.append(f"{path}: anyOf outside int-or-string")
    elif (
        node["type"] == "object"
        and not ({"properties", "additionalProperties"} & node.keys())
        and not path.endswith(".metadata")
    ):
        problems.append(f"{path}: an object the API server would empty (no properties, no additionalProperties)")
    for key, sub in node.get("properties", {}).items():
        problems += _walk(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            problems += _walk(node[key], f"{path}[{key}]")
    return problems


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_schemas_are_structural(kind: Any) -> None:
    crd = custom_resource_definition(kind)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, kind.kind) == []


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.kind)
def test_every_model_field_is_in_the_schema(kind: Any) -> None:
    schema = custom_resource_definition(kind)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec_props = schema["properties"]["spec"]["properties"]
    wire = {f.alias or name for name, f in kind.spec.model_fields.items()}
    assert set(spec_props) == wire
    required = {f.alias or name for name, f in kind.spec.model_fields.items() if f.is_required()}
    assert set(schema["properties"]["spec"].get("required", [])) == required


def test_names_and_columns() -> None:
    crds = {k.kind: yaml.safe_load(crd_files()[f"regrow.dev_{k.plural}.yaml"]) for k in KINDS}
    assert {k: c["spec"]["names"]["shortNames"] for k, c in crds.items()} == {
        "TrainingJob": ["tj"],
        "ModelDeployment": ["md"],
        "DriftPolicy": ["dp"],
    }
    assert all(c["spec"]["names"]["categories"] == ["regrow"] for c in crds.values())
    md_columns = [c["name"] for c in crds["ModelDeployment"]["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert md_columns[:5] == ["Model", "Alias", "Version", "Ready", "Replicas"]
    for crd in crds.values():
        conditions = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"][
            "conditions"
        ]
        assert conditions["x-kubernetes-list-type"] == "map"
        assert conditions["x-kubernetes-list-map-keys"] == ["type"]
