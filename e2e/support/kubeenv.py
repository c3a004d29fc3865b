"""A real Kubernetes control plane (etcd + kube-apiserver) as local processes, no Docker.

    from kubeenv import KubeEnv

    env = KubeEnv(tmp_path / "k8s").start()     # ~3-6 s: PKI, etcd, kube-apiserver, /readyz
    env.kubectl("apply", "-f", "crds/")         # CompletedProcess; raises KubectlError on failure
    env.kubectl("apply", "-f", "-", input=yaml_text)
    env.kubectl("get", "mqttclusters", "-o", "json").stdout
    env.kubeconfig                              # path of an admin kubeconfig (system:masters)
    env.server                                  # https://127.0.0.1:PORT
    env.env()                                   # os.environ + KUBECONFIG, PATH with env.bin first
    env.helm("template", "charts/cmq")          # helm v4 with HELM_* homes inside the workdir
    env.stop()                                  # also done at interpreter exit

By default only the apiserver runs: objects are stored and validated (CRD schemas, CEL
rules, server-side apply, RBAC, admission), but no controller, scheduler or kubelet acts on
them, so a Deployment never gets pods. Without kube-controller-manager no ServiceAccount
"default" is made, so the ServiceAccount admission plugin is off (as in envtest).
KubeEnv(..., controllers=True) adds kube-controller-manager (Deployments get Pending pods);
KubeEnv(..., nodes=N) also adds kube-scheduler, kwok and N fake Nodes, so pods are
scheduled and become Running + Ready (containers never run: images are not pulled, probes
are not executed) and Deployments report readyReplicas.

Binaries come from $CMQ_K8S_BIN, else from the last line printed by scripts/install-k8s.sh
(which builds them into ~/.cache/cmq/bin when missing). Run this file to keep a control plane
up by hand:  python3 e2e/support/kubeenv.py [WORKDIR]  (KUBEENV_CONTROLLERS=1 adds
kube-controller-manager, KUBEENV_NODES=N adds kube-scheduler, kwok and N fake nodes)
"""

from __future__ import annotations

import atexit
import base64
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]  # e2e/support -> repo root
HOST = "127.0.0.1"

# ---------------------------------------------------------------------------
# ports (same approach as dataplane/tests/support/natsserver.py)
# ---------------------------------------------------------------------------

_used_ports: set[int] = set()


def _bindable(family, addr, port) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.bind((addr, port))  # deliberately without SO_REUSEADDR
        return True
    except OSError:
        return False


def free_port() -> int:
    """A free loopback port in 20000-32000 (outside the kernel's ephemeral range), bindable
    on both the IPv4 loopback and the IPv6 wildcard, never handed out twice by this process."""
    for _ in range(500):
        port = random.randint(20000, 32000)
        if port in _used_ports:
            continue
        if _bindable(socket.AF_INET, HOST, port) and _bindable(socket.AF_INET6, "::", port):
            _used_ports.add(port)
            return port
    raise RuntimeError("no free port found")


# ---------------------------------------------------------------------------
# binaries
# ---------------------------------------------------------------------------

_BIN: Path | None = None
_SCRIPT_BIN: str | None = None
_BASE = ("etcd", "kube-apiserver", "kubectl")
_OPTIONAL = ("kube-controller-manager", "kube-scheduler", "kwok")  # built with CMQ_K8S_EXTRA
# the Stage objects kwok plays (node-initialize, node-heartbeat-with-lease, pod-ready,
# pod-complete, pod-delete), copied from the pinned kwok module by tools/kwok/regen.sh
KWOK_STAGES = REPO_ROOT / "tools" / "kwok" / "stages.yaml"
KWOK_NODE_ANNOTATION = ("kwok.x-k8s.io/node", "fake")


