"""vgpud's configuration: frozen dataclasses filled from one TOML file, then from command-line flags.

The TOML keys are the field names below (top level, then the [etcd], [lease], [metrics] and [log]
tables); systemd/vgpud.toml shows every one. `load_config` rejects unknown keys, wrong types and values out
of range (each field's docstring states its range; config_values.py holds the rules for every key) with a
one-line ConfigError that names the key and where it came from.
"""

from __future__ import annotations

import dataclasses
import re
import socket
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from vgpud._private.auth.config import AuditConfig, AuthConfig, TlsServerConfig, validate_auth
from vgpud._private.backend.base import BackendError
from vgpud._private.backend.sim import parse_spec
from vgpud._private.config_accounting import AccountingConfig, validate_accounting
from vgpud._private.config_limits import LimitsConfig, validate_limits
from vgpud._private.config_mps import MpsConfig, validate_mps
from vgpud._private.config_priorities import PriorityConfigError, parse_priority_classes
from vgpud._private.config_scheduling import SchedulingConfig, validate_scheduling
from vgpud._private.config_values import MAX_PORT, convert, endpoint_problem, read_toml
from vgpud._private.config_values import ConfigError as ConfigError  # noqa: PLC0414 -- explicit re-export (mypy)
from vgpud._private.config_watchdog import WatchdogConfig, validate_watchdog
from vgpud._private.core.priorities import DEFAULT_CLASSES, PriorityClass
from vgpud._private.jobs.config import JobsConfig, NodeAddressConfig, validate_jobs, validate_node_address

BackendKind = Literal["nvml", "sim"]
LogFormat = Literal["auto", "json", "console"]
LogLevel = Literal["debug", "info", "warning", "error", "critical"]

_NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,63}")
_NAME_RULE = "1 to 63 characters from A-Z a-z 0-9 . _ -"
_MIN_ETCD_TTL_S = 2  # etcd raises shorter lease TTLs to its minimum (1.5 x election timeout) anyway
_MAX_TTL_S = 7 * 24 * 3600
_MAX_HISTORY_S = 365 * 24 * 3600  # a year; etcd's own cap on a lease TTL (MaxLeaseTTL) is 9,000,000,000 s
_MAX_KEEP_WARM_S = 7 * 24 * 3600.0
_MAX_QUEUE = 1_000_000
_MAX_GRACE_S = 300.0
_MAX_CONNECT_TIMEOUT_S = 600.0


def _host_name() -> str:
    """The default node name, looked up when a config is built (not when this module is imported)."""
    return socket.gethostname()


@dataclass(frozen=True, slots=True)
class EtcdConfig:
    """Where the pool's state lives ([etcd] table)."""

    endpoints: tuple[str, ...] = ()
    """etcd client URLs ("https://host:2379" or "host:2379"); empty starts a private embedded etcd."""
    ca_file: Path | None = None
    """CA bundle that signed the etcd servers' certificates (TLS to an external etcd)."""
    cert_file: Path | None = None
    """Client certificate for etcd mutual TLS; needs key_file."""
    key_file: Path | None = None
    """Private key of cert_file."""
    connect_timeout_s: float = 10.0
    """How long start-up waits for etcd before giving up (exit code 3); above 0, at most 600 seconds."""
    cluster: str = "default"
    """Pool name: keys live under /vgpu/<cluster>/. vgpud refuses an etcd that holds another pool's keys."""


@dataclass(frozen=True, slots=True)
class LeaseConfig:
    """Lease liveness and history ([lease] table)."""

    default_ttl_s: int = 30
    """Heartbeat deadline of a lease whose client asks for none; a lease is expired after it (min..max_ttl_s)."""
    min_ttl_s: int = 2
    """Shortest TTL a client may ask for; at least 2 seconds (etcd's shortest lease)."""
    max_ttl_s: int = 3600
    """Longest TTL a client may ask for; at most 604800 seconds (7 days)."""
    history_retention_s: int = 3600
    """How long ended leases stay readable (vgpuctl, SDK status) before etcd drops them: the TTL of an etcd
    lease, so from 2 to 31536000 seconds (365 days)."""


