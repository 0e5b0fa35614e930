"""Serving throughput and latency, side by side, on this machine. Prints a table; asserts nothing.

    python benchmarks/serving.py [--seconds 10] [--warmup 2] [--connections 8] [--mlserver-python PATH]

Each server gets one worker pinned to CPU 0; wrk (Debian's package) drives it from CPU 1 over loopback,
with the same OIP v2 request (iris, batch 1 and 32). Compared:
  regrow            `regrow serve` (onnxruntime), feature-bin counting on, and off
  mlserver          MLServer + mlserver-sklearn serving the same scikit-learn pipeline (another virtualenv:
                    python -m venv V && V/bin/pip install mlserver mlserver-sklearn; pass --mlserver-python)
  bare-uvicorn      uvicorn + httptools + uvloop answering constant JSON: the HTTP ceiling
  bare regrow HTTP  the same constant JSON from regrow's own HTTP layer (regrow.serving.httpserver)
  minimal OIP       parse the request, run the ONNX session, write its outputs, on uvicorn and on regrow's
                    HTTP layer: what any Python OIP server over onnxruntime costs at least (no validation,
                    metrics or logging), and what regrow adds to that
  onnxruntime       the same ONNX model called in-process: the compute floor
  regrow penguins   a model of mixed columns (palmerpenguins: island and sex categories, four numbers), one
                    tensor per column (BYTES and FP32), feature bins on and off: what categorical binning costs;
                    beside MLServer serving the same scikit-learn pipeline through its pandas codec
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import ROW, free_port, infer_body, regrow_serve, serve, trained_iris, wait_up, wrk

from regrow.inference import OnnxModel
from regrow.storage.registry import MODEL

RESPONSE = b'{"model_name":"iris","outputs":[{"name":"label","shape":[1],"datatype":"BYTES","data":["versicolor"]}]}'
CONSTANT = f"BODY = {RESPONSE!r}\n"
BARE_APP = CONSTANT + textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": BODY})
    """
)
# The least any Python OIP server over ONNX does: parse the JSON, run the session, write its outputs. No
# validation, metrics or logging: what the framework around the model costs, and what regrow adds to it.
SESSION = textwrap.dedent(
    """
    import os, numpy as np, onnxruntime as ort, orjson
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(os.environ["MODEL"], options, providers=["CPUExecutionProvider"])

    def answer(body):
        tensor = orjson.loads(body)["inputs"][0]
        labels, probabilities = session.run(
            None, {"input": np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])}
        )
        outputs = [{"name": "label", "data": labels.tolist()}, {"name": "probabilities", "data": probabilities}]
        return orjson.dumps({"model_name": "iris", "outputs": outputs}, option=orjson.OPT_SERIALIZE_NUMPY)
    """
)
MINIMAL_APP = SESSION + textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body, more = b"", True
        while more:
            message = await receive()
            body, more = body + message.get("body", b""), message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer(body)})
    """
)
# An app on regrow's HTTP layer: main() serves handler(request) -> Response, which each app defines after
# this text, before it calls uvloop.run(main()).
REGROW_HTTP = textwrap.dedent(
    """
    import asyncio, sys, uvloop
    from regrow.serving.httpserver import HttpServer, Response

    async def main():
        await HttpServer(handler, 1 << 20, 1000).start("127.0.0.1", int(sys.argv[1]))
        await asyncio.Event().wait()
    """
)
BARE_REGROW_APP = CONSTANT + REGROW_HTTP + "handler = lambda request, c=Response(200, BODY): c\nuvloop.run(main())\n"
MINIMAL_REGROW_APP = SESSION + REGROW_HTTP + "handler = lambda r: Response(200, answer(r.body))\nuvloop.run(main())\n"
MINIMAL = "minimal OIP + onnxruntime"
MINIMAL_REGROW = "minimal OIP, regrow HTTP"
MLSERVER_TRAIN = textwrap.dedent(
    """
    import sys, joblib, pandas as pd
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    frame = pd.read_csv(sys.argv[1])
    y = frame.pop("species")
    model = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler()),
                      ("model", LogisticRegression(max_iter=1000))]).fit(frame.to_numpy(), y)
    joblib.dump(model, sys.argv[2])
    """
)


# The same pipeline for penguins as the trainer builds: categories one-hot (the missing value a category),
# numbers imputed and scaled, logistic regression; MLServer reads a request of columns with its pandas codec.
MLSERVER_PENGUINS = textwrap.dedent(
    """
    import sys, joblib, pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler
    frame = pd.read_csv(sys.argv[1])
    y = frame.pop("species")
    categorical = ["island", "sex"]
    numeric = [c for c in frame.columns if c not in categorical]
    frame[categorical] = frame[categorical].fillna("").astype(object)
    numbers = Pipeline([("impute", SimpleImputer(strategy="median")), ("scale", StandardScaler())])
    prepare = ColumnTransformer([("categories", OneHotEncoder(handle_unknown="ignore"), categorical),
                                 ("numbers", numbers, numeric)])
    model = Pipeline([("prepare", prepare), ("model", LogisticRegression(max_iter=1000))]).fit(frame, y)
    joblib.dump(model, sys.argv[2])
    """
)


def in_process(model: OnnxModel, batch: int, seconds: float) -> tuple[float, float, float]:
    x = np.asarray([ROW] * batch, dtype=np.float32)
    times = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        model.predict(x)
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return len(times) / ms.sum() * 1e3, float(np.percentile(ms, 50)), float(np.percentile(ms, 99))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each measured run")
    parser.add_argument("--mlserver-python", help="python of a virtualenv with mlserver and mlserver-sklearn")
    return parser.parse_args()


def mlserver(python: str, work: Path, name: str = "iris", train: str = MLSERVER_TRAIN) -> tuple[list[str], int]:
    """MLServer's command line and port, serving the same pipeline as scikit-learn's joblib file."""
    home = work / f"mlserver-{name}"
    models = home / name
    models.mkdir(parents=True)
    subprocess.run([python, "-c", train, str(work / f"{name}.csv"), str(models / "model.joblib")], check=True)
    port = free_port()
    settings = {"http_port": port, "grpc_port": free_port(), "metrics_port": free_port(), "parallel_workers": 0}
    (home / "settings.json").write_text(json.dumps(settings))
    model = {
        "name": name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib", "version": "v1"},
    }
    (models / "model-settings.json").write_text(json.dumps(model))
    return [str(Path(python).with_name("mlserver")), "start", str(home)], port


PENGUIN = {"island": "Biscoe", "bill_length_mm": 46.1, "bill_depth_mm": 13.2, "flipper_length_mm": 211.0,
           "body_mass_g": 4500.0, "sex": "female"}  # fmt: skip


def penguin_body(batch: int, pandas: bool = False) -> str:
    """An OIP v2 request of ``batch`` penguins: one tensor per column (with ``pandas``, as MLServer's pandas
    codec reads them: shape [n], strings as str)."""
    text = {"parameters": {"content_type": "str"}} if pandas else {}
    return json.dumps({**({"parameters": {"content_type": "pd"}} if pandas else {}), "inputs": [
        {"name": name, "shape": [batch] if pandas else [batch, 1], "data": [value] * batch,
         **({"datatype": "BYTES", **text} if isinstance(value, str) else {"datatype": "FP32"})}
        for name, value in PENGUIN.items()
    ]})  # fmt: skip


def report(args: argparse.Namespace, rows: list[tuple[str, int, float, float, float, int]],
           floor: dict[int, tuple[float, float, float]]) -> None:  # fmt: skip
    print(
        f"\nServing iris (4 features, logistic regression), {args.seconds}s per run, {args.connections} connections, "
        f"one server worker on CPU 0, wrk on CPU 1\n"
    )
    print(f"{'server':<26}{'batch':>6}{'req/s':>11}{'rows/s':>11}{'p50 ms':>9}{'p99 ms':>9}{'non-2xx':>9}")
    for name, batch, rps, p50, p99, errors in rows:
        print(f"{name:<26}{batch:>6}{rps:>11.0f}{rps * batch:>11.0f}{p50:>9.2f}{p99:>9.2f}{errors:>9}")
    for batch, (calls, p50, p99) in floor.items():
        print(
            f"{'onnxruntime in-process':<26}{batch:>6}{calls:>11.0f}{calls * batch:>11.0f}{p50:>9.3f}{p99:>9.3f}{'':>9}"
        )
    by = {(name, batch): rps for name, batch, rps, *_ in rows}
    print()
    for batch in (1, 32):
        regrow_rps = by[("regrow", batch)]
        ceiling = by[("bare-uvicorn", batch)]
        print(
            f"batch {batch}: regrow = {regrow_rps / ceiling:.0%} of the bare-HTTP ceiling (uvicorn) and "
            f"{regrow_rps / by[('bare regrow HTTP', batch)]:.0%} of a constant reply on its own HTTP layer "
            f"(a minimal OIP app over the same session: {by[(MINIMAL, batch)] / ceiling:.0%} on uvicorn, "
            f"{by[(MINIMAL_REGROW, batch)] / ceiling:.0%} on regrow's HTTP layer); "
            f"feature bins cost {1 - regrow_rps / by[('regrow (no feature bins)', batch)]:.1%} of throughput"
            + (f"; {regrow_rps / by[('mlserver', batch)]:.1f}x MLServer" if ("mlserver", batch) in by else "")
        )
        binned, plain = by[("regrow penguins", batch)], by[("regrow penguins (no bins)", batch)]
        print(f"batch {batch}, penguins: binning two categorical and four numeric columns costs "
              f"{1e6 / binned - 1e6 / plain:.1f} us a request ({1 - binned / plain:.1%} of throughput)"
              + (f"; {binned / by[('mlserver penguins', batch)]:.1f}x MLServer" if ("mlserver penguins", batch) in by
                 else ""))  # fmt: skip


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is needed: apt-get install wrk")
    work = Path(tempfile.mkdtemp(prefix="regrow-bench-"))
    registry, version = trained_iris(work)
    rows: list[tuple[str, int, float, float, float, int]] = []

    def measure(name: str, proc: subprocess.Popen[bytes], url: str, body: Callable[[int], str] = infer_body) -> None:
        try:
            for batch in (1, 32):
                wait_up(url, body(batch))
                wrk(url, body(batch), args.warmup, args.connections, work)  # first-request and allocator costs
                rps, p50, p99, errors = wrk(url, body(batch), args.seconds, args.connections, work)
                rows.append((name, batch, rps, p50, p99, errors))
        finally:
            proc.terminate()
            proc.wait(10)

    for name, extra in (("regrow", []), ("regrow (no feature bins)", ["--no-feature-bins"])):
        port = free_port()
        measure(name, serve(regrow_serve(work, version, port, *extra)), f"http://127.0.0.1:{port}/v2/models/iris/infer")

    _, penguins = trained_iris(work, name="penguins")
    for name, extra in (("regrow penguins", []), ("regrow penguins (no bins)", ["--no-feature-bins"])):
        port = free_port()
        proc = serve(regrow_serve(work, penguins, port, *extra, model="penguins"))
        measure(name, proc, f"http://127.0.0.1:{port}/v2/models/penguins/infer", penguin_body)

    if args.mlserver_python:
        argv, port = mlserver(args.mlserver_python, work)
        measure("mlserver", serve(argv), f"http://127.0.0.1:{port}/v2/models/iris/infer")
        argv, port = mlserver(args.mlserver_python, work, "penguins", MLSERVER_PENGUINS)
        measure("mlserver penguins", serve(argv), f"http://127.0.0.1:{port}/v2/models/penguins/infer",
                lambda batch: penguin_body(batch, pandas=True))  # fmt: skip

    model_bytes = registry.read("iris", version, MODEL)
    (work / "model.onnx").write_bytes(model_bytes)
    for name, module, text in (
        ("bare-uvicorn", "bare", BARE_APP),
        (MINIMAL, "minimal", MINIMAL_APP),
    ):
        (work / f"{module}.py").write_text(text)
        port = free_port()
        uvicorn = [sys.executable, "-m", "uvicorn", f"{module}:app", "--port", str(port), "--http", "httptools",
                   "--loop", "uvloop", "--no-access-log", "--log-level", "warning"]  # fmt: skip
        proc = serve(uvicorn, env={"MODEL": str(work / "model.onnx")}, cwd=work)
        measure(name, proc, f"http://127.0.0.1:{port}/v2/models/iris/infer")
    for name, module, text in (("bare regrow HTTP", "bare_regrow", BARE_REGROW_APP),
                               (MINIMAL_REGROW, "minimal_regrow", MINIMAL_REGROW_APP)):  # fmt: skip
        (work / f"{module}.py").write_text(text)
        port = free_port()
        proc = serve([sys.executable, str(work / f"{module}.py"), str(port)], env={"MODEL": str(work / "model.onnx")})
        measure(name, proc, f"http://127.0.0.1:{port}/v2/models/iris/infer")

    model = OnnxModel(model_bytes)
    floor = {batch: in_process(model, batch, 3.0) for batch in (1, 32)}

    report(args, rows, floor)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
