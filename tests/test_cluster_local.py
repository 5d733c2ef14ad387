"""Cluster checks that need no cluster: the private local Ray listens on loopback only, an unreachable --address and
a resource request no node can hold fail with one line and nothing written."""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from advsweep.registry import SpecError
from advsweep.sweep.cluster_checks import check_cluster_resources, check_reachable, gcs_host_port

sys.path.insert(0, str(Path(__file__).parent))
from tiny_spec import TINY_SPEC  # noqa: E402

BIN = Path(sys.executable).parent


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # released on close: nothing listens there


def test_resource_check_compares_with_the_largest_node():
    nodes = [{"CPU": 2.0, "memory": 1e9}, {"CPU": 8.0, "GPU": 1.0}]
    check_cluster_resources(SimpleNamespace(cpu=8, gpu=1), nodes)  # fits on the second node
    with pytest.raises(SpecError, match=r"resources\.gpu: .*1 GPU, but the largest of its 2 nodes .* has 0"):
        check_cluster_resources(SimpleNamespace(cpu=1, gpu=1), [{"CPU": 2.0}, {"CPU": 2.0}])
    # per node, not summed: 2 + 2 CPUs do not hold a 3-CPU trial
    with pytest.raises(SpecError, match=r"resources\.cpu: .*3 CPU, but the largest of its 2 nodes .* has 2"):
        check_cluster_resources(SimpleNamespace(cpu=3, gpu=0), [{"CPU": 2.0}, {"CPU": 2.0}])


def test_address_parsing_and_reachability():
    assert gcs_host_port("10.0.0.1:6379") == ("10.0.0.1", 6379)
    assert gcs_host_port("ray://head:10001") == ("head", 10001)
    assert gcs_host_port("auto") is None
    with pytest.raises(SpecError, match="--address: 'head' has no port"):
        gcs_host_port("head")
    port = _closed_port()
    with pytest.raises(SpecError, match=f"--address: no Ray cluster reachable at 127.0.0.1:{port}"):
        check_reachable(f"127.0.0.1:{port}")


def _cli(*args, env=None, timeout=300):
    return subprocess.run([str(BIN / "advsweep"), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.mark.slow
def test_run_with_unreachable_address_writes_nothing(tmp_path, fashion_available):
    spec = tmp_path / "tiny.yaml"
    spec.write_text(TINY_SPEC)
    out = tmp_path / "out"
    port = _closed_port()
    r = _cli("run", str(spec), "--out", str(out), "--address", f"127.0.0.1:{port}")
    assert r.returncode == 2, r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines == [f"advsweep: error: --address: no Ray cluster reachable at 127.0.0.1:{port} "
                     "(Connection refused)"], r.stderr
    assert not out.exists()


@pytest.mark.slow
def test_local_resources_larger_than_the_machine_write_nothing(tmp_path, fashion_available):
    spec = tmp_path / "big.yaml"
    spec.write_text(TINY_SPEC + "resources: {cpu: 64}\n")
    out = tmp_path / "out"
    r = _cli("run", str(spec), "--out", str(out), env={"RAY_ADDRESS": ""})
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"advsweep: error: resources.cpu: each trial and evaluation worker asks for 64 CPU, but the largest node "
        f"of this Ray cluster has {os.cpu_count()}"), r.stderr
    assert not out.exists()


PROBE = textwrap.dedent("""
    import json, os, re, subprocess, time
    from advsweep.sweep.driver import init_ray
    msg = init_ray(None, {})
    import ray
    time.sleep(3)  # agents open their ports after ray.init returns
    ps = [ln.split() for ln in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True, text=True).stdout.splitlines()]
    pids, grew = {os.getpid()}, True
    while grew:  # this process and all its descendants
        new = {int(p) for p, pp in ps if int(pp) in pids} - pids
        pids |= new
        grew = bool(new)
    ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    listen = []
    for ln in ss:
        m = re.search(r'users:\(\("([^"]+)",pid=(\d+)', ln)
        if m and int(m.group(2)) in pids:
            listen.append((ln.split()[3], m.group(1)))
    print(json.dumps({"msg": msg, "listen": listen, "node_ip": ray.nodes()[0]["NodeManagerAddress"],
                      "auth": os.environ.get("RAY_AUTH_MODE")}))
    ray.shutdown()
""")


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("ss"), reason="needs ss (iproute2)")
def test_private_ray_listens_on_loopback_only():
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info["node_ip"] == "127.0.0.1"
    assert info["auth"] == "disabled"
    assert "127.0.0.1 only" in info["msg"] and "RAY_AUTH_MODE=disabled" in info["msg"]
    names = {n for _, n in info["listen"]}
    assert {"gcs_server", "raylet"} <= names, info["listen"]  # `ss -ltnp` sees Ray's own servers
    exposed = [x for x in info["listen"] if x[0].rsplit(":", 1)[0] not in ("127.0.0.1", "[::ffff:127.0.0.1]")]
    assert not exposed, f"listening beyond loopback: {exposed}"


def test_mlflow_server_bad_input_is_one_line(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = _cli("mlflow-server", "--root", str(tmp_path / "m"), "--port", str(port), timeout=120)
    assert r.returncode == 2
    assert r.stderr.strip() == f"advsweep: error: --port: cannot listen on 127.0.0.1:{port} (Address already in use)"
    r = _cli("mlflow-server", "--root", str(tmp_path / "m"), "--backend-store-uri", "mongodb://x", timeout=120)
    assert r.returncode == 2 and r.stderr.strip().startswith("advsweep: error: --backend-store-uri: mongodb://x:")
    assert not (tmp_path / "m").exists()
