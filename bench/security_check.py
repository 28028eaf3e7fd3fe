"""The security check: every attack from issue 16 tried as an unprivileged local user (and over TCP with bad
certificates) against a real vgpud, and what authentication costs, measured in the same run.

    python bench/security_check.py [--rounds 2] [--clients 16] [--seconds 5] [--samples 200] [--json]   (as root)

Attacks: a child process drops to uid 65534 after its imports (tests/as_user.py) and tries each one; an attack
counts as refused only when the call failed with the expected status and nothing changed (checked as root).
Cost: acquire+release throughput and single-client acquire p50 (beside the floor: one gRPC round trip plus one
etcd transaction) of a daemon started with --insecure-no-auth (the baseline) and of a default daemon,
interleaved `--rounds` times on the same machine; the target is < 10 % fewer cycles/s with authentication.
Last line: one JSON object of it all.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from acquire import measure

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.as_user import run_as
from tests.support import free_ports, write_expired_certificate
from vgpu.testing import LocalPool, local_pool

NOBODY = 65534

ATTACKS: tuple[tuple[str, str], ...] = (
    ("evict another user's lease", "vgpuctl('--endpoint', ep, 'evict', victim)"),
    ("preempt another user's lease", "vgpuctl('--endpoint', ep, 'preempt', victim, '--grace', '1s')"),
    ("raise a project's quota", "vgpuctl('--endpoint', ep, 'quota', 'set', 'vision', '--deserved', '8gpu')"),
    ("delete a project's quota", "vgpuctl('--endpoint', ep, 'quota', 'delete', 'vision')"),
    ("drain the node", "vgpuctl('--endpoint', ep, 'drain', node)"),
    ("switch a GPU's mode", "vgpuctl('--endpoint', ep, 'gpu', 'mode', gpu, 'exclusive')"),
    ("read the audit trail", "vgpuctl('--endpoint', ep, 'audit')"),
    (
        "acquire in a project one is not a member of",
        "sdk(lambda p: p.acquire(memory='1GiB', project='vision', wait=False))",
    ),
    (
        "acquire with a class reserved for other projects",
        "sdk(lambda p: p.acquire(memory='1GiB', priority='inference', wait=False))",
    ),
    ("release another user's lease with its token", "raw('Release', victim, token)"),
    ("heartbeat another user's lease with its token", "raw('Heartbeat', victim, token)"),
    ("call without a credential", "raw('GetLease', victim, token, credential=None)"),
    ("call with a credential rewritten to uid 0", "raw('GetLease', victim, token, credential='root')"),
    ("call with an expired credential", "raw('GetLease', victim, token, credential=expired)"),
    ("call with another daemon's credential", "raw('GetLease', victim, token, credential=foreign)"),
    ("TCP without a client certificate", "tcp(own_dir, None)"),
    ("TCP in cleartext", "tcp(own_dir, 'plain')"),
    ("TCP with a certificate of another CA", "tcp(other_dir, 'ops')"),
    ("TCP with an expired certificate", "tcp(own_dir, 'late')"),
    ("TCP with a user certificate calling an admin method", "tcp(own_dir, 'alice')"),
    ("TCP with a node certificate calling an admin method", "tcp(own_dir, 'node-2')"),
    ("read the embedded etcd's ports.json", "read_file(state + '/etcd/ports.json')"),
    ("read the credential key", "read_file(state + '/auth/credential.key')"),
    ("write to the embedded etcd", "etcd_put()"),
)

PRELUDE = """
import grpc, json, pathlib, socket, ssl
import vgpu
from vgpu.api.v1 import admin_pb2, admin_pb2_grpc, workload_pb2, workload_pb2_grpc
from vgpu._private.channels import authenticated_channel
from vgpu._private.local_credential import METADATA_KEY, fetch
def refused_cli(result):
    code, out, err = result
    return code == 1 and ("ROLE_NOT_ALLOWED" in err or "PERMISSION" in err)
def sdk(call):
    try:
        with vgpu.Pool(ep) as p:
            call(p)
    except vgpu.PermissionDeniedError as e:
        return True
    return False
def raw(method, lease, token, credential="own"):
    if credential == "own":
        channel = authenticated_channel(ep)
        metadata = ()
    else:
        channel = grpc.insecure_channel(ep, options=[("grpc.default_authority", "localhost")])
        if credential == "root":
            own, _ = fetch(pathlib.Path(ep[len("unix://"):] + ".cred"), 5)
            parts = own.split(".")
            credential = ".".join([parts[0], parts[1], "0", "0", *parts[4:]])
        metadata = () if credential is None else ((METADATA_KEY, credential),)
    with channel:
        stub = workload_pb2_grpc.WorkloadServiceStub(channel)
        request = getattr(workload_pb2, method + "Request")(lease_id=lease, token=token)
        try:
            getattr(stub, method)(request, timeout=10, metadata=metadata)
        except grpc.RpcError as e:
            return e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    return False