@dataclass(frozen=True, slots=True)
class MigConfig:
    """MIG instances ([mig] table)."""

    keep_warm_s: float = 0.0
    """How long an ended lease's instance stays created for the next request of its profile (0: destroy at once);
    at most 604800 seconds (7 days)."""
    auto_mode: bool = False
    """Let the leader switch an idle MIG-capable GPU to the mode waiting requests need (shared or MIG)."""


@dataclass(frozen=True, slots=True)
class MetricsConfig:
    """Prometheus endpoint ([metrics] table)."""

    port: int | None = None
    """TCP port for /metrics (1 to 65535); absent means no metrics endpoint."""
    host: str = "127.0.0.1"
    """Address to bind the metrics endpoint to ("0.0.0.0" to let a remote Prometheus scrape)."""


@dataclass(frozen=True, slots=True)
class LogConfig:
    """Logging ([log] table)."""

    format: LogFormat = "auto"
    """"json", "console", or "auto": JSON when stderr is not a terminal (journald), console when it is."""
    level: LogLevel = "info"
    """Lowest level vgpud logs; third-party libraries log at warning and above."""


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """Everything vgpud needs to start (top-level keys of the TOML file)."""

    node_name: str = field(default_factory=_host_name)
    """This host's name in the pool (key nodes/<name>); defaults to the host name."""
    state_dir: Path = Path("/var/lib/vgpu")
    """Daemon state, including the embedded etcd's data; must be writable."""
    socket_path: Path = Path("/run/vgpu/vgpud.sock")
    """Unix socket local workloads and vgpuctl connect to."""
    tcp_listen: str | None = None
    """"HOST:PORT" to also serve gRPC over TCP, with mutual TLS only (the [tls] table); absent: Unix only."""
    backend: BackendKind = "nvml"
    """"nvml" for real GPUs, "sim" for simulated ones (set by sim_spec)."""
    sim_spec: str | None = None
    """Simulated GPUs, e.g. "h100-80gb:2,a100-40gb:1" ("" for none); implies backend "sim"."""
    shutdown_grace_s: float = 5.0
    """How long in-flight RPCs may finish on SIGTERM before they are cancelled; 0 to 300 seconds."""
    max_queue_length: int = 10000
    """Most waiting acquire requests; more are refused with RESOURCE_EXHAUSTED. 1 to 1000000."""
    etcd: EtcdConfig = field(default_factory=EtcdConfig)
    """[etcd] table."""
    lease: LeaseConfig = field(default_factory=LeaseConfig)
    """[lease] table."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """[metrics] table."""
    mig: MigConfig = field(default_factory=MigConfig)
    """[mig] table."""
    log: LogConfig = field(default_factory=LogConfig)
    """[log] table."""
    scheduling: SchedulingConfig = field(default_factory=SchedulingConfig)
    """[scheduling] table."""
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    """[watchdog] table."""
    accounting: AccountingConfig = field(default_factory=AccountingConfig)
    """[accounting] table."""
    mps: MpsConfig = field(default_factory=MpsConfig)
    """[mps] table."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    """[auth] table."""
    tls: TlsServerConfig = field(default_factory=TlsServerConfig)
    """[tls] table."""
    audit: AuditConfig = field(default_factory=AuditConfig)
    """[audit] table."""
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    """[limits] table."""
    node: NodeAddressConfig = field(default_factory=NodeAddressConfig)
    """[node] table."""
    jobs: JobsConfig = field(default_factory=JobsConfig)
    """[jobs] table."""
    priority_classes: tuple[PriorityClass, ...] = DEFAULT_CLASSES
    """[priority_classes.NAME] tables (at most 100): value (-1e9 to 1e9), preemptible, in_quota_only,
    preempt_grace_s and min_runtime_s (0 to 604800 seconds), projects (at most 1000)."""


_SECTIONS: dict[str, type[Any]] = {
    "etcd": EtcdConfig,
    "lease": LeaseConfig,
    "metrics": MetricsConfig,
    "mig": MigConfig,
    "log": LogConfig,
    "scheduling": SchedulingConfig,
    "watchdog": WatchdogConfig,
    "accounting": AccountingConfig,
    "mps": MpsConfig,
    "auth": AuthConfig,
    "tls": TlsServerConfig,
    "audit": AuditConfig,
    "limits": LimitsConfig,
    "node": NodeAddressConfig,
    "jobs": JobsConfig,
}
_CLASSES_TABLE = "priority_classes"
_DEFAULT_LAYER, _FILE_LAYER, _FLAG_LAYER = 0, 1, 2


def _field_types(cls: type[Any]) -> dict[str, Any]:
    """Field name -> resolved type of a config dataclass; for DaemonConfig, without the nested tables."""
    hints = typing.get_type_hints(cls)
    if cls is DaemonConfig:
        return {k: v for k, v in hints.items() if k not in _SECTIONS and k != _CLASSES_TABLE}
    return hints


class _Layers:
    """Values gathered from defaults, the file and flags, remembering where each came from."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.origins: dict[str, str] = {}
        self.layers: dict[str, int] = {}
        self.classes: tuple[PriorityClass, ...] | None = None

    def put(self, key: str, value: object, origin: str, layer: int) -> None:
        section, _, name = key.rpartition(".")
        if section and section not in _SECTIONS:
            raise ConfigError(f"{origin}: unknown table [{section}]; known tables: {', '.join(_SECTIONS)}")
        if not section and name in _SECTIONS:
            raise ConfigError(f"{origin}: {name}: expected a table [{name}], got {type(value).__name__}")
        hints = _field_types(_SECTIONS[section] if section else DaemonConfig)
        if name not in hints:
            where = f"in [{section}]" if section else "at the top level"
            raise ConfigError(f"{origin}: unknown key {key!r}; known keys {where}: {', '.join(hints)}")
        self.values[key] = convert(key, value, hints[name], origin)
        self.origins[key] = origin
        self.layers[key] = layer

    def where(self, key: str) -> str:
        return self.origins.get(key, "default")

    def layer(self, key: str) -> int:
        return self.layers.get(key, _DEFAULT_LAYER)


