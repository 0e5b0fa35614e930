"""``regrow drift``: a policy backtested on recorded traffic, from a registry's model or a profile file."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from regrow.cli import main
from regrow.storage import open_store
from regrow.storage.registry import Registry
from regrow.training.sample_data import sample_csv
from regrow.training.trainer import train
from tests.unit.test_mixed import publish_penguins
from tests.unit.test_trainer import make_spec, write_dataset

ROOT = Path(__file__).resolve().parents[2]
POLICY = ROOT / "examples" / "iris-driftpolicy.yaml"  # psi and ks, calibrated; two breaches in a row


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A file:// registry whose iris model is the champion."""
    tmp = tmp_path_factory.mktemp("backtest")
    data = write_dataset(tmp, "iris")
    uri = f"file://{tmp}/registry"
    train(make_spec(data, uri, "logisticRegression", promote={"alias": "champion"}), data.read_bytes(),
          Registry(open_store(uri)), {"name": "t"})  # fmt: skip
    return uri


def traffic(rows: int, shift: float, seed: int) -> pd.DataFrame:
    """Iris rows drawn again (drift-free) or with every measurement ``shift`` cm larger, with the columns a
    prediction log carries besides the features."""
    iris = pd.read_csv(io.BytesIO(sample_csv("iris")))
    rng = np.random.default_rng(seed)
    out = iris.iloc[rng.integers(0, len(iris), rows)].reset_index(drop=True)
    features = [c for c in out.columns if c != "species"]
    out[features] += shift
    out["id"] = [f"req-{seed}-{i}" for i in range(rows)]
    out["timestamp"] = "2026-11-30T12:00:00Z"
    return out


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    status = main(["drift", *args])
    out, err = capsys.readouterr()
    return status, [json.loads(line) for line in out.splitlines()], err