def k8s_bin(*extra: str) -> Path:
    """Directory holding etcd, kube-apiserver, kubectl and helm (plus ``extra`` binaries, e.g.
    "kube-controller-manager"): $CMQ_K8S_BIN, else the last line printed by
    scripts/install-k8s.sh (a cold build takes ~12 min on 2 cores, a warm call ~0.5 s)."""
    global _BIN, _SCRIPT_BIN
    need = _BASE + extra
    if _BIN and all(os.access(_BIN / n, os.X_OK) for n in need):
        return _BIN
    env = os.environ.get("CMQ_K8S_BIN")
    if env and env != _SCRIPT_BIN:  # set by the caller, not by an earlier call here
        d = Path(env)
    else:
        script = REPO_ROOT / "scripts" / "install-k8s.sh"
        run_env = dict(os.environ)
        wanted = set(run_env.get("CMQ_K8S_EXTRA", "").split()) | {n for n in extra if n in _OPTIONAL}
        run_env["CMQ_K8S_EXTRA"] = " ".join(sorted(wanted))
        try:
            out = subprocess.run([str(script)], check=True, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, timeout=3600, text=True, env=run_env)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"{script} failed (exit {e.returncode}):\n{e.stderr[-4000:]}") from None
        lines = [ln.strip() for ln in out.stdout.splitlines() if ln.strip()]
        if not lines:
            raise RuntimeError(f"{script} printed nothing on stdout\n{out.stderr[-4000:]}")
        d = Path(lines[-1])
        _SCRIPT_BIN = os.environ["CMQ_K8S_BIN"] = str(d)  # child processes agree
    for name in need:
        if not os.access(d / name, os.X_OK):
            raise RuntimeError(f"{d / name} is not an executable (CMQ_K8S_BIN={env!r})")
    _BIN = d
    return _BIN


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


class KubeEnvError(RuntimeError):
    pass


class KubectlError(subprocess.CalledProcessError):
    """A failed kubectl/helm call whose message shows the command, stdout and stderr."""

    def __str__(self) -> str:
        cmd = " ".join(str(c) for c in self.cmd)
        return (f"`{cmd}` exited with {self.returncode}\n"
                f"--- stderr ---\n{(self.stderr or '').strip()}\n"
                f"--- stdout ---\n{(self.stdout or '').strip()[-3000:]}")


# ---------------------------------------------------------------------------
# processes
# ---------------------------------------------------------------------------

_LIVE: list["KubeEnv"] = []


@atexit.register
def _stop_leftovers() -> None:
    for env in list(_LIVE):
        try:
            env.stop(timeout=5)
        except Exception:
            pass