def tcp(pki_dir, name):
    if name == "plain":
        channel = grpc.insecure_channel(tcp_ep)
    elif name is None:
        channel = grpc.secure_channel(tcp_ep, grpc.ssl_channel_credentials(ca))
    else:
        key = pathlib.Path(pki_dir, f"{name}-key.pem").read_bytes()
        cert = pathlib.Path(pki_dir, f"{name}.pem").read_bytes()
        channel = grpc.secure_channel(tcp_ep, grpc.ssl_channel_credentials(ca, key, cert))
    with channel:
        try:
            admin_pb2_grpc.AdminServiceStub(channel).DrainNode(admin_pb2.DrainNodeRequest(node=node), timeout=10)
        except grpc.RpcError as e:
            return e.code() in REFUSALS
    return False
REFUSALS = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
def read_file(path):
    try:
        open(path, "rb").read()
    except PermissionError:
        return True
    return False
def etcd_put():
    port = None
    try:
        port = json.load(open(state + "/etcd/ports.json"))["client"]
    except OSError:
        port = etcd_port  # the attacker scans the ports instead: give it the right one
    for attempt in ("http", "https"):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw_socket:
                if attempt == "https":
                    context = ssl.create_default_context()
                    context.check_hostname = False
                    context.verify_mode = ssl.CERT_NONE
                    raw_socket = context.wrap_socket(raw_socket)
                body = json.dumps({"key": "L3ZncHUveA==", "value": "eA=="}).encode()
                head = f"POST /v3/kv/put HTTP/1.1\\r\\nHost: x\\r\\nContent-Length: {len(body)}\\r\\n\\r\\n"
                raw_socket.sendall(head.encode() + body)
                answer = raw_socket.recv(4096)
                if answer.startswith(b"HTTP/1.1 200"):
                    return False
        except (OSError, ssl.SSLError):
            continue
    return True
"""


def attack_code(name: str, call: str) -> str:
    check = f"refused_cli({call})" if call.startswith("vgpuctl(") else call
    return (
        f"try:\n    emit([{name!r}, bool({check})])\nexcept Exception as exc:\n    emit([{name!r}, False, repr(exc)])\n"
    )


def pki(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "vgpuctl", "pki", *args], check=True, capture_output=True, timeout=60)


def run_attacks() -> dict[str, Any]:
    """Every attack as uid 65534; then, as root, that nothing changed."""
    work = Path(tempfile.mkdtemp(prefix="vgpu-sec-", dir="/tmp"))
    work.chmod(0o755)
    own, other = work / "pki", work / "other"
    for directory in (own, other):
        pki("init", str(directory))
        pki("issue", str(directory), "node-1", "--role", "node", "--host", "127.0.0.1")
        pki("issue", str(directory), "node-2", "--role", "node")
        pki("issue", str(directory), "alice", "--role", "user")
        pki("issue", str(directory), "ops", "--role", "admin")
    write_expired_certificate(own, "late", role="admin")
    for path in work.rglob("*"):
        if path.suffix == ".pem":
            path.chmod(0o644)  # the attacker may hold these certificates and keys (it is the point)
    own.chmod(0o755)
    other.chmod(0o755)
    (port,) = free_ports(1)
    state = work / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    config = state / "vgpud.toml"
    config.write_text(
        '[priority_classes.inference]\nvalue = 200\nprojects = ["vision"]\n[priority_classes.train]\nvalue = 100\n'
    )
    args = ["--config", str(config), "--listen", f"127.0.0.1:{port}", "--tls-cert", str(own / "node-1.pem")]
    args += ["--tls-key", str(own / "node-1-key.pem"), "--tls-client-ca", str(own / "ca.pem")]
    (own / "node-1-key.pem").chmod(0o600)
    with local_pool("h100-80gb:1", state_dir=state, extra_args=args) as pool, pool.pool() as root:
        pool.set_quota("vision", deserved=1, members=["user:root"])
        victim = root.acquire(memory="10GiB", compute=0.25, wait=False)
        from vgpud._private.auth.credentials import CredentialKey

        key = CredentialKey.load_or_create(state / "auth" / "credential.key")
        expired = key.mint(0, (0,), 1, time.time() - 1)
        foreign = CredentialKey(os.urandom(32)).mint(0, (0,), 1, time.time() + 60)
        etcd_port = json.loads((state / "etcd" / "ports.json").read_text())["client"]
        bindings = {
            "ep": pool.endpoint,
            "tcp_ep": f"127.0.0.1:{port}",
            "victim": victim.id,
            "token": victim.token,
            "node": pool.node_name,
            "gpu": victim.slices[0].gpu_uuid,
            "expired": expired,
            "foreign": foreign,
            "state": str(state),
            "own_dir": str(own),
            "other_dir": str(other),
            "etcd_port": etcd_port,
        }
        code = "".join(f"{k} = {v!r}\n" for k, v in bindings.items())
        code += f"ca = open({str(own / 'ca.pem')!r}, 'rb').read()\n" + PRELUDE
        code += "".join(attack_code(name, call) for name, call in ATTACKS)
        results = run_as(NOBODY, (NOBODY,), code, timeout=300)
        unchanged = _unchanged(pool, root, victim.id, victim.token)
    refused = [name for name, ok, *_ in results if ok]
    failed = [r for r in results if not r[1]]
    return {
        "attacks_tried": len(ATTACKS),
        "attacks_refused": len(refused) if unchanged else 0,
        "not_refused": failed,
        "state_unchanged": unchanged,
    }


def _unchanged(pool: LocalPool, root: Any, lease_id: str, token: str) -> bool:
    """As root: the victim's lease is still granted, the quota and the node as they were."""

    def ctl(*args: str) -> Any:
        argv = [sys.executable, "-m", "vgpuctl", "--endpoint", pool.endpoint, *args, "--json"]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=True)
        return json.loads(done.stdout)

    quota = ctl("quota", "get", "vision")["quota"]
    (node,) = ctl("nodes")
    return (
        root.get_lease(lease_id, token).state == "granted"
        and int(quota["deserved_milli"]) == 1000
        and node["state"] == "NODE_STATE_READY"
    )


