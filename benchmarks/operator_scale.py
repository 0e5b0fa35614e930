"""What the operator costs, by the number of ModelDeployments it looks after. Prints a table; asserts nothing.

    KUBEBUILDER_ASSETS=... python benchmarks/operator_scale.py [--sizes 200,1000,2000] [--rest-seconds 75]
        [--resync-seconds 60] [--operator-source ../before]   # a worktree of another commit, for its table

For each size, on a control plane of its own (etcd and kube-apiserver, no controller manager and no kubelet,
so no pod ever exists), started with an audit log: `regrow operator` runs as its own process, and N
ModelDeployments (and a DriftPolicy for every tenth) are created at once over `--namespaces` namespaces.
The table gives the seconds from the first create until every ModelDeployment has its four children
(Deployment, Service, HorizontalPodAutoscaler, PodDisruptionBudget) and a status for its generation, and
every DriftPolicy a status, with the operator's requests meanwhile and the cores busy: the API server's, the
operator's and the whole machine's (everything here shares it: etcd, the API server, the operator and this
script; a machine near all its cores is the bound, not the operator's workers); then, at rest (nothing
changes), over `--rest-seconds`: the operator's API requests per second as the API server's audit log
attributes them (kopf's watches included), the share of a core it uses, and its resident memory. The rest
window should cover at least one resync period (`--resync-seconds`, passed to the operator as
REGROW_RESYNC_SECONDS).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.cluster import Cluster, free_port, start_control_plane

from regrow import GROUP, VERSION
from regrow.controller.kube import Kube

AGENT = "regrow-benchmark"
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
"""
CHILDREN = (
    ("/apis/apps/v1", "deployments"),
    ("/api/v1", "services"),
    ("/apis/autoscaling/v2beta2", "horizontalpodautoscalers"),
    ("/apis/policy/v1beta1", "poddisruptionbudgets"),
)
MANAGED = "app.kubernetes.io/managed-by=regrow"


def model_deployment(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"registry": "file:///var/lib/regrow/registry", "name": name, "alias": "champion"},
            "storage": {"volumeClaimName": "regrow-store"},
            "replicas": {"min": 1, "max": 4},
        },
    }


def drift_policy(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "DriftPolicy",
        "metadata": {"name": name},
        "spec": {"targetRef": {"name": name}, "interval": "1m", "source": {"type": "Pods"}},
    }


def operator(cluster: Cluster, work: Path, args: argparse.Namespace) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig), "REGROW_RESYNC_SECONDS": str(args.resync_seconds)}
    if args.operator_source:  # another checkout's operator, for a table before a change
        env["PYTHONPATH"] = str(Path(args.operator_source) / "operator")
    argv = [sys.executable, "-c", "import sys; from regrow.cli import main; sys.exit(main())", "operator",
            f"--metrics-port={port}", "--log-level=WARNING"]  # fmt: skip
    with (work / "operator.log").open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
                if b"regrow_operator_leader 1.0" in answer.read():
                    return proc, port
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the operator did not lead within 60 s; see {work / 'operator.log'}")


