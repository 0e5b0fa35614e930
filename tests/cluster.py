"""A real Kubernetes API for the tests.

In order of preference:
- ``KUBECONFIG``: any cluster (kind, or the single-node cluster from ``../shared/k8s``). The end-to-end
  tests need one whose kubelet runs pods; the integration tests use it when there is nothing else.
- ``KUBEBUILDER_ASSETS``: a directory with etcd and kube-apiserver (and kube-controller-manager),
  started envtest-style on free loopback ports with a throwaway data dir. No pods run there, so the
  integration tests prefer it: they play the kubelet's part themselves.
- Neither: the tests that need a cluster are skipped, or fail when ``REGROW_REQUIRE_CLUSTER=1``.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

from kubernetes import config
from kubernetes.client import ApiClient

TOKEN = "regrow-test-admin-token"


@dataclass
class Process:
    """A control-plane process that a test may stop and start again, with the same arguments, port and data."""

    argv: Sequence[str]
    log: Path
    env: dict[str, str] | None = None  # None: this process's
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=self.env
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_path: str
    origin: str
    runs_pods: bool
    started_in: float = 0.0
    _stack: ExitStack = field(default_factory=ExitStack, repr=False)
    apiserver: Process | None = None  # envtest's, which a test may restart
    readyz: str = ""

    def restart_apiserver(self, down_seconds: float) -> None:
        """Stop the API server, keep it down ``down_seconds``, start it again on its port, wait until ready."""
        assert self.apiserver is not None, "only an envtest control plane's API server can be restarted"
        self.apiserver.stop()
        time.sleep(down_seconds)
        self.apiserver.start()
        _wait_ready(self.readyz, self.apiserver.log)

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run kubectl against this cluster; raise with its stderr when ``check`` and it fails."""
        proc = subprocess.run(
            [self.kubectl_path, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc

    def stop(self) -> None:
        self._stack.close()

    def describe(self) -> str:
        return self.origin + (f", started in {self.started_in:.1f}s" if self.started_in else "")

    def api_client(self) -> ApiClient:
        api: ApiClient = config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]
        return api


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _kubectl() -> str | None:
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets and (Path(assets) / "kubectl").is_file():
        return str(Path(assets) / "kubectl")
    return shutil.which("kubectl")


def from_kubeconfig() -> Cluster | str:
    """The cluster ``KUBECONFIG`` names, or the reason there is none."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig:
        return "KUBECONFIG is not set"
    kubectl = _kubectl()
    if kubectl is None:
        return "KUBECONFIG is set but kubectl is not on PATH"
    return Cluster(
        Path(kubeconfig), kubectl, origin=f"KUBECONFIG={kubeconfig}", runs_pods=_has_nodes(kubectl, kubeconfig)
    )


def control_plane() -> Cluster | str:
    """An API server for the integration tests: a private envtest control plane when
    ``KUBEBUILDER_ASSETS`` is set (those tests play the kubelet's part, so none must run), else ``KUBECONFIG``."""
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if not assets:
        found = from_kubeconfig()
        if isinstance(found, str):
            return "no cluster: set KUBECONFIG, or KUBEBUILDER_ASSETS=$(../shared/k8s/cluster assets)"
        return found
    missing = [b for b in ("etcd", "kube-apiserver", "kubectl") if not (Path(assets) / b).is_file()]
    if missing:
        return f"KUBEBUILDER_ASSETS={assets} lacks {', '.join(missing)}"
    return start_control_plane(Path(assets))


def _has_nodes(kubectl: str, kubeconfig: str) -> bool:
    proc = subprocess.run(
        [kubectl, f"--kubeconfig={kubeconfig}", "get", "nodes", "-o", "name"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc.returncode == 0 and bool(proc.stdout.strip())


def start_control_plane(assets: Path, apiserver_args: Sequence[str] = (), controllers: bool = True) -> Cluster:
    """Start etcd, kube-apiserver (with ``apiserver_args`` besides its own) and, if present and wanted,
    kube-controller-manager on free loopback ports."""
    t0 = time.monotonic()
    stack = ExitStack()
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="regrow-envtest-")))
    logs = tmp / "logs"
    logs.mkdir()
    key, pub = tmp / "sa.key", tmp / "sa.pub"
    subprocess.run(["openssl", "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    subprocess.run(["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)], check=True, capture_output=True)
    (tmp / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")

    etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{etcd_port}"
    peer_url = f"http://127.0.0.1:{peer_port}"
    _spawn(stack, logs, "etcd", [
        str(assets / "etcd"), f"--data-dir={tmp / 'etcd'}", "--name=envtest",
        f"--listen-client-urls={etcd_url}", f"--advertise-client-urls={etcd_url}",
        f"--listen-peer-urls={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
        f"--initial-cluster=envtest={peer_url}", "--unsafe-no-fsync",
    ])  # fmt: skip
    apiserver = _spawn(stack, logs, "kube-apiserver", [
        str(assets / "kube-apiserver"), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
        f"--secure-port={api_port}", f"--cert-dir={tmp / 'certs'}",
        f"--service-account-key-file={pub}", f"--service-account-signing-key-file={key}",
        "--service-account-issuer=https://kubernetes.default.svc", "--service-cluster-ip-range=10.0.0.0/24",
        "--authorization-mode=RBAC", f"--token-auth-file={tmp / 'tokens.csv'}", "--insecure-port=0",
        *apiserver_args,
    ])  # fmt: skip
    server = f"https://127.0.0.1:{api_port}"
    kubeconfig = tmp / "kubeconfig"
    _wait_ready(f"{server}/readyz", logs / "kube-apiserver.log")
    kubeconfig.write_text(_kubeconfig(server, tmp / "certs" / "apiserver.crt"))
    if controllers and (assets / "kube-controller-manager").is_file():
        _spawn(stack, logs, "kube-controller-manager", [
            str(assets / "kube-controller-manager"), f"--kubeconfig={kubeconfig}", "--leader-elect=false",
            "--controllers=*", f"--service-account-private-key-file={key}", "--port=0", "--secure-port=0",
            "--service-cluster-ip-range=10.0.0.0/24",
        ])  # fmt: skip
    return Cluster(
        kubeconfig,
        str(assets / "kubectl"),
        origin=f"envtest control plane at {server} (KUBEBUILDER_ASSETS={assets})",
        runs_pods=False,
        started_in=time.monotonic() - t0,
        _stack=stack,
        apiserver=apiserver,
        readyz=f"{server}/readyz",
    )


def _spawn(stack: ExitStack, logs: Path, name: str, argv: Sequence[str]) -> Process:
    process = Process(argv, logs / f"{name}.log")
    process.start()
    stack.callback(process.stop)
    return process


def _kubeconfig(server: str, ca: Path) -> str:
    return f"""apiVersion: v1
kind: Config
clusters:
- name: envtest
  cluster: {{server: "{server}", certificate-authority: "{ca}"}}
users:
- name: admin
  user: {{token: "{TOKEN}"}}
contexts:
- name: envtest
  context: {{cluster: envtest, user: admin}}
current-context: envtest
"""


def _wait_ready(url: str, log: Path, timeout: float = 60.0) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the server's self-signed certificate does not exist yet
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(request, context=context, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log.exists() else ""
    raise RuntimeError(f"kube-apiserver was not ready in {timeout:.0f}s; log tail:\n{tail}")