def test_a_policy_backtested_window_by_window(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "traffic.csv"
    frames = [traffic(3000, 0.0, 1), traffic(3000, 1.0, 2), traffic(300, 1.0, 3)]
    pd.concat(frames, ignore_index=True).to_csv(data, index=False)
    profile = f"{registry}/m@champion"
    args = ["--profile", profile, "--data", str(data), "--policy", str(POLICY), "--window-rows", "1000"]
    status, windows, _ = run(capsys, *args)

    assert status == 0
    assert [w["window"] for w in windows] == list(range(7))
    assert [w["rows"] for w in windows] == [[i * 1000, min(i * 1000 + 999, 6299)] for i in range(7)]
    assert [w["samples"] for w in windows] == [1000] * 6 + [300]
    assert [w["breached"] for w in windows] == [False] * 3 + [True] * 3 + [False]  # 300 < minSamples 500
    assert [w["driftDetected"] for w in windows] == [False] * 4 + [True] * 2 + [False]
    assert windows[6]["driftedFeatures"] == 0
    for window in windows:
        assert [f["name"] for f in window["features"]] == [
            c for c in frames[0].columns if c not in ("species", "id", "timestamp")
        ]
        assert window["driftedFeatures"] == sum(f["drifted"] for f in window["features"])
        for feature in window["features"]:
            assert set(feature["scores"]) == set(feature["thresholds"]) == {"psi", "ks"}
            assert all(isinstance(v, float) for v in [*feature["scores"].values(), *feature["thresholds"].values()])
    assert run(capsys, *args, "--fail-on-breach")[0] == 1


def test_the_whole_file_is_one_window_under_the_default_policy(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No policy: the DriftPolicy defaults (tests by type, calibrated). A profile file and Parquet work as well."""
    profile = tmp_path / "profile.json"
    store = Registry(open_store(registry))
    profile.write_bytes(store.read("m", store.resolve("m", "champion") or "", "profile.json"))
    data = tmp_path / "traffic.parquet"
    traffic(2000, 0.0, 4).to_parquet(data)
    status, windows, _ = run(capsys, "--profile", str(profile), "--data", str(data), "--fail-on-breach")
    assert status == 0
    (window,) = windows
    assert window["rows"] == [0, 1999] and window["samples"] == 2000 and not window["breached"]
    for feature in window["features"]:  # no tests named: by type, psi for these numeric features, chiSquare none
        assert feature["scores"]["psi"] is not None and feature["scores"]["chiSquare"] is None


def test_inputs_it_cannot_score_exit_2_and_say_why(
    registry: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "traffic.csv"
    traffic(100, 0.0, 5).drop(columns=["petal_width_cm"]).to_csv(data, index=False)
    status, windows, err = run(capsys, "--profile", f"{registry}/m@champion", "--data", str(data))
    assert (status, windows) == (2, []) and "petal_width_cm" in err

    traffic(100, 0.0, 5).to_csv(data, index=False)
    status, _, err = run(capsys, "--profile", f"{registry}/m@nowhere", "--data", str(data))
    assert status == 2 and "no alias or version 'nowhere'" in err
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.read_text().replace('driftShare: "0.5"', 'driftShare: "2"'))
    status, _, err = run(capsys, "--profile", f"{registry}/m@champion", "--data", str(data), "--policy", str(policy))
    assert status == 2 and "driftShare" in err
    with pytest.raises(SystemExit):
        main(["drift", "--profile", "p", "--data", str(data), "--window-rows", "0"])


def test_a_profile_from_an_s3_registry(
    registry: str, tmp_path: Path, s3_bucket: str, s3_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """<registry-uri>/<model>@<version> on an S3-compatible store, named by --endpoint-url."""
    local = Registry(open_store(registry))
    version = local.resolve("m", "champion") or ""
    s3 = open_store(f"s3://{s3_bucket}/models", endpoint_url=s3_endpoint)
    for name in ("profile.json", "metadata.json", "model.onnx"):
        s3.put(f"m/versions/{version}/{name}", local.read("m", version, name))
    data = tmp_path / "traffic.csv"
    traffic(1000, 0.0, 6).to_csv(data, index=False)
    args = ["--profile", f"s3://{s3_bucket}/models/m@{version}", "--data", str(data), "--endpoint-url", s3_endpoint]
    status, windows, err = run(capsys, *args)
    assert status == 0, err
    assert windows[0]["samples"] == 1000 and len(windows[0]["features"]) == 4


def test_categorical_columns_are_backtested_by_their_categories(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A shift in the island mix, and then an island never seen in training, drift the island column alone;
    ks does not apply to a categorical column and says so (null), psi does."""
    version = publish_penguins(tmp_path)
    penguins = pd.read_csv(io.BytesIO(sample_csv("penguins")))
    rng = np.random.default_rng(5)
    quiet, mixed, unseen = (penguins.iloc[rng.integers(0, len(penguins), 1000)].reset_index(drop=True) for _ in "abc")
    mixed["island"] = np.where(rng.random(1000) < 0.8, "Torgersen", mixed["island"])
    unseen["island"] = np.where(rng.random(1000) < 0.5, "Atlantis", unseen["island"])
    data = tmp_path / "traffic.csv"
    pd.concat([quiet, mixed, unseen], ignore_index=True).to_csv(data, index=False)
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"kind": "DriftPolicy", "spec": {
        "targetRef": {"name": "penguins"}, "tests": [{"type": "psi"}, {"type": "ks"}], "driftShare": "0.1",
        "consecutiveBreaches": 1, "minSamples": 500,
    }}))  # fmt: skip
    profile = f"file://{tmp_path}/registry/penguins@{version}"
    status, windows, _ = run(capsys, "--profile", profile, "--data", str(data), "--policy", str(policy),
                             "--window-rows", "1000")  # fmt: skip
    assert status == 0 and [w["breached"] for w in windows] == [False, True, True]
    for window in windows:
        island = next(f for f in window["features"] if f["name"] == "island")
        assert island["scores"]["ks"] is None and island["thresholds"]["ks"] is None
        assert island["scores"]["psi"] is not None
        drifted = {f["name"] for f in window["features"] if f["drifted"]}
        assert drifted <= {"island"} and (window["window"] == 0) != ("island" in drifted), window