def _read_file(path: Path, layers: _Layers) -> None:
    origin = str(path)
    data = read_toml(path)
    for key, value in data.items():
        if key == _CLASSES_TABLE:
            try:
                layers.classes = parse_priority_classes(value, origin)
            except PriorityConfigError as exc:
                raise ConfigError(str(exc)) from None
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ConfigError(f"{origin}: {key}: expected a table [{key}], got {type(value).__name__}")
            for sub, sub_value in value.items():
                layers.put(f"{key}.{sub}", sub_value, origin, _FILE_LAYER)
        else:
            layers.put(key, value, origin, _FILE_LAYER)


def load_config(
    path: Path | None,
    overrides: Mapping[str, object],
    *,
    override_names: Mapping[str, str] | None = None,
) -> DaemonConfig:
    """The config from the TOML file at `path` (if any) with `overrides` on top, validated.

    `overrides` maps dotted keys ("node_name", "lease.default_ttl_s") to values; None means "not given".
    `override_names` maps the same keys to the flag that set them, for error messages.
    """
    layers = _Layers()
    if path is not None:
        _read_file(path, layers)
    names = override_names or {}
    for key, value in overrides.items():
        if value is not None:
            layers.put(key, value, names.get(key, f"override {key}"), _FLAG_LAYER)
    _resolve_backend(layers)
    config = _build(layers)
    _validate(config, layers)
    return config


