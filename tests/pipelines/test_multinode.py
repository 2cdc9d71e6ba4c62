"""Multi-node training as users run it: two `ranker train --nnodes 2 --nproc 1` launches, two "nodes" on this
machine meeting at a c10d rendezvous on 127.0.0.1, must train exactly what `ranker train --nproc 2` trains.

This is the test-sized form of docs/multinode.md: the same commands with the endpoint 127.0.0.1:PORT instead of
the first machine's address. The nodes share out_dir (one file system), as the docs require.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pipelines.build_features import build_features
from pipelines.launch import is_loopback_endpoint, torchrun_command
from tests import readme
from tests.helpers import descendants, listening, listening_sockets, tiny_train_config, write_tiny_dataset
from tests.mlflow_server import free_port

ROOT = Path(__file__).parents[2]
# The tolerances of the sharding parity tests (tests/ranker/test_sharding_parity.py): both jobs have the same two
# ranks and the same plan, so they agree far closer than this (bit for bit when measured).
RTOL, ATOL = 1e-4, 1e-6


def _train(config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", "train", "--config", str(config), *args]


def _readme_node_command(config: Path, endpoint: str) -> list[str]:
    """The README's multi-node command in its test-sized form: the tiny config, the endpoint on 127.0.0.1.

    Its ``--local-addr`` (the first machine's address) stays: with a loopback endpoint the job stays on loopback.
    """
    (command,) = readme.commands("Several machines and GPUs")
    assert command[:1] == ["train"] and command[command.index("--nnodes") + 1] == "2", command
    assert command[command.index("--nproc") + 1] == "1", command
    swap = {"--config": str(config), "--rdzv-endpoint": endpoint}
    return [swap.get(command[i - 1], arg) if i else arg for i, arg in enumerate(command)]


def _kill_unfinished(nodes: list[subprocess.Popen]) -> None:
    """Ends the process trees of nodes still running (a failed test), children first."""
    for node in nodes:
        if node.poll() is None:
            for pid in [*reversed(descendants(node.pid)), node.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            node.wait()


@pytest.mark.unit
@pytest.mark.parametrize(
    ("endpoint", "loopback"),
    [("127.0.0.1:29500", True), ("[::1]:29500", True), ("127.0.0.1", True), ("10.0.0.1:29400", False),
     ("node0.example:29400", False), ("localhost:29400", False)],
)  # fmt: skip
def test_loopback_endpoints_keep_the_nodes_on_this_machine(endpoint: str, loopback: bool) -> None:
    """A loopback endpoint: the agents join the launcher's store and the ranks use 127.0.0.1 whatever
    ``--local-addr`` says; any other endpoint: torchrun hosts the store and ``--local-addr`` is passed on."""
    cmd = torchrun_command(Path("c.yaml"), 1, [], 2, endpoint, "job", local_addr="10.0.0.2")
    assert is_loopback_endpoint(endpoint) == loopback
    assert f"--rdzv-endpoint={endpoint}" in cmd and "--rdzv-id=job" in cmd and "--nnodes=2" in cmd
    if loopback:
        assert "--rdzv-conf=is_host=false" in cmd and "--local-addr=127.0.0.1" in cmd, cmd
        assert "--local-addr=10.0.0.2" not in cmd
    else:
        assert not [arg for arg in cmd if arg.startswith("--rdzv-conf")] and "--local-addr=10.0.0.2" in cmd, cmd


@pytest.mark.e2e
def test_nnodes_without_endpoint_is_one_line_error(tmp_path: Path) -> None:
    config = tiny_train_config(tmp_path, tmp_path / "no-features", "run")
    out = subprocess.run(_train(config, "--nnodes", "2"), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines() == [
        "ranker: error: --nnodes > 1 needs --rdzv-endpoint HOST:PORT (the same on every node)"
    ]
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
@pytest.mark.dist
@pytest.mark.slow  # 2 launches + 2 nodes, ~2 min; the default suite keeps the launcher's unit tests
def test_two_nodes_train_what_two_processes_train(tmp_path: Path) -> None:
    """Also checks, while both nodes are in the job, that every socket they listen on (the rendezvous store, the
    ranks' store, gloo) is bound to a loopback address: a loopback endpoint keeps the job on this machine."""
    features = tmp_path / "features"
    build_features(write_tiny_dataset(tmp_path / "raw", n=400), features, progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("GLOO_SOCKET_IFNAME", None)  # set for the tests (conftest); the launcher must choose loopback itself
    reference = subprocess.run(
        _train(tiny_train_config(tmp_path, features, "two-procs", epochs=1, seed=3), "--nproc", "2"),
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert reference.returncode == 0, reference.stderr[-3000:]

    port, marker = free_port(), tmp_path / "go"  # rank 1 pauses after step 2 until the marker exists
    config = tiny_train_config(tmp_path, features, "two-nodes", epochs=1, seed=3)
    command = [sys.executable, "-m", "pipelines.cli", *_readme_node_command(config, f"127.0.0.1:{port}")]
    logs = [tmp_path / f"node{i}.log" for i in range(2)]
    with contextlib.ExitStack() as stack:
        nodes = [
            subprocess.Popen(
                command, cwd=ROOT, env={**env, "RANKER_FAULT": f"pause:1:2:{marker}"},
                stdout=stack.enter_context(log.open("w")), stderr=subprocess.STDOUT,
            )
            for log in logs
        ]  # fmt: skip
        stack.callback(_kill_unfinished, nodes)
        deadline = time.time() + 600
        while not any("paused after step 2" in log.read_text() for log in logs):
            assert all(node.poll() is None for node in nodes), [log.read_text()[-3000:] for log in logs]
            assert time.time() < deadline, [log.read_text()[-3000:] for log in logs]
            time.sleep(0.2)
        trees = [[node.pid, *descendants(node.pid)] for node in nodes]
        sockets = [listening(tree) for tree in trees]
        endpoint = {address for address, p in listening_sockets().values() if p == port}
        marker.touch()
        codes = [node.wait(timeout=600) for node in nodes]
    assert codes == [0, 0], [log.read_text()[-3000:] for log in logs]

    assert all(len(tree) == 3 for tree in trees), trees  # the launcher, torchrun's agent, one rank
    assert endpoint == {"127.0.0.1"}, endpoint
    everything = sockets[0] + sockets[1]
    assert all(ipaddress.ip_address(address).is_loopback for _, address, _ in everything), everything
    agents = {trees[0][1], trees[1][1]}
    assert not {pid for pid, _, _ in everything} & agents, (trees, sockets)  # torchrun's agents only connect

    one, two = (json.loads((tmp_path / name / "results.json").read_text()) for name in ("two-procs", "two-nodes"))
    assert two["world_size"] == one["world_size"] == 2
    assert two["sharding_plan"] == one["sharding_plan"]
    assert (two["steps"], two["best_step"]) == (one["steps"], one["best_step"])
    assert one["steps"] == 7  # 400 rows, 32 per step on each of 2 ranks, 1 epoch
    assert len(two["history"]) == len(one["history"]) == 2  # validations at steps 4 and 7
    for got, want in zip(two["history"], one["history"], strict=True):
        assert got == pytest.approx(want, rel=RTOL, abs=ATOL)
    assert two["test"] == pytest.approx(one["test"], rel=RTOL, abs=ATOL)
    state_one, state_two = (
        torch.load(tmp_path / name / "export" / "model.pt", map_location="cpu", weights_only=True)
        for name in ("two-procs", "two-nodes")
    )
    assert state_two.keys() == state_one.keys()
    for key, value in state_one.items():
        torch.testing.assert_close(state_two[key], value, rtol=RTOL, atol=ATOL, msg=lambda m, k=key: f"{k}: {m}")
