"""How often the operator asks serving pods what they serve when nothing changes. Prints a table; asserts nothing.

    KUBECONFIG=... python benchmarks/pod_probes.py [--models 6] [--rest-seconds 240] [--resync-seconds 60]

On the cluster with a real kubelet (`make cluster-up image`), `regrow operator` runs as its own process and,
for each way of naming the model (following an alias at two refresh intervals, pinned to a version), serves
``--models`` ModelDeployments of one pod each in a namespace of their own, all from one registry on a hostPath
volume. Once every one is Ready and its rollout complete, the table gives, over ``--rest-seconds``: the pod
probes the operator made (``regrow_operator_pod_probes_total``, one GET /v2/models/<name> each), the probes
per pod per minute, how many the design allows in the window (a pod that follows an alias is asked again once
its answer is a refreshInterval old, as it reads the registry that often, at the operator's next look: at most
once per refreshInterval, so at most window / refreshInterval + 1 times; a pinned pod only when it changes,
so never at rest), and the operator's API requests per second as its client counts them (kopf's watches aside).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, cast

from kubernetes import client
from operator_scale import operator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.cluster import Cluster, from_kubeconfig
from tests.e2e.conftest import host_store
from tests.e2e.test_serving import own_like_a_trainer_pod
from tests.helpers import condition, wait_for
from tests.unit.test_server import publish_iris

from regrow import GROUP, VERSION
from regrow.api import MODEL_DEPLOYMENT
from regrow.api.common import parse_duration

CRDS = Path(__file__).resolve().parent.parent / "crds"


def model_deployment(name: str, model: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"registry": "file:///var/lib/regrow/registry", "name": "iris", **model},
            "storage": {"volumeClaimName": "regrow-store"},
            "replicas": {"min": 1, "max": 1},
            "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
        },
    }


def counter(port: int, name: str) -> float:
    """The sum of a counter's series on the operator's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        lines = answer.read().decode().splitlines()
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith((f"{name}{{", f"{name} ")))


def counters(port: int) -> tuple[float, float]:
    """The operator's pod probes and API requests so far."""
    return counter(port, "regrow_operator_pod_probes_total"), counter(port, "regrow_operator_api_requests_total")


def serving(custom: client.CustomObjectsApi, namespace: str, count: int) -> bool | None:
    listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural)
    items = cast(dict[str, Any], listed)["items"]
    done = [
        obj
        for obj in items
        if (condition(obj, "Ready") or {}).get("status") == "True"
        and (condition(obj, "Progressing") or {}).get("reason") == "RolloutComplete"
    ]
    return True if len(done) == count else None


def scenario(cluster: Cluster, port: int, label: str, model: dict[str, Any], args: argparse.Namespace) -> list[str]:
    api = cluster.api_client()
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    namespace = f"bench-probes-{int(time.time())}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=namespace)))
    try:
        with host_store(api, namespace) as root:
            version = publish_iris(root)
            own_like_a_trainer_pod(root / "registry")
            pinned = {k: (version if v == "<published>" else v) for k, v in model.items()}
            for i in range(args.models):
                body = model_deployment(f"iris-{i}", pinned)
                custom.create_namespaced_custom_object(GROUP, VERSION, namespace, MODEL_DEPLOYMENT.plural, body)
            wait_for(lambda: serving(custom, namespace, args.models), 300, "every ModelDeployment to serve")
            time.sleep(10)  # the last statuses written
            before = counters(port)
            time.sleep(args.rest_seconds)
            probes, requests = (b - a for a, b in zip(before, counters(port), strict=True))
    finally:
        core.delete_namespace(namespace)
    per_pod_minute = probes / args.models / (args.rest_seconds / 60)
    refresh = parse_duration(model["refreshInterval"]) if "alias" in model else None
    allowed = args.models * (args.rest_seconds // refresh + 1) if refresh else 0
    return [label, f"{args.models}", f"{probes:.0f}", f"{per_pod_minute:.2f}", f"{allowed:.0f}",
            f"{requests / args.rest_seconds:.2f}"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=6)
    parser.add_argument("--rest-seconds", type=float, default=240.0)
    parser.add_argument("--resync-seconds", type=float, default=60.0)
    parser.add_argument("--operator-source", help="run the operator of this checkout (a worktree of another commit)")
    args = parser.parse_args()
    cluster = from_kubeconfig()
    if isinstance(cluster, str) or not cluster.runs_pods:
        sys.exit(f"this benchmark needs a cluster that runs pods (see `make cluster-up`): {cluster}")
    cluster.kubectl("apply", "-f", str(CRDS))
    proc, port = operator(cluster, Path(tempfile.mkdtemp(prefix="regrow-bench-probes-")), args)
    scenarios = [
        ("following an alias, refreshInterval 30s", {"alias": "champion", "refreshInterval": "30s"}),
        ("following an alias, refreshInterval 2m", {"alias": "champion", "refreshInterval": "2m"}),
        ("pinned to a version", {"version": "<published>"}),
    ]
    print(f"At rest: {args.rest_seconds:.0f} s after every rollout completed; "
          f"resync period {args.resync_seconds:.0f} s\n")  # fmt: skip
    print("| model named by | pods | probes at rest | probes per pod per minute | at most, by design | "
          "API requests/s at rest |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    try:
        for label, model in scenarios:
            print("| " + " | ".join(scenario(cluster, port, label, model, args)) + " |", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
