"""The `vgpud` command: flags and the TOML file become a DaemonConfig, then the daemon runs.

Exit codes (docs/ARCHITECTURE.md): 0 clean stop, 2 bad flags or config, 3 cannot start.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NoReturn

from vgpud import service_files
from vgpud._private.config import ConfigError, DaemonConfig, load_config

EXIT_BAD_CONFIG = 2

# flag destination -> (config key, flag as the user typed it)
_OVERRIDES: dict[str, tuple[str, str]] = {
    "sim": ("sim_spec", "--sim"),
    "backend": ("backend", "--backend"),
    "state_dir": ("state_dir", "--state-dir"),
    "socket": ("socket_path", "--socket"),
    "listen": ("tcp_listen", "--listen"),
    "node_address": ("node.address", "--node-address"),
    "etcd": ("etcd.endpoints", "--etcd"),
    "etcd_ca": ("etcd.ca_file", "--etcd-ca"),
    "etcd_cert": ("etcd.cert_file", "--etcd-cert"),
    "etcd_key": ("etcd.key_file", "--etcd-key"),
    "cluster": ("etcd.cluster", "--cluster"),
    "node_name": ("node_name", "--node-name"),
    "metrics_port": ("metrics.port", "--metrics-port"),
    "metrics_host": ("metrics.host", "--metrics-host"),
    "lease_ttl": ("lease.default_ttl_s", "--lease-ttl"),
    "mig_keep_warm": ("mig.keep_warm_s", "--mig-keep-warm"),
    "log_format": ("log.format", "--log-format"),
    "log_level": ("log.level", "--log-level"),
    "tls_cert": ("tls.cert_file", "--tls-cert"),
    "tls_key": ("tls.key_file", "--tls-key"),
    "tls_client_ca": ("tls.client_ca_file", "--tls-client-ca"),
    "insecure_no_auth": ("auth.enabled", "--insecure-no-auth"),
}


class _FlagError(ConfigError):
    """argparse's complaint, as one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """Raise instead of printing usage and exiting, so main() prints exactly one line."""
        raise _FlagError(f"{message} (see vgpud --help)")


def _vgpu_version() -> str:
    try:
        return version("vgpu")
    except PackageNotFoundError:
        return "unknown"


def _endpoints(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def build_parser() -> argparse.ArgumentParser:
    """The flags of vgpud; every one overrides the matching key of the config file."""
    p = _Parser(prog="vgpud", description="vgpu node daemon: pools this host's GPUs into the vgpu cluster.")
    p.add_argument("--config", type=Path, metavar="FILE", help="TOML config file (vgpud --print-config shows one)")
    gpu = p.add_mutually_exclusive_group()
    gpu.add_argument("--sim", metavar="SPEC", help='simulate GPUs, e.g. "h100-80gb:2,a100-40gb:1" ("" for none)')
    gpu.add_argument("--backend", choices=["nvml", "sim"], help="GPU backend (default nvml; --sim implies sim)")
    p.add_argument("--state-dir", type=Path, metavar="DIR", help="state directory (default /var/lib/vgpu)")
    p.add_argument("--socket", type=Path, metavar="PATH", help="Unix socket (default /run/vgpu/vgpud.sock)")
    p.add_argument("--listen", metavar="HOST:PORT", help="also serve gRPC over TCP on HOST:PORT (mutual TLS)")
    p.add_argument("--node-address", metavar="HOST", help="where other hosts reach this one (jobs' MASTER_ADDR)")
    p.add_argument("--tls-cert", type=Path, metavar="FILE", help="server certificate for --listen (PEM)")
    p.add_argument("--tls-key", type=Path, metavar="FILE", help="its private key (mode 0600)")
    p.add_argument("--tls-client-ca", type=Path, metavar="FILE", help="CA that issued the client certificates")
    p.add_argument(
        "--insecure-no-auth",
        action="store_const",
        const=False,
        help="serve every local caller as admin (simulated GPUs only: a benchmark's baseline)",
    )
    p.add_argument(
        "--etcd",
        type=_endpoints,
        metavar="EP[,EP...]",
        help="external etcd endpoints (default: embedded etcd)",
    )
    p.add_argument("--etcd-ca", type=Path, metavar="FILE", help="CA bundle for etcd TLS")
    p.add_argument("--etcd-cert", type=Path, metavar="FILE", help="client certificate for etcd mTLS")
    p.add_argument("--etcd-key", type=Path, metavar="FILE", help="client key for etcd mTLS")
    p.add_argument("--cluster", metavar="NAME", help='pool name in etcd (default "default")')
    p.add_argument("--node-name", metavar="NAME", help="this host's name in the pool (default: host name)")
    p.add_argument("--metrics-port", type=int, metavar="N", help="serve Prometheus metrics on this port")
    p.add_argument(
        "--metrics-host",
        metavar="ADDRESS",
        help="address the metrics port binds to (default 127.0.0.1; 0.0.0.0 lets a remote Prometheus scrape)",
    )
    p.add_argument("--lease-ttl", type=int, metavar="SECONDS", help="default lease heartbeat TTL (default 30)")
    p.add_argument(
        "--mig-keep-warm", type=float, metavar="SECONDS", help="keep ended leases' MIG instances for reuse (default 0)"
    )
    p.add_argument("--log-format", choices=["auto", "json", "console"], help="log format (default auto)")
    p.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level (default info)",
    )
    p.add_argument("--version", action="version", version=f"vgpud {_vgpu_version()}")
    shipped = p.add_mutually_exclusive_group()
    shipped.add_argument(
        "--print-unit",
        action="store_true",
        help="print the systemd unit, its ExecStart naming this vgpud, and exit",
    )
    shipped.add_argument("--print-config", action="store_true", help="print the example config file and exit")
    return p


def parse_config(argv: Sequence[str] | None = None) -> DaemonConfig:
    """The config that `vgpud ARGV` would run with; ConfigError for bad flags or a bad file."""
    return _config_of(build_parser().parse_args(argv))


def _config_of(args: argparse.Namespace) -> DaemonConfig:
    overrides = {key: getattr(args, dest) for dest, (key, _flag) in _OVERRIDES.items()}
    names = dict(_OVERRIDES.values())
    return load_config(args.config, overrides, override_names=names)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `vgpud` console script; the process exit code."""
    try:
        args = build_parser().parse_args(argv)
        if args.print_unit or args.print_config:
            _print_shipped(args.print_unit)
            return 0
        config = _config_of(args)
    except ConfigError as exc:
        print(f"vgpud: error: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    except SystemExit as exc:  # --help and --version print and "exit" through argparse
        return exc.code if isinstance(exc.code, int) else 0
    from vgpud._private import daemon  # noqa: PLC0415 -- heavy (grpc, etcd); flag parsing must not need it

    return daemon.run(config)


def _print_shipped(unit: bool) -> None:
    """Write the unit (or the example config) to stdout as bytes, so the config comes out byte for byte."""
    data = service_files.unit_text(running_vgpud()).encode() if unit else service_files.read(service_files.CONFIG_FILE)
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


def running_vgpud() -> list[str]:
    """How systemd should start the vgpud that is running now: its console script, else `python -m vgpud`.

    Not resolved through links: a virtualenv's python is a link out of the virtualenv, and its site-packages
    would be lost.
    """
    script = Path(sys.argv[0])
    if script.name == "vgpud" and script.is_file():
        return [str(script.absolute())]
    return [sys.executable, "-m", "vgpud"]