def _resolve_backend(layers: _Layers) -> None:
    """sim_spec implies backend "sim"; of two conflicting settings the later layer wins, equal layers fail."""
    backend, spec = layers.values.get("backend"), layers.values.get("sim_spec")
    if spec is not None and backend in (None, "nvml"):
        backend_layer, spec_layer = layers.layer("backend"), layers.layer("sim_spec")
        if backend_layer > spec_layer:
            layers.values["sim_spec"] = None
        elif spec_layer > backend_layer:
            layers.values["backend"] = "sim"
        else:
            raise ConfigError(
                f"{layers.where('backend')}: backend is 'nvml' but sim_spec is set "
                f"({layers.where('sim_spec')}); remove one of them"
            )
    elif backend == "sim" and spec is None:
        raise ConfigError(
            f"{layers.where('backend')}: backend 'sim' needs simulated GPUs: set sim_spec or --sim SPEC, "
            'e.g. "h100-80gb:2" ("" for none)'
        )


def _build(layers: _Layers) -> DaemonConfig:
    def section(name: str, cls: type[Any]) -> Any:
        prefix = name + "."
        return cls(**{k[len(prefix) :]: v for k, v in layers.values.items() if k.startswith(prefix)})

    top: dict[str, Any] = {k: v for k, v in layers.values.items() if "." not in k}
    if layers.classes is not None:
        top[_CLASSES_TABLE] = layers.classes
    return DaemonConfig(**top, **{name: section(name, cls) for name, cls in _SECTIONS.items()})


_Fail = Callable[[str, str], typing.NoReturn]