class Observed:
    """Which objects of a kind have a status for their generation, kept up to date by a watch (listing
    thousands of objects every few seconds would take the API server's CPU from the operator's work)."""

    def __init__(self, kube: Kube, plural: str) -> None:
        self.kube, self.where = kube, f"/apis/{GROUP}/{VERSION}/{plural}"
        self.done: set[tuple[str, str]] = set()
        listed = kube.collection(self.where)
        self.version = listed["metadata"]["resourceVersion"]
        for item in listed["items"]:
            self._see(item)
        threading.Thread(target=self._follow, daemon=True).start()

    def _see(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        if (obj.get("status") or {}).get("observedGeneration") == meta["generation"]:
            self.done.add((meta["namespace"], meta["name"]))

    def _follow(self) -> None:
        with contextlib.suppress(OSError):  # the control plane stopped: this size is done
            while True:
                for event in self.kube.watch(self.where, "", self.version):
                    self.version = event["object"]["metadata"]["resourceVersion"]
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._see(event["object"])


def converged(kube: Kube, observed: list[tuple[Observed, int]], size: int) -> bool:
    """Whether every object has a status for its generation and every ModelDeployment its four children (listed
    once the statuses are there: the operator writes a status after the children)."""
    if any(len(kind.done) < want for kind, want in observed):
        return False
    return all(len(kube.list(f"{base}/{plural}", MANAGED)) >= size for base, plural in CHILDREN)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> list[int]:
    """The machine's CPU time so far by state (user, nice, system, idle, iowait, irq, softirq, steal)."""
    return [int(n) for n in Path("/proc/stat").read_text().split()[1:9]]


class Meter:
    """Cores busy since it was made: each of some processes', then the whole machine's."""

    def __init__(self, *pids: int) -> None:
        self.pids, self.started = pids, time.monotonic()
        self.cpu, self.ticks = [cpu_seconds(pid) for pid in pids], machine_ticks()

    def cores(self) -> list[float]:
        elapsed = time.monotonic() - self.started
        ticks = [b - a for a, b in zip(self.ticks, machine_ticks(), strict=True)]
        busy = (os.cpu_count() or 1) * (sum(ticks) - ticks[3] - ticks[4]) / sum(ticks)  # all but idle and iowait
        return [(cpu_seconds(pid) - cpu) / elapsed for pid, cpu in zip(self.pids, self.cpu, strict=True)] + [busy]


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def operator_requests(audit: Path, start: int) -> collections.Counter[str]:
    """The operator's requests in the audit log past byte ``start``, by verb and resource (one per request,
    a watch counted once)."""
    seen: collections.Counter[str] = collections.Counter()
    with audit.open("rb") as log:
        log.seek(start)
        for line in log:
            event = json.loads(line)
            agent = event.get("userAgent", "")
            if event["stage"] != "ResponseComplete" and event["verb"] != "watch":
                continue
            if event["stage"] == "ResponseComplete" and event["verb"] == "watch":
                continue  # counted when it started
            if event["user"]["username"] != "admin" or agent.startswith((AGENT, "kubectl")):
                continue
            seen[f"{event['verb']} {(event.get('objectRef') or {}).get('resource', event['requestURI'])}"] += 1
    return seen


def run(size: int, args: argparse.Namespace, assets: Path) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"regrow-bench-operator-{size}-"))
    (work / "policy.yaml").write_text(AUDIT_POLICY)
    audit = work / "audit.log"
    bare = work / "assets"  # etcd and kube-apiserver only: nothing makes ReplicaSets or pods
    bare.mkdir()
    for binary in ("etcd", "kube-apiserver", "kubectl"):
        (bare / binary).symlink_to(assets / binary)
    audit_args = [f"--audit-policy-file={work / 'policy.yaml'}", f"--audit-log-path={audit}", "--audit-log-maxsize=0",
                  "--service-cluster-ip-range=10.0.0.0/16"]  # fmt: skip  # room for 2,000 Services and more
    cluster = start_control_plane(bare, audit_args, controllers=False)
    proc = None
    try:
        cluster.kubectl("apply", "-f", str(Path(__file__).resolve().parent.parent / "crds"))
        api = cluster.api_client()
        api.user_agent = AGENT
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        namespaces = [f"bench-{i}" for i in range(args.namespaces)]
        for ns in namespaces:
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        time.sleep(3)  # the CRDs served
        proc, _ = operator(cluster, work, args)
        kube = Kube(api)
        observed = [(Observed(kube, "modeldeployments"), size), (Observed(kube, "driftpolicies"), size // 10)]
        assert cluster.apiserver is not None and cluster.apiserver.proc is not None
        begun, started = audit.stat().st_size, time.monotonic()
        converging = Meter(cluster.apiserver.proc.pid, proc.pid)

        def create(i: int) -> None:
            ns, name = namespaces[i % len(namespaces)], f"m{i:05d}"
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, "modeldeployments", model_deployment(name))
            if i % 10 == 0:
                custom.create_namespaced_custom_object(GROUP, VERSION, ns, "driftpolicies", drift_policy(name))

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(create, range(size)))
        applied = time.monotonic() - started
        while not converged(kube, observed, size):
            if time.monotonic() - started > args.timeout:
                break
            time.sleep(0.5)
        took, cores = time.monotonic() - started, converging.cores()
        sent = sum(operator_requests(audit, begun).values())
        time.sleep(5)
        at, resting = audit.stat().st_size, Meter(proc.pid)
        time.sleep(args.rest_seconds)
        requests = operator_requests(audit, at)
        return {
            "size": size,
            "applied": applied,
            "converged": took if took <= args.timeout else None,
            "converging": sent,
            "cores": ", ".join(f"{n:.2f}" for n in cores) + f" of {os.cpu_count()}",
            "requests": sum(requests.values()) / args.rest_seconds,
            "top": requests.most_common(3),
            "cpu": resting.cores()[0],
            "rss": rss_mib(proc.pid),
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="200,1000,2000")
    parser.add_argument("--namespaces", type=int, default=10)
    parser.add_argument("--rest-seconds", type=float, default=75.0)
    parser.add_argument("--resync-seconds", type=float, default=60.0)
    parser.add_argument("--timeout", type=float, default=300.0, help="give up waiting for convergence after this")
    parser.add_argument("--operator-source", help="run the operator of this checkout (a worktree of another commit)")
    args = parser.parse_args()
    assets = Path(os.environ["KUBEBUILDER_ASSETS"])
    print(f"At rest: {args.rest_seconds:.0f} s after convergence; resync period {args.resync_seconds:.0f} s\n")
    print("| ModelDeployments | created in | all children and statuses | the operator's requests meanwhile "
          "| cores busy meanwhile: API server, operator, machine | API requests/s at rest | CPU at rest | RSS "
          "| most frequent requests at rest |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes.split(","):
        r = run(int(size), args, assets)
        took = f"{r['converged']:.1f} s" if r["converged"] is not None else f"not within {args.timeout:.0f} s"
        top = ", ".join(f"{what} {n / args.rest_seconds:.1f}/s" for what, n in r["top"])
        print(f"| {r['size']:,} | {r['applied']:.1f} s | {took} | {r['converging']:,} | {r['cores']} "
              f"| {r['requests']:.1f} | {100 * r['cpu']:.1f}% | {r['rss']:.0f} MiB | {top} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
