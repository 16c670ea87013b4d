"""Meshes and multi-process runs as a demanding user meets them: bad --distributed addresses,
hand-built meshes, quantized and 8-bit-cache models on meshes (8 simulated CPU devices: conftest)."""

import jax
import pytest

from jaxllm import runtime
from jaxllm.errors import ConfigError


@pytest.mark.parametrize("spec, message", [
    # a port that is not a number crashed the process inside gRPC (a segmentation fault)
    ("127.0.0.1:abc,2,0", "port 'abc' is not a number from 1 to 65535"),
    # port 0 and an empty host waited for a coordinator that nobody could reach, until JAX's timeout
    ("127.0.0.1:0,2,0", "port '0' is not a number from 1 to 65535"),
    ("127.0.0.1:99999,2,0", "port '99999' is not a number from 1 to 65535"),
    ("127.0.0.1:,2,0", "port '' is not a number from 1 to 65535"),
    (":8476,2,0", "the coordinator's host is empty"),
    # "process id 0 is not below the 0 processes: ids run 0..-1"
    ("127.0.0.1:8476,0,0", "the number of processes is 0: run at least 1"),
    ("127.0.0.1:8476,²,0", "is malformed: give --distributed HOST:PORT,NUM_PROCESSES,PROCESS_ID"),  # was int()'s ValueError
    ("127.0.0.1:8476,2,2", "process id 2 is not below the 2 processes: ids run 0..1"),
])
def test_bad_distributed_addresses_are_refused_before_joining(monkeypatch, spec, message):
    joined = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: joined.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)  # the collectives setting stays as it is
    with pytest.raises(ConfigError, match=message) as info:
        runtime.join_cluster(spec)
    assert "\n" not in str(info.value) and not joined


def test_distributed_address_forms_that_join(monkeypatch):
    joined = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: joined.append(kwargs))
    monkeypatch.setattr(jax.config, "update", lambda *args: None)
    for spec in ("10.0.0.1:8476,2,1", "[::1]:8476, 4 , 3", "node-0.cluster:65535,1,0"):
        runtime.join_cluster(spec)
    assert [(k["coordinator_address"], k["num_processes"], k["process_id"]) for k in joined] == [
        ("10.0.0.1:8476", 2, 1), ("[::1]:8476", 4, 3), ("node-0.cluster:65535", 1, 0)]


@pytest.mark.parametrize("rank", [0, 1])
def test_a_process_whose_peers_never_join_ends_in_one_line(rank):
    """Process 0 alone (its peer never started) and process 1 alone (no coordinator listens): JAX's
    own timeout aborted from C++ with a stack trace after 5 minutes; the watchdog ends it in one line."""
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code = f"from jaxllm import runtime; runtime.join_cluster('127.0.0.1:{port},2,{rank}', timeout_s=3)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith(f"error: --distributed 127.0.0.1:{port},2,{rank}: the processes did not all join within 3 s")