def _validate(cfg: DaemonConfig, layers: _Layers) -> None:
    def fail(key: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{layers.where(key)}: {key}: {message}")

    if not _NAME_RE.fullmatch(cfg.node_name):
        hint = "" if "node_name" in layers.values else " (the host name; set node_name or --node-name)"
        fail("node_name", f"{cfg.node_name!r} is not a valid node name{hint}: use {_NAME_RULE}")
    _validate_etcd(cfg.etcd, fail)
    _validate_leases(cfg.lease, fail)
    _validate_mig(cfg.mig, fail)
    _validate_serving(cfg, fail)
    validate_scheduling(cfg.scheduling, [c.name for c in cfg.priority_classes], fail)
    validate_watchdog(cfg.watchdog, fail)
    validate_accounting(cfg.accounting, fail)
    validate_mps(cfg.mps, fail)
    validate_limits(cfg.limits, fail)
    validate_node_address(cfg.node, fail)
    validate_jobs(cfg.jobs, fail)
    validate_auth(cfg.auth, cfg.tls, cfg.audit, tcp=cfg.tcp_listen is not None, sim=cfg.backend == "sim", fail=fail)
    if cfg.sim_spec is not None:
        try:
            parse_spec(cfg.sim_spec)
        except BackendError as exc:
            fail("sim_spec", str(exc))


def _validate_etcd(etcd: EtcdConfig, fail: _Fail) -> None:
    if not _NAME_RE.fullmatch(etcd.cluster):
        fail("etcd.cluster", f"{etcd.cluster!r} is not a valid cluster name: use {_NAME_RULE}")
    for endpoint in etcd.endpoints:
        problem = endpoint_problem(endpoint, schemes=("http", "https"))
        if problem:
            fail("etcd.endpoints", f"{endpoint!r}: {problem}; use http(s)://HOST:PORT or HOST:PORT")
    for key in ("ca_file", "cert_file", "key_file"):
        if not etcd.endpoints and getattr(etcd, key) is not None:
            fail(f"etcd.{key}", "TLS files need an external etcd: set etcd.endpoints (embedded etcd is local)")
    if (etcd.cert_file is None) != (etcd.key_file is None):
        fail("etcd.cert_file", "etcd.cert_file and etcd.key_file go together: set both or neither")
    if not 0 < etcd.connect_timeout_s <= _MAX_CONNECT_TIMEOUT_S:
        fail(
            "etcd.connect_timeout_s",
            f"{etcd.connect_timeout_s} must be above 0 and at most {_MAX_CONNECT_TIMEOUT_S} seconds",
        )


def _validate_leases(lease: LeaseConfig, fail: _Fail) -> None:
    if lease.min_ttl_s < _MIN_ETCD_TTL_S:
        fail("lease.min_ttl_s", f"{lease.min_ttl_s} is below {_MIN_ETCD_TTL_S} seconds (etcd's shortest lease)")
    if lease.max_ttl_s > _MAX_TTL_S:
        fail("lease.max_ttl_s", f"{lease.max_ttl_s} is above {_MAX_TTL_S} seconds (7 days)")
    if lease.min_ttl_s > lease.max_ttl_s:
        fail("lease.min_ttl_s", f"{lease.min_ttl_s} is above lease.max_ttl_s = {lease.max_ttl_s}")
    if not lease.min_ttl_s <= lease.default_ttl_s <= lease.max_ttl_s:
        bounds = f"{lease.min_ttl_s}..{lease.max_ttl_s}"
        fail(
            "lease.default_ttl_s",
            f"{lease.default_ttl_s} is outside lease.min_ttl_s..lease.max_ttl_s = {bounds}",
        )
    if not _MIN_ETCD_TTL_S <= lease.history_retention_s <= _MAX_HISTORY_S:
        fail(
            "lease.history_retention_s",
            f"{lease.history_retention_s} must be from {_MIN_ETCD_TTL_S} to {_MAX_HISTORY_S} seconds (365 days): "
            "it is the TTL of an etcd lease",
        )


def _validate_mig(mig: MigConfig, fail: _Fail) -> None:
    if not 0 <= mig.keep_warm_s <= _MAX_KEEP_WARM_S:
        fail("mig.keep_warm_s", f"{mig.keep_warm_s} must be from 0 to {_MAX_KEEP_WARM_S:.0f} seconds (7 days)")


def _validate_serving(cfg: DaemonConfig, fail: _Fail) -> None:
    if cfg.tcp_listen is not None:
        problem = endpoint_problem(cfg.tcp_listen, schemes=())
        if problem:
            fail("tcp_listen", f"{cfg.tcp_listen!r}: {problem}; use HOST:PORT, e.g. 0.0.0.0:7070 or [::]:7070")
    if cfg.metrics.port is not None and not 1 <= cfg.metrics.port <= MAX_PORT:
        fail("metrics.port", f"{cfg.metrics.port} is not a TCP port: use 1 to {MAX_PORT}")
    if not cfg.metrics.host:
        fail("metrics.host", "must not be empty; use 127.0.0.1, or 0.0.0.0 for remote scrapes")
    if not 0 <= cfg.shutdown_grace_s <= _MAX_GRACE_S:
        fail("shutdown_grace_s", f"{cfg.shutdown_grace_s} must be from 0 to {_MAX_GRACE_S} seconds")
    if not 1 <= cfg.max_queue_length <= _MAX_QUEUE:
        fail("max_queue_length", f"{cfg.max_queue_length} must be from 1 to {_MAX_QUEUE} requests")
    if not str(cfg.socket_path).strip():
        fail("socket_path", "must not be empty")


def config_keys() -> list[str]:
    """Every dotted key the TOML file accepts (for docs and tests)."""
    keys = [f.name for f in dataclasses.fields(DaemonConfig) if f.name not in _SECTIONS and f.name != _CLASSES_TABLE]
    for name, cls in _SECTIONS.items():
        keys += [f"{name}.{f.name}" for f in dataclasses.fields(cls)]
    keys += [f"{_CLASSES_TABLE}.NAME.{f.name}" for f in dataclasses.fields(PriorityClass) if f.name != "name"]
    return keys
