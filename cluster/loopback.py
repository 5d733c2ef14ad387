"""A real multi-node Ray cluster on one machine, for tests, benchmarks and trying the cluster commands locally.

Each node is a separate `ray start` (its own raylet, object store and agents) in its own session, with its own
ports (every port chosen free, nothing left at Ray's fixed defaults that other users of the machine may hold) and a
private temp dir. `stop()` ends exactly the sessions started here: never `ray stop`, which ends every Ray of the
user on the machine. `kill_node` kills one worker node's raylet and its workers at once, which is how a node is lost.
The dashboard / Jobs API listens on 127.0.0.1. Auth mode is set explicitly (RAY_AUTH_MODE) and is the same for every
node and for the clients started with `env()`.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Node:
    name: str
    sid: int  # the `ray start` session: every process of the node, workers included
    resources: dict[str, float]
    killed: bool = False


@dataclass
class LoopbackCluster:
    auth_mode: str = "disabled"
    object_store_bytes: int = 100 * 1024 * 1024
    temp_dir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: socket paths
    nodes: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def env(self) -> dict[str, str]:
        """Environment for `ray start` and for clients: this interpreter's bin first, explicit auth mode."""
        bin_dir = str(Path(sys.executable).parent)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
        env.update(RAY_AUTH_MODE=self.auth_mode, PATH=f"{bin_dir}:{env.get('PATH', '')}",
                   PYTHONWARNINGS="ignore::DeprecationWarning", RAY_USAGE_STATS_ENABLED="0")
        return env

    def _start(self, name: str, args: list[str], num_cpus: float, resources: dict[str, float]) -> Node:
        ray_bin = Path(sys.executable).parent / "ray"
        cmd = [str(ray_bin), "start", *args, "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
               "--object-store-memory", str(self.object_store_bytes), "--disable-usage-stats",
               "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
               "--metrics-export-port", str(free_port()), "--runtime-env-agent-port", str(free_port())]
        log = open(Path(self.temp_dir) / f"{name}.start.log", "w")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env(), start_new_session=True)
        node = Node(name, proc.pid, {"CPU": num_cpus, **resources})
        self.nodes.append(node)  # before waiting: stop() must find it even if the start fails
        if proc.wait(timeout=300) != 0:
            raise RuntimeError(f"ray start ({name}) failed: {(Path(self.temp_dir) / f'{name}.start.log').read_text()[-2000:]}")
        return node

    def start_head(self, num_cpus: float = 1, resources: dict[str, float] | None = None) -> Node:
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        return self._start("head", ["--head", "--node-ip-address", "127.0.0.1", "--port", str(self.gcs_port),
                                    "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dashboard_port),
                                    "--ray-client-server-port", str(free_port()), "--temp-dir", self.temp_dir],
                           num_cpus, resources or {"head_node": 1})

    def add_node(self, name: str, num_cpus: float = 1, resources: dict[str, float] | None = None) -> Node:
        node = self._start(name, ["--address", self.gcs_address, "--node-ip-address", "127.0.0.1"], num_cpus,
                           resources or {name: 1})
        self.wait_for_nodes(sum(not n.killed for n in self.nodes))
        return node

    def alive_nodes(self) -> list[dict]:
        from ray.util.state import list_nodes

        return [n for n in list_nodes(address=self.dashboard_url, detail=True) if n.state == "ALIVE"]

    def wait_for_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if len(self.alive_nodes()) >= n:
                    return
            except Exception:
                pass
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes not alive after {timeout:.0f}s")

    def node_id_of(self, name: str) -> str:
        """Ray node id of a node started here, found by its distinct custom resource."""
        node = self._live(name)
        key = next(k for k in node.resources if k != "CPU")
        return next(n.node_id for n in self.alive_nodes() if key in (n.resources_total or {}))

    def pids(self, node: Node) -> list[tuple[int, str]]:
        """(pid, command name) of every process of the node: its `ray start` session, which Ray's workers stay in
        (each in a process group of its own)."""
        out = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,comm="], capture_output=True, text=True).stdout
        return [(int(p), c) for p, s, st, c in (ln.split(None, 3) for ln in out.splitlines())
                if int(s) == node.sid and not st.startswith("Z")]  # a killed process not yet reaped is gone

    def kill_node(self, name: str) -> int:
        """Lose that node as a machine is lost: SIGKILL its raylet and every process it started at once; Ray then
        declares the node dead. Ray 2.60 puts each worker in a process group of its own (same session), so the node's
        process group alone misses them, and a trial there could finish training after its node was "lost": every
        process of the node's session is killed. Returns the raylet's pid."""
        node = self._live(name)
        procs = self.pids(node)
        pid = next(p for p, c in procs if c.strip() == "raylet")
        node.killed = True  # a node of the same name may be started again (add_node)
        deadline = time.time() + 10
        while procs:
            if time.time() > deadline:
                raise RuntimeError(f"node {name}: processes left after SIGKILL: {procs}")
            self._signal(procs, signal.SIGKILL)
            time.sleep(0.05)
            procs = self.pids(node)
        return pid

    @staticmethod
    def _signal(procs: list[tuple[int, str]], sig: int) -> None:
        """Send sig to each (pid, command) of `procs`, the raylet first (so it starts no new worker)."""
        for p, _ in sorted(procs, key=lambda pc: pc[1].strip() != "raylet"):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    def _live(self, name: str) -> Node:
        return next(n for n in reversed(self.nodes) if n.name == name and not n.killed)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM every node started here (worker nodes first), then SIGKILL what is left."""
        for node in reversed(self.nodes):
            self._signal(self.pids(node), signal.SIGTERM)
        deadline = time.time() + timeout
        while time.time() < deadline and any(self.pids(n) for n in self.nodes):
            time.sleep(0.5)
        for node in self.nodes:
            self._signal(self.pids(node), signal.SIGKILL)
        self.nodes.clear()
