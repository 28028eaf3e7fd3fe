"""A throwaway pool of several vgpud nodes on this machine, for the demo's multi-node job (and bench/jobs.py).

Both daemons share one etcd and serve TCP with mutual TLS, with node certificates made by `vgpuctl pki`:
that is how the daemon a job is launched from reaches the other node to start its ranks there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from vgpu.testing import LocalPool
from vgpud._private.store.embedded_etcd import EmbeddedEtcd


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _pki(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vgpuctl", "pki", *args], check=True, capture_output=True)


@contextmanager
def two_node_pool() -> Iterator[tuple[LocalPool, LocalPool]]:
    """Two daemons with one simulated H100 each; both stop (and the etcd with them) on exit."""
    with node_pool(2) as daemons:
        yield daemons[0], daemons[1]


@contextmanager
def node_pool(count: int, sim: str = "h100-80gb:1") -> Iterator[list[LocalPool]]:
    """`count` daemons on 127.0.0.1, 127.0.0.2, ...; every one stops (and the etcd with them) on exit."""
    with tempfile.TemporaryDirectory(prefix="vgpu-demo-") as scratch, ExitStack() as stack:
        base = Path(scratch)
        _pki("init", str(base / "pki"))
        config = base / "jobs.toml"
        config.write_text(f"[jobs]\nallow_root = {'true' if os.getuid() == 0 else 'false'}\n")
        etcd = EmbeddedEtcd(base / "etcd")
        etcd.start()
        stack.callback(etcd.stop)
        daemons = []
        for i in range(count):
            name, host = f"node-{i}", f"127.0.0.{i + 1}"
            _pki("issue", str(base / "pki"), name, "--role", "node", "--host", host)
            args = [
                *("--etcd", etcd.endpoint, *etcd.client_tls.vgpud_flags()),
                *("--listen", f"{host}:{_free_port()}", "--config", str(config)),
                *("--tls-cert", str(base / "pki" / f"{name}.pem"), "--tls-key", str(base / "pki" / f"{name}-key.pem")),
                *("--tls-client-ca", str(base / "pki" / "ca.pem")),
            ]
            daemons.append(stack.enter_context(LocalPool(sim, extra_args=args)))
        yield daemons
