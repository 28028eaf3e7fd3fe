"""Only vgpud reads or writes its embedded etcd: a local non-root user who finds the ports gets nothing.

The daemon runs as root; a probe runs as uid 65534 (nobody) with only the standard library, given the data dir
and both ports (which any local user can find in /proc/net/tcp). Its state dir is opened up (0755) so that
what keeps the probe out is the etcd data dir's own mode and etcd's client-certificate TLS, not the parent.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

from tests.support import SharedEtcd
from vgpu._private import pki
from vgpu.testing import LocalPool, local_pool
from vgpud._private.store.embedded_etcd import find_etcd_binary
from vgpud._private.store.embedded_pki import client_files

NOBODY = 65534
INTRUDER_KEY = "/vgpu/default/intruder"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root: the daemon runs as root and the probe as uid 65534 (nobody)"
)

# Standard library only: it runs on whichever python3 uid 65534 may execute. argv: data dir, client port,
# peer port, a certificate + key from another CA. Prints {attempt: ["ok", what] | ["refused", why]}.
PROBE = textwrap.dedent(
    """
    import base64, http.client, json, os, ssl, sys
    data_dir, client_port, peer_port, stranger_cert, stranger_key, intruder = sys.argv[1:7]
    result = {}

    def attempt(name, action):
        try:
            result[name] = ["ok", str(action())[:200]]
        except Exception as exc:
            result[name] = ["refused", type(exc).__name__ + ": " + str(exc)[:200]]

    def read(path):
        with open(path, "rb") as handle:
            return handle.read(64)

    for name in ("ports.json", "etcd.log", "pki/vgpud-key.pem", "pki/ca-key.pem", "pki/etcd-server-key.pem"):
        attempt("read " + name, lambda name=name: read(os.path.join(data_dir, name)))
    attempt("list pki", lambda: os.listdir(os.path.join(data_dir, "pki")))

    def b64(text):
        return base64.b64encode(text.encode()).decode()

    def call(context, port, method, path, body=None):
        if context is None:
            conn = http.client.HTTPConnection("127.0.0.1", int(port), timeout=5)
        else:
            conn = http.client.HTTPSConnection("127.0.0.1", int(port), timeout=5, context=context)
        try:
            conn.request(method, path, body=json.dumps(body) if body is not None else None)
            response = conn.getresponse()
            text = response.read().decode(errors="replace")
        finally:
            conn.close()
        if response.status != 200:
            raise RuntimeError("HTTP " + str(response.status) + ": " + text)
        return text

    anonymous = ssl.create_default_context()
    anonymous.check_hostname = False
    anonymous.verify_mode = ssl.CERT_NONE
    stranger = ssl.create_default_context()
    stranger.check_hostname = False
    stranger.verify_mode = ssl.CERT_NONE
    stranger.load_cert_chain(stranger_cert, stranger_key)
    for label, context in (("plain", None), ("tls without certificate", anonymous), ("tls stranger", stranger)):
        put = {"key": b64(intruder), "value": b64("x")}
        attempt(label + " put", lambda c=context, b=put: call(c, client_port, "POST", "/v3/kv/put", b))
        every = {"key": b64("/"), "range_end": b64("\\x00")}
        attempt(label + " range", lambda c=context, b=every: call(c, client_port, "POST", "/v3/kv/range", b))
        attempt(label + " peer", lambda c=context: call(c, peer_port, "GET", "/members"))
    print(json.dumps(result))
    """
)


@cache
def nobody_python() -> str | None:
    """A Python interpreter uid 65534 may run (the venv's may live under a 0700 home), or None."""
    for candidate in ("/usr/bin/python3", shutil.which("python3"), sys.executable):
        if candidate is None:
            continue
        try:
            run_as_nobody([candidate, "-I", "-c", "pass"], timeout=30).check_returncode()
        except (OSError, subprocess.SubprocessError):
            continue
        return candidate
    return None


def run_as_nobody(argv: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def open_dir(prefix: str) -> Path:
    """A fresh directory under /tmp that everyone may enter and list."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


@pytest.fixture
def daemon() -> Iterator[LocalPool]:
    """A vgpud (as root) on its embedded etcd, its state dir open to all: only the etcd dir is private."""
    state = open_dir("vgpu-access-")
    try:
        with local_pool("h100-80gb:1", state_dir=state) as pool:
            yield pool
    finally:
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def stranger() -> Iterator[tuple[Path, Path]]:
    """A client certificate and key from another CA (even named like vgpud's), readable by uid 65534."""
    directory = open_dir("vgpu-stranger-")
    try:
        pki.create_ca(directory, cluster="vgpud-embedded-etcd")
        cert, key = pki.issue(directory, "vgpud", role="node")
        key.chmod(0o644)
        yield cert, key
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def etcd_of(pool: LocalPool) -> tuple[Path, SharedEtcd, int]:
    """The daemon's etcd data dir, its client endpoint with vgpud's files, and its peer port."""
    data_dir = pool.state_dir / "etcd"
    ports = json.loads((data_dir / "ports.json").read_text())
    return data_dir, SharedEtcd(f"127.0.0.1:{ports['client']}", client_files(data_dir / "pki")), int(ports["peer"])


def test_a_local_user_can_neither_read_nor_write_the_embedded_etcd(
    daemon: LocalPool, stranger: tuple[Path, Path]
) -> None:
    python = nobody_python()
    if python is None:
        pytest.skip("no Python interpreter here that uid 65534 may run")
    data_dir, etcd, peer_port = etcd_of(daemon)
    client_port = etcd.endpoint.rsplit(":", 1)[1]
    cert, key = stranger
    probe = run_as_nobody(
        [python, "-I", "-c", PROBE, str(data_dir), client_port, str(peer_port), str(cert), str(key), INTRUDER_KEY]
    )
    assert probe.returncode == 0, probe.stderr
    result: dict[str, list[str]] = json.loads(probe.stdout)
    allowed = {name: why for name, (outcome, why) in result.items() if outcome != "refused"}
    assert not allowed, f"uid {NOBODY} got through: {allowed}"
    for name, (_, why) in result.items():
        if name.startswith(("read ", "list ")):
            assert why.startswith("PermissionError"), (name, why)  # the file is there, and closed to it
        else:
            assert "ConnectionRefused" not in why, (name, why)  # etcd listens there, and turned it away
    assert asyncio.run(etcd.read(INTRUDER_KEY)) is None
    with daemon.pool() as pool:  # while vgpud itself reads and writes as ever
        lease = pool.acquire(memory="1GiB", compute=0.1)
        lease.release()


def test_etcdctl_of_a_local_user_is_refused(daemon: LocalPool) -> None:
    etcdctl = find_etcd_binary().with_name("etcdctl")
    if not etcdctl.is_file():
        pytest.skip(f"no etcdctl beside {find_etcd_binary()}")
    _, etcd, _ = etcd_of(daemon)
    for scheme in ("https", "http"):
        for command in (["put", INTRUDER_KEY, "x"], ["get", "--prefix", "/"]):
            argv = [str(etcdctl), f"--endpoints={scheme}://{etcd.endpoint}", "--dial-timeout=2s"]
            argv += ["--command-timeout=3s", "--insecure-skip-tls-verify", *command]
            try:
                result = run_as_nobody(argv)
            except PermissionError:
                pytest.skip(f"uid {NOBODY} may not run {etcdctl}")
            assert result.returncode != 0, f"{scheme} {command}: {result.stdout}"
            assert "/vgpu/" not in result.stdout
    assert asyncio.run(etcd.read(INTRUDER_KEY)) is None