def _die_with_parent() -> None:
    """preexec_fn: SIGKILL the child when this process dies, even by kill -9 (Linux)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except Exception:
        pass


_HELP_CACHE: dict[Path, str] = {}


def _help_text(binary: Path) -> str:
    if binary not in _HELP_CACHE:
        r = subprocess.run([str(binary), "--help"], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=30)
        _HELP_CACHE[binary] = r.stdout
    return _HELP_CACHE[binary]


# lines that every healthy start logs: left out of failure messages so the real cause shows
_NOISE = ("addrConn.createTransport failed",  # apiserver closing spare etcd clients at start
          "because it has no resources",      # "Skipping API x/v1beta1 ..."
          "The manifest file is empty")


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    kept = [ln for ln in text.splitlines() if not any(n in ln for n in _NOISE)]
    return "\n".join(kept[-lines:])


class KubeEnv:
    """etcd + kube-apiserver on free loopback ports, with a generated PKI and an admin
    kubeconfig. Everything lives in ``workdir`` (pki/, etcd/, *.log, kubeconfig)."""

    def __init__(self, workdir: os.PathLike | str, *, controllers: bool = False,
                 crds: list[os.PathLike | str] | None = None, key_type: str = "ec", apiserver_args: list[str] | None = None,
                 bin_dir: os.PathLike | str | None = None, nodes: int = 0,
                 node_allocatable: dict[str, str] | None = None,
                 kwok_stages: os.PathLike | str | None = None):
        """``controllers``: also run kube-controller-manager (built only with
        CMQ_K8S_EXTRA=kube-controller-manager): garbage collection of owned objects,
        Deployment -> ReplicaSet -> Pods (which stay Pending: no scheduler, no nodes),
        "default" ServiceAccounts, namespace deletion. Adds ~1-2 s to the start. Its garbage
        collector only sees custom resource types that existed when it started, or after its
        30 s discovery resync: pass them in ``crds``.
        ``crds``: files or directories of CustomResourceDefinitions, applied (server-side) and
        waited for (Established) before start() returns and before kube-controller-manager.
        ``key_type``: "ec" (P-256, fast) or "rsa" (2048) for every key of the PKI.
        ``apiserver_args``: extra kube-apiserver flags, appended last (so they win).
        ``nodes``: when > 0, also run kube-scheduler and kwok (CMQ_K8S_EXTRA=kube-scheduler,
        kwok) and create that many fake Nodes "kwok-node-0", ... (annotation
        kwok.x-k8s.io/node=fake, no taints, labels kubernetes.io/hostname, kubernetes.io/os,
        kubernetes.io/arch, type=kwok); implies ``controllers``. start() returns once every
        node is Ready and untainted. Pods bound to them get phase Running, Ready and
        ContainersReady conditions, running containerStatuses and a pod IP from 10.244.0.0/16
        within about a second; pods of Jobs then complete; deleted pods go away at once (no
        grace period). Adds ~1-2 s to the start.
        ``node_allocatable``: capacity = allocatable of each node (default 32 CPUs, 128Gi,
        110 pods), so the scheduler's resource fit is real.
        ``kwok_stages``: a file of kwok Stage objects instead of tools/kwok/stages.yaml."""
        self.workdir = Path(workdir).resolve()
        self.nodes = int(nodes)
        if self.nodes < 0:
            raise ValueError("nodes must be >= 0")
        self.controllers = controllers or self.nodes > 0
        self.node_allocatable = dict(node_allocatable or {"cpu": "32", "memory": "128Gi",
                                                          "pods": "110"})
        self.kwok_stages = Path(kwok_stages) if kwok_stages else KWOK_STAGES
        self.crds = [Path(c) for c in (crds or [])]
        self.key_type = key_type
        self.extra_args = list(apiserver_args or [])
        self._bin_dir = Path(bin_dir) if bin_dir else None
        self.pki = self.workdir / "pki"
        self.kubeconfig = self.workdir / "kubeconfig"
        self.etcd_log = self.workdir / "etcd.log"
        self.apiserver_log = self.workdir / "kube-apiserver.log"
        self.kcm_log = self.workdir / "kube-controller-manager.log"
        self.scheduler_log = self.workdir / "kube-scheduler.log"
        self.kwok_log = self.workdir / "kwok.log"
        self.port = 0
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.etcd: subprocess.Popen | None = None
        self.apiserver: subprocess.Popen | None = None
        self.kcm: subprocess.Popen | None = None
        self.scheduler: subprocess.Popen | None = None
        self.kwok: subprocess.Popen | None = None
        self.startup_seconds: float | None = None
        self._logs: list = []

    # -- addresses and files ---------------------------------------------------
    @property
    def bin(self) -> Path:
        if self._bin_dir is None:
            extra = ["kube-controller-manager"] if self.controllers else []
            if self.nodes:
                extra += ["kube-scheduler", "kwok"]
            self._bin_dir = k8s_bin(*extra)
        return self._bin_dir

    @property
    def server(self) -> str:
        return f"https://{HOST}:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://{HOST}:{self.etcd_port}"

    @property
    def ca_file(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def client_cert(self) -> Path:
        return self.pki / "admin.crt"

    @property
    def client_key(self) -> Path:
        return self.pki / "admin.key"

    def __repr__(self) -> str:
        return f"<KubeEnv {self.server} {'up' if self.alive() else 'down'} {self.workdir}>"

    def __enter__(self) -> "KubeEnv":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- PKI ---------------------------------------------------------------------
    def _openssl(self, *args: str) -> None:
        r = subprocess.run(["openssl", *args], cwd=self.pki, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True)
        if r.returncode != 0:
            raise KubeEnvError(f"openssl {' '.join(args)} failed:\n{r.stdout}")

    def _newkey(self) -> list[str]:
        if self.key_type == "rsa":
            return ["-newkey", "rsa:2048"]
        return ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]

    def _leaf(self, name: str, subject: str, ext: str) -> None:
        (self.pki / f"{name}.ext").write_text(
            ext + "basicConstraints=CA:FALSE\n"
            "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n")
        self._openssl("req", *self._newkey(), "-nodes", "-keyout", f"{name}.key",
                      "-out", f"{name}.csr", "-subj", subject)
        self._openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                      "-set_serial", str(random.getrandbits(63)), "-days", "3650",
                      "-out", f"{name}.crt", "-extfile", f"{name}.ext")

    def make_pki(self) -> None:
        """CA; serving cert for 127.0.0.1/localhost (and the in-cluster names); admin client
        cert (O=system:masters); service-account signing key pair. Reused when present."""
        if (self.pki / "sa.pub").exists():
            return
        shutil.rmtree(self.pki, ignore_errors=True)
        self.pki.mkdir(parents=True)
        self._openssl("req", "-x509", *self._newkey(), "-nodes", "-keyout", "ca.key",
                      "-out", "ca.crt", "-days", "3650", "-subj", "/CN=cmq-e2e-ca",
                      "-addext", "basicConstraints=critical,CA:TRUE",
                      "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self._leaf("apiserver", "/CN=kube-apiserver",
                   "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
                   "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
                   "DNS:kubernetes.default.svc.cluster.local,IP:10.0.0.1\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")
        self._leaf("admin", "/O=system:masters/CN=cmq-e2e-admin",
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=clientAuth\n")
        if self.key_type == "rsa":
            self._openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                          "-out", "sa.key")
        else:
            self._openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
                          "-out", "sa.key")
        self._openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub")

    def write_kubeconfig(self, path: os.PathLike | str | None = None) -> Path:
        """An admin kubeconfig with the certs embedded (usable by kubectl, helm, kube-rs)."""
        path = Path(path) if path else self.kubeconfig

        def b64(p: Path) -> str:
            return base64.b64encode(p.read_bytes()).decode()

        path.write_text(
            "apiVersion: v1\nkind: Config\n"
            "clusters:\n- name: cmq-e2e\n  cluster:\n"
            f"    server: {self.server}\n"
            f"    certificate-authority-data: {b64(self.ca_file)}\n"
            "users:\n- name: cmq-e2e-admin\n  user:\n"
            f"    client-certificate-data: {b64(self.client_cert)}\n"
            f"    client-key-data: {b64(self.client_key)}\n"
            "contexts:\n- name: cmq-e2e\n  context:\n"
            "    cluster: cmq-e2e\n    user: cmq-e2e-admin\n    namespace: default\n"
            "current-context: cmq-e2e\n")
        path.chmod(0o600)
        return path

    # -- lifecycle ------------------------------------------------------------
    def _spawn(self, cmd: list[str], log: Path) -> subprocess.Popen:
        f = open(log, "ab")
        f.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(cmd)}\n".encode())
        f.flush()
        self._logs.append(f)
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=self.workdir, preexec_fn=_die_with_parent)

    def etcd_command(self) -> list[str]:
        etcd = self.bin / "etcd"
        peer = f"http://{HOST}:{self.etcd_peer_port}"
        cmd = [str(etcd), "--name=e2e", f"--data-dir={self.workdir / 'etcd'}",
               f"--listen-client-urls={self.etcd_url}", f"--advertise-client-urls={self.etcd_url}",
               f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
               f"--initial-cluster=e2e={peer}", "--initial-cluster-state=new",
               "--log-level=warn"]
        if "unsafe-no-fsync" in _help_text(etcd):
            cmd.append("--unsafe-no-fsync=true")
        return cmd

    def apiserver_command(self) -> list[str]:
        p = self.pki
        return [
            str(self.bin / "kube-apiserver"),
            f"--etcd-servers={self.etcd_url}",
            f"--bind-address={HOST}", f"--advertise-address={HOST}", f"--secure-port={self.port}",
            f"--tls-cert-file={p / 'apiserver.crt'}", f"--tls-private-key-file={p / 'apiserver.key'}",
            f"--client-ca-file={p / 'ca.crt'}",
            f"--cert-dir={self.workdir / 'apiserver-certs'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={p / 'sa.pub'}",
            f"--service-account-signing-key-file={p / 'sa.key'}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--authorization-mode=RBAC",
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            # without kube-controller-manager nothing makes the "default" ServiceAccounts, and
            # this plugin would reject every pod (envtest turns it off too)
            *([] if self.controllers else ["--disable-admission-plugins=ServiceAccount"]),
            "--profiling=false",
            *self.extra_args,
        ]

    def kcm_command(self) -> list[str]:
        return [
            str(self.bin / "kube-controller-manager"),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--secure-port=0",
            f"--root-ca-file={self.ca_file}",
            f"--service-account-private-key-file={self.pki / 'sa.key'}",
            "--use-service-account-credentials=false",
            "--kube-api-qps=500", "--kube-api-burst=1000",
            "--profiling=false",
        ]

    def scheduler_command(self) -> list[str]:
        return [
            str(self.bin / "kube-scheduler"),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false", "--secure-port=0",
            "--kube-api-qps=500", "--kube-api-burst=1000",
            "--profiling=false",
        ]

    def kwok_command(self) -> list[str]:
        return [
            str(self.bin / "kwok"),
            f"--kubeconfig={self.kubeconfig}",
            f"--config={self.kwok_stages}",
            "--manage-all-nodes=false",
            "--manage-nodes-with-annotation-selector=" + "=".join(KWOK_NODE_ANNOTATION),
            # kwok renews each node's Lease (as a kubelet does), so the node lifecycle
            # controller never marks the nodes NotReady; kwokctl's default is 40 too
            "--node-lease-duration-seconds=40",
            # pod IPs: keep clear of --service-cluster-ip-range (kwok's default is 10.0.0.0/24)
            "--cidr=10.244.0.0/16",
            f"--node-ip={HOST}",
        ]

    def node_manifest(self, name: str) -> dict:
        res = dict(self.node_allocatable)
        return {
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": name,
                "annotations": {KWOK_NODE_ANNOTATION[0]: KWOK_NODE_ANNOTATION[1]},
                "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
                           "kubernetes.io/arch": "amd64", "type": "kwok"},
            },
            "status": {"allocatable": res, "capacity": dict(res)},
        }

    def add_nodes(self, count: int, start: int = 0, timeout: float = 30.0) -> list[str]:
        """Create fake Nodes kwok-node-<start> .. and wait until kwok has made them Ready and
        kube-controller-manager has lifted the not-ready taint (needs kwok running)."""
        names = [f"kwok-node-{i}" for i in range(start, start + count)]
        items = [self.node_manifest(n) for n in names]
        self.kubectl("create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                            "items": items}))
        self._wait_nodes(names, time.monotonic() + timeout)
        return names

    def _wait_nodes(self, names: list[str], deadline: float) -> None:
        pending = list(names)
        while time.monotonic() < deadline:
            for name, proc in (("kwok", self.kwok), ("kube-scheduler", self.scheduler),
                               ("kube-controller-manager", self.kcm)):
                if proc is not None and proc.poll() is not None:
                    raise KubeEnvError(f"{name} exited with {proc.returncode}\n{self.log_tails()}")
            still = []
            for name in pending:
                code, body = self.get(f"/api/v1/nodes/{name}")
                node = json.loads(body) if code == 200 else {}
                ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                            for c in node.get("status", {}).get("conditions", []))
                tainted = any(t.get("key", "").startswith("node.kubernetes.io/")
                              for t in node.get("spec", {}).get("taints", []))
                if not ready or tainted:
                    still.append(name)
            pending = still
            if not pending:
                return
            time.sleep(0.1)
        raise KubeEnvError(f"nodes not Ready (or still tainted): {pending}\n"
                           f"{self.kubectl('get', 'nodes', '-o', 'yaml', check=False).stdout[-3000:]}\n"
                           f"{self.log_tails()}")

    def start(self, timeout: float = 60.0) -> "KubeEnv":
        """Generate the PKI, start etcd and kube-apiserver, wait for /readyz and the
        "default" namespace, write the kubeconfig. Raises KubeEnvError with log tails."""
        if self.alive():
            return self
        self.bin  # resolve (may build) before the clock starts
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.make_pki()
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)  # fresh cluster every start
        self.port, self.etcd_port, self.etcd_peer_port = free_port(), free_port(), free_port()
        if self not in _LIVE:
            _LIVE.append(self)
        self.etcd = self._spawn(self.etcd_command(), self.etcd_log)
        try:
            # kube-apiserver would retry etcd by itself, but its log would fill with grpc
            # connection errors that hide real problems; etcd is healthy in a fraction of a second
            self._wait_etcd(t0 + timeout)
            self.apiserver = self._spawn(self.apiserver_command(), self.apiserver_log)
            self.write_kubeconfig()
            self._wait_ready(t0 + timeout)
            if self.crds:
                self.apply_crds(*self.crds)
            if self.controllers:
                self.kcm = self._spawn(self.kcm_command(), self.kcm_log)
                self._wait_kcm(t0 + timeout)
            if self.nodes:
                if not self.kwok_stages.is_file():
                    raise KubeEnvError(f"kwok stages file missing: {self.kwok_stages}")
                self.scheduler = self._spawn(self.scheduler_command(), self.scheduler_log)
                self.kwok = self._spawn(self.kwok_command(), self.kwok_log)
                self.add_nodes(self.nodes, timeout=max(1.0, t0 + timeout - time.monotonic()))
        except BaseException:
            self.stop(timeout=5)
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def apply_crds(self, *paths: os.PathLike | str, timeout: float = 30.0) -> None:
        """Server-side apply CRD files/directories and wait until every CRD is Established."""
        args = [a for p in paths for a in ("-f", str(p))]
        self.kubectl("apply", "--server-side", "--force-conflicts", *args)
        self.kubectl("wait", "--for=condition=Established", "--timeout", f"{timeout:.0f}s", *args,
                     timeout=timeout + 10)

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        return ctx

    def get(self, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
        """(status, body) of an authenticated GET on the apiserver; status 0 if unreachable."""
        try:
            with urllib.request.urlopen(self.server + path, timeout=timeout,
                                        context=self._ssl_context()) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read() if e.fp else b""
        except (urllib.error.URLError, OSError, ValueError):
            return 0, b""

    def _wait_etcd(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.etcd.poll() is not None:
                raise KubeEnvError(f"etcd exited with {self.etcd.returncode}\n{self.log_tails()}")
            try:
                with urllib.request.urlopen(self.etcd_url + "/health", timeout=1.0) as r:
                    if b'"true"' in r.read():
                        return
            except (urllib.error.URLError, OSError, ValueError):
                pass
            time.sleep(0.02)
        raise KubeEnvError(f"etcd not healthy at {self.etcd_url}/health\n{self.log_tails()}")

    def _wait_ready(self, deadline: float) -> None:
        last = (0, b"")
        while time.monotonic() < deadline:
            for name, proc in (("etcd", self.etcd), ("kube-apiserver", self.apiserver)):
                if proc is None or proc.poll() is not None:
                    code = None if proc is None else proc.returncode
                    raise KubeEnvError(f"{name} exited with {code}\n{self.log_tails()}")
            last = self.get("/readyz", timeout=1.0)
            if last[0] == 200 and self.get("/api/v1/namespaces/default")[0] == 200:
                return
            time.sleep(0.1)
        detail = self.get("/readyz?verbose", timeout=2.0)
        raise KubeEnvError(f"kube-apiserver not ready: /readyz={last[0]}\n"
                           f"{detail[1].decode(errors='replace')[-2000:]}\n{self.log_tails()}")

    def _wait_kcm(self, deadline: float) -> None:
        # its serviceaccount controller making default/default shows the controllers run
        while time.monotonic() < deadline:
            if self.kcm.poll() is not None:
                raise KubeEnvError(f"kube-controller-manager exited with {self.kcm.returncode}\n"
                                   f"{self.log_tails()}")
            if self.get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200:
                return
            time.sleep(0.1)
        raise KubeEnvError(f"kube-controller-manager made no default ServiceAccount\n{self.log_tails()}")

    def alive(self) -> bool:
        procs = (self.etcd, self.apiserver) + ((self.kcm,) if self.controllers else ()) + (
            (self.scheduler, self.kwok) if self.nodes else ())
        return all(p is not None and p.poll() is None for p in procs)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM kwok, kube-scheduler, kube-controller-manager, kube-apiserver, then etcd;
        SIGKILL whatever outlives ``timeout``."""
        for proc in (self.kwok, self.scheduler, self.kcm, self.apiserver, self.etcd):
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for f in self._logs:
            f.close()
        self._logs.clear()
        if self in _LIVE:
            _LIVE.remove(self)

    # -- logs -------------------------------------------------------------------
    def log_tails(self, lines: int = 40) -> str:
        """The last lines of each log (kube-apiserver, etcd, kube-controller-manager,
        kube-scheduler, kwok), with the noise every start logs left out, for failure
        messages."""
        logs = [self.apiserver_log, self.etcd_log] + ([self.kcm_log] if self.controllers else []) + (
            [self.scheduler_log, self.kwok_log] if self.nodes else [])
        return "\n".join(f"--- {p} (last {lines} lines) ---\n{_tail(p, lines)}" for p in logs)

    # -- clients ----------------------------------------------------------------
    def env(self, **extra: str) -> dict[str, str]:
        """os.environ plus KUBECONFIG, PATH with ``bin`` first, and kubectl/helm caches and
        config homes inside the workdir (nothing is written to ~/.kube or ~/.config/helm)."""
        e = dict(os.environ)
        e.update(
            KUBECONFIG=str(self.kubeconfig),
            PATH=f"{self.bin}{os.pathsep}{e.get('PATH', '')}",
            KUBECACHEDIR=str(self.workdir / "kube-cache"),
            HELM_CACHE_HOME=str(self.workdir / "helm" / "cache"),
            HELM_CONFIG_HOME=str(self.workdir / "helm" / "config"),
            HELM_DATA_HOME=str(self.workdir / "helm" / "data"),
        )
        e.update(extra)
        return e

    def _run(self, tool: str, args, input, check: bool, timeout: float) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *[str(a) for a in args]]
        r = subprocess.run(cmd, input=input, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=self.env(), timeout=timeout)
        if check and r.returncode != 0:
            raise KubectlError(r.returncode, cmd, r.stdout, r.stderr)
        return r

    def kubectl(self, *args, input: str | None = None, check: bool = True,
                timeout: float = 60.0) -> subprocess.CompletedProcess:
        """Run kubectl against this apiserver; text stdout/stderr captured. With ``check``,
        a non-zero exit raises KubectlError (a CalledProcessError showing stderr)."""
        return self._run("kubectl", ["--kubeconfig", self.kubeconfig, *args], input, check, timeout)

    def helm(self, *args, input: str | None = None, check: bool = True,
             timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run helm (v4) against this apiserver, like ``kubectl``."""
        return self._run("helm", ["--kubeconfig", self.kubeconfig, *args], input, check, timeout)


def main(argv: list[str]) -> int:
    import tempfile
    workdir = Path(argv[1]) if len(argv) > 1 else Path(tempfile.mkdtemp(prefix="kubeenv-"))
    env = KubeEnv(workdir, controllers=os.environ.get("KUBEENV_CONTROLLERS") == "1",
                  nodes=int(os.environ.get("KUBEENV_NODES", "0"))).start()
    print(f"kube-apiserver {env.server} ready in {env.startup_seconds:.1f} s\n"
          f"export KUBECONFIG={env.kubeconfig} PATH={env.bin}:$PATH\n"
          f"logs: {env.apiserver_log} {env.etcd_log}\nCtrl-C stops it.", flush=True)
    try:
        while env.alive():
            time.sleep(1)
        print(f"a process died\n{env.log_tails()}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        env.stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