def run_cost(rounds: int, clients: int, seconds: float, samples: int) -> dict[str, Any]:
    """Throughput and p50 without and with authentication, interleaved (machines are noisy: compare ratios)."""
    runs: dict[str, list[dict[str, float]]] = {"no_auth": [], "auth": []}
    for _ in range(rounds):
        for mode, extra in (("no_auth", ["--insecure-no-auth"]), ("auth", [])):
            with local_pool("h100-80gb:8", extra_args=extra) as pool:
                runs[mode].append(asyncio.run(measure(pool, clients, seconds, samples)))

    def median(mode: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[mode])

    out: dict[str, Any] = {"rounds": rounds, "clients": clients, "seconds": seconds}
    for mode in runs:
        for key in ("cycles_per_s", "p50_ms", "floor_ms", "p50_over_floor", "daemon_cpu_ms_per_cycle"):
            out[f"{mode}_{key}"] = round(median(mode, key), 3)
    out["auth_cost_percent"] = round(100 * (1 - out["auth_cycles_per_s"] / out["no_auth_cycles_per_s"]), 1)
    out["auth_cost_target_met"] = out["auth_cost_percent"] < 10
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--json", action="store_true", help="print only the final JSON object")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench/security_check.py: run it as root (the attacker drops to uid 65534)")
    say: Callable[[str], None] = (lambda _line: None) if args.json else print
    attacks = run_attacks()
    say(f"attacks tried: {attacks['attacks_tried']}, refused: {attacks['attacks_refused']} (must be all)")
    for name, _ok, *detail in attacks["not_refused"]:
        say(f"  NOT REFUSED: {name} {detail}")
    cost = run_cost(args.rounds, args.clients, args.seconds, args.samples)
    say(
        f"acquire+release, {args.clients} clients: {cost['no_auth_cycles_per_s']:.0f} cycles/s without "
        f"authentication, {cost['auth_cycles_per_s']:.0f} with: authentication costs "
        f"{cost['auth_cost_percent']:.1f} % (target < 10 %)"
    )
    say(
        f"acquire p50, 1 client: {cost['no_auth_p50_ms']:.3f} ms without "
        f"({cost['no_auth_p50_over_floor']:.2f}x the floor), {cost['auth_p50_ms']:.3f} ms with "
        f"({cost['auth_p50_over_floor']:.2f}x the floor of {cost['auth_floor_ms']:.3f} ms)"
    )
    result = {**attacks, **cost}
    print(json.dumps(result))
    return 0 if attacks["attacks_refused"] == attacks["attacks_tried"] else 1


if __name__ == "__main__":
    sys.exit(main())
