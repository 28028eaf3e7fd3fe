"""One node's part of `vgpu run --ray`: a Ray head (node rank 0, which then runs the driver) or a Ray worker.

Each node's vgpud starts this with the lease's environment and the rendezvous variables: the head listens
at MASTER_ADDR:MASTER_PORT, workers join it; every Ray node offers `--num-gpus` = the lease's slices there
(CUDA_VISIBLE_DEVICES names them) and custom resources `vgpu_memory_mib` and `vgpu_compute_milli` for the
slices' memory and compute. The head waits until every node has joined, runs the driver with RAY_ADDRESS set, and
stops its Ray node when the driver ends; the job's end (rank 0 exited) stops the workers' Ray nodes, and
the daemons' cgroups catch whatever Ray left behind.

    python -m vgpu._private.ray_on_lease [--ray-args ARGS] -- DRIVER ARGS...
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Final

_JOIN_TIMEOUT_S: Final = 180.0
_HEAD_ONLY: Final = ("--include-dashboard", "--dashboard-host", "--dashboard-port", "--ray-client-server-port")
"""`ray start` options only the head takes: workers get --ray-args without them."""
_STOP_GRACE_S: Final = 20.0


def _ray_binary() -> str:
    beside = Path(sys.executable).with_name("ray")
    found = str(beside) if beside.exists() else shutil.which("ray")
    if found is None:
        sys.stderr.write("vgpu: Ray is not installed here: pip install 'vgpu[ray]'\n")
        sys.exit(127)
    return found


_PER_NODE_PORTS: Final = (
    "--node-manager-port",
    "--object-manager-port",
    "--metrics-export-port",
    "--dashboard-agent-grpc-port",
    "--dashboard-agent-listen-port",
    "--runtime-env-agent-port",
)
"""Ports each Ray node binds: chosen free here unless --ray-args sets them, so that a host running another Ray
node (of another job, or a second node of this lease on one machine) does not clash on Ray's fixed defaults."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("", 0))
        port: int = probe.getsockname()[1]
        return port


def _port_args(extra: list[str]) -> list[str]:
    given = {a.split("=", 1)[0] for a in extra}
    chosen = [f"{flag}={_free_port()}" for flag in _PER_NODE_PORTS if flag not in given]
    if "--min-worker-port" not in given and "--worker-port-list" not in given:
        chosen += ["--min-worker-port=0", "--max-worker-port=0"]  # random: no range shared with another node
    return chosen


def _resources(env: dict[str, str], gpus: int) -> str:
    """Custom resources of the node's slices (Ray wants whole numbers above 1: MiB and milli-GPUs)."""
    memory = int(env.get("VGPU_MEMORY_LIMIT", "0") or 0) * gpus // 2**20
    compute = int(env.get("VGPU_COMPUTE_MILLI", "0") or 0) * gpus
    return json.dumps({"vgpu_memory_mib": memory, "vgpu_compute_milli": compute})


def _wait_for_port(addr: str, port: int, deadline: float, head: subprocess.Popen[bytes] | None) -> None:
    while True:
        try:
            with socket.create_connection((addr, port), timeout=2):
                return
        except OSError:
            if head is not None and head.poll() is not None:
                sys.stderr.write(f"vgpu: ray start failed (status {head.returncode}); see its output above\n")
                sys.exit(1)
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _wait_for_nodes(address: str, nodes: int, deadline: float) -> None:
    import ray  # noqa: PLC0415 -- only the head needs the ray package itself, and only here

    ray.init(address=address, logging_level=logging.ERROR, log_to_driver=False)
    try:
        while len([n for n in ray.nodes() if n.get("Alive")]) < nodes:  # type: ignore[no-untyped-call]  # ray has no annotations here
            if time.monotonic() > deadline:
                sys.stderr.write(f"vgpu: not every Ray node joined within {_JOIN_TIMEOUT_S:.0f}s\n")
                sys.exit(1)
            time.sleep(0.5)
    finally:
        ray.shutdown()


def _start_node(argv: list[str]) -> subprocess.Popen[bytes]:
    """`ray start --block`, its output passed on; one Ray node of this user starts on a host at a time.

    Ray names a node's sockets in the session directory by what exists when it starts, so two nodes of one
    cluster starting on one host at once (a test pool, or a lease with two nodes on one machine) would
    both take the same plasma socket; the lock makes the second wait until the first printed that it runs.
    """
    lock = Path(tempfile.gettempdir()) / f"vgpu-ray-start-{os.getuid()}.lock"
    with lock.open("a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its "started" line must come through the pipe at once
        node = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)  # noqa: S603 -- Ray's CLI
        up = threading.Event()
        threading.Thread(target=_pass_output, args=(node, up), daemon=True).start()
        up.wait(_JOIN_TIMEOUT_S)
    return node


def _pass_output(node: subprocess.Popen[bytes], up: threading.Event) -> None:
    assert node.stdout is not None
    for line in node.stdout:
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
        if b"Ray runtime started" in line:
            up.set()
    up.set()  # it ended: nobody waits for it any more


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(_STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    """Start this node's Ray part; on the head, run the driver and return its status."""
    extra: list[str] = []
    if argv[:1] == ["--ray-args"]:
        extra, argv = shlex.split(argv[1]), argv[2:]
    driver = argv[1:] if argv[:1] == ["--"] else argv
    env = dict(os.environ)
    rank, nodes = int(env["NODE_RANK"]), int(env["NNODES"])
    addr, port = env["MASTER_ADDR"], int(env["MASTER_PORT"])
    gpus = int(env.get("LOCAL_WORLD_SIZE", "0"))
    ray = _ray_binary()
    if rank != 0:
        extra = [a for a in extra if not a.startswith(_HEAD_ONLY)]
    common = [f"--num-gpus={gpus}", f"--resources={_resources(env, gpus)}", "--block", *_port_args(extra), *extra]
    own_ip = addr if rank == 0 else env.get("VGPU_NODE_ADDRESS", addr)
    if rank == 0:
        start = [ray, "start", "--head", f"--node-ip-address={own_ip}", f"--port={port}", *common]
    else:
        start = [ray, "start", f"--address={addr}:{port}", f"--node-ip-address={own_ip}", *common]
    if rank != 0:  # join only once the head listens: a worker must not hold the start lock before that
        _wait_for_port(addr, port, time.monotonic() + _JOIN_TIMEOUT_S, None)
    node = _start_node(start)

    def stop_and_exit(_signum: int, _frame: object) -> None:
        _stop(node)
        sys.exit(143)

    signal.signal(signal.SIGTERM, stop_and_exit)
    if rank != 0:
        return node.wait()
    try:
        deadline = time.monotonic() + _JOIN_TIMEOUT_S
        _wait_for_port(addr, port, deadline, node)
        _wait_for_nodes(f"{addr}:{port}", nodes, deadline)
        driver_env = {**env, "RAY_ADDRESS": f"{addr}:{port}"}
        return subprocess.call(driver, env=driver_env)  # noqa: S603 -- the user's own driver
    finally:
        _stop(node)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
