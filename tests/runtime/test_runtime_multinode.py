"""A real two-node Ray cluster on this machine: ``ray start --head`` and ``ray start --address``, a
CLI build attached with ``--ray-address``, work on both nodes, and the in-process build's bytes.

Each node declares one CPU (and its own resource label), so two bank actors or two shard tasks can
only run at once by using both nodes. The nodes get their own ``--temp-dir`` and free ports, so they
never meet another test's Ray session, and their own process sessions: they are stopped by killing
those (``ray stop`` would stop every Ray process on the machine, other people's included).

Which node did what: every process a node starts, its workers included, stays in that node's
process session, and a Ray worker titles itself ``ray::<task or actor>`` while it works, so the test
watches each session's titles during the build. (Ray's state API would say it too, but it needs the
dashboard of ``ray[default]``, which the pinned minimal ``ray`` does not ship; the build itself
records no node.)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from tests_helpers import reader_files

RAY = str(Path(sys.executable).with_name("ray"))
# units of 1 of the demo's 9 photos: 9 bank units; 2 samples per shard: 5 shards. GrabCut at 16
# iterations (the demo: 4) makes a unit take about a second, so the second node's bank actor, which
# takes a few seconds to start, still finds units to do (at 4 the first actor finishes them all)
# three planning partitions of three photos: the index, planning and shard tasks all run on the cluster
OVERRIDES = ["runtime.unit_size=1", "segment.iterations=16", "pairs.samples_per_image=1",
             "shards.samples_per_shard=2", "runtime.progress=false", "pairs.plan_partition_images=3"]  # fmt: skip


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _session_procs(sid: int) -> dict[int, str]:
    """Live processes of process session ``sid`` (a node's daemons and workers): pid -> title."""
    procs = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) != sid or fields[0] == "Z":  # fields[3]: the session id; Z: a zombie
                continue
            procs[int(d.name)] = (d / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
    return procs


def _stop(sid: int) -> None:
    """Stop every process of one node (SIGTERM, then SIGKILL after 10 s)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in _session_procs(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while _session_procs(sid) and time.monotonic() < end:
            time.sleep(0.2)
        if not _session_procs(sid):
            return


class Cluster:
    def __init__(self, temp_dir: str, env: dict[str, str]):
        self.temp_dir, self.env = temp_dir, env
        self.sessions: list[int] = []
        self.address = ""

    def start(self, label: str, head: bool) -> None:
        p = _free_ports(7)
        cmd = [RAY, "start", "--num-cpus", "1", "--num-gpus", "0", "--resources", json.dumps({label: 1}),
               "--temp-dir", self.temp_dir, "--disable-usage-stats",
               # fixed defaults (52365 and friends) would clash between two nodes on one machine
               "--node-manager-port", str(p[0]), "--object-manager-port", str(p[1]),
               "--dashboard-agent-listen-port", str(p[2]), "--dashboard-agent-grpc-port", str(p[3]),
               "--runtime-env-agent-port", str(p[4]), "--metrics-export-port", str(p[5])]  # fmt: skip
        if head:
            self.address = f"127.0.0.1:{p[6]}"
            cmd += ["--head", "--port", str(p[6]), "--include-dashboard", "false"]
        else:
            cmd += ["--address", self.address]
        # its own session: every daemon and worker it starts stays in it, so _stop finds them all
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)  # fmt: skip
        self.sessions.append(proc.pid)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out[-3000:]

    def alive(self) -> bool:
        """Whether both nodes have joined (``ray status`` lists each node's resource label)."""
        p = subprocess.run([RAY, "status", "--address", self.address], env=self.env, capture_output=True,
                           text=True, timeout=60)  # fmt: skip
        return p.returncode == 0 and "node_a" in p.stdout and "node_b" in p.stdout

    def watch(self, proc: subprocess.Popen, limit_s: float = 600) -> list[set[str]]:
        """Until ``proc`` ends: per node, the titles its Ray workers took (``ray::render_shard``...)."""
        seen: list[set[str]] = [set() for _ in self.sessions]
        end = time.monotonic() + limit_s
        while proc.poll() is None and time.monotonic() < end:
            for i, sid in enumerate(self.sessions):
                seen[i].update(t for t in _session_procs(sid).values() if t.startswith("ray::"))
            time.sleep(0.02)
        return seen

    def stop(self) -> None:
        for sid in reversed(self.sessions):
            _stop(sid)


@pytest.fixture(scope="module")
def cluster():
    # short and private: Ray's socket paths under it must stay under the 107-byte limit
    temp_dir = tempfile.mkdtemp(prefix="scone-ray-", dir="/tmp")
    # token auth (Ray's default for a new cluster once a token exists): every node and the driver
    # must carry the same token, as on a real cluster
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
    c = Cluster(temp_dir, env)
    try:
        c.start("node_a", head=True)
        c.start("node_b", head=False)
        end = time.monotonic() + 60
        while not c.alive():
            assert time.monotonic() < end, "the second node never joined"
            time.sleep(1)
        yield c
    finally:
        c.stop()
        shutil.rmtree(temp_dir, ignore_errors=True)


def _build_cli(repo_root: Path, out: Path, env: dict[str, str], *extra: str, cluster: Cluster | None = None):
    """Run ``scone-data build`` on the demo; returns (seconds, what ``cluster.watch`` saw).

    The driver runs in ``out``'s parent and names the output relatively, as the demo's own
    ``output: out/demo`` does: the nodes run in another directory (the test's), so this checks the
    path reaches them absolute."""
    cmd = [sys.executable, "-m", "scone_data.cli", "build", str(repo_root / "pipelines/demo.yaml"),
           f"output={out.name}", *OVERRIDES, *extra]  # fmt: skip
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, text=True, cwd=out.parent
        )
        try:
            seen = cluster.watch(proc) if cluster else []
            proc.wait(timeout=600 if cluster is None else 5)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        assert proc.returncode == 0, err.read()[-4000:]
    return time.perf_counter() - t0, seen


def _manifest(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_bytes())
    m["config"].pop("output")  # the only field that names the run
    return m


def test_two_node_build_uses_both_nodes_and_matches_the_in_process_build(cluster, tmp_path, repo_root):
    t_ray, seen = _build_cli(repo_root, tmp_path / "ray", cluster.env, "--ray-address", cluster.address,
                             cluster=cluster)  # fmt: skip
    t_local, _ = _build_cli(repo_root, tmp_path / "local", cluster.env, "runtime.executor=local")
    images = json.loads((tmp_path / "ray/manifest.json").read_bytes())["images"]
    print(f"\n{images} images: two-node Ray {t_ray:.1f} s ({images / t_ray:.2f} images/s), "
          f"in-process {t_local:.1f} s ({images / t_local:.2f} images/s)")  # fmt: skip

    print("\n".join(f"{n}: {sorted(t)}" for n, t in zip(("node_a", "node_b"), seen)))
    # both nodes ran bank actors (the Ray Data pool of _RaySegment) and shard tasks
    for node, titles in zip(("node_a", "node_b"), seen):
        assert any("_RaySegment" in t and t.endswith(".submit") for t in titles), (node, seen)
        assert "ray::render_shard" in titles, (node, seen)

    a, b = reader_files(tmp_path / "ray"), reader_files(tmp_path / "local")
    assert a.keys() == b.keys()
    assert sum(k.startswith("bank/images/") for k in a) == 9 and sum(k.endswith(".tar") for k in a) == 5
    diff = [k for k in a if a[k] != b[k]]
    assert not diff, diff
    assert _manifest(tmp_path / "ray") == _manifest(tmp_path / "local")
    card = "dataset_card.md"
    assert (tmp_path / "ray" / card).read_bytes() == (tmp_path / "local" / card).read_bytes()
