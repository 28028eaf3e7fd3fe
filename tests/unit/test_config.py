"""load_config: TOML loading, flag overrides, and every ConfigError path."""

from __future__ import annotations

import dataclasses
import re
import socket
import tomllib
from pathlib import Path

import pytest

from vgpud._private.config import (
    ConfigError,
    DaemonConfig,
    EtcdConfig,
    LeaseConfig,
    LogConfig,
    MetricsConfig,
    config_keys,
    load_config,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "systemd" / "vgpud.toml"
TLS_FILES = {"tls.cert_file": "/n.pem", "tls.key_file": "/n-key.pem", "tls.client_ca_file": "/ca.pem"}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vgpud.toml"
    path.write_text(text)
    return path


def test_defaults_without_a_file() -> None:
    cfg = load_config(None, {})
    assert cfg.node_name == socket.gethostname()
    assert cfg.state_dir == Path("/var/lib/vgpu")
    assert cfg.socket_path == Path("/run/vgpu/vgpud.sock")
    assert cfg.backend == "nvml"
    assert cfg.sim_spec is None
    assert cfg.etcd == EtcdConfig()
    assert cfg.etcd.endpoints == ()
    assert cfg.etcd.cluster == "default"
    assert cfg.lease == LeaseConfig(default_ttl_s=30, min_ttl_s=2, max_ttl_s=3600, history_retention_s=3600)
    assert cfg.metrics == MetricsConfig(port=None, host="127.0.0.1")
    assert cfg.log == LogConfig(format="auto", level="info")
    assert (cfg.shutdown_grace_s, cfg.max_queue_length) == (5.0, 10000)


def test_config_is_frozen() -> None:
    cfg = load_config(None, {"node_name": "n1"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.node_name = "other"  # type: ignore[misc]  # the point of the test


def test_file_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
node_name = "gpu-1"
state_dir = "/srv/vgpu"
tcp_listen = "[::]:7070"
sim_spec = "h100-80gb:2"
shutdown_grace_s = 2
[etcd]
endpoints = ["https://etcd-1:2379", "etcd-2:2379"]
ca_file = "/etc/vgpu/ca.pem"
cert_file = "/etc/vgpu/c.pem"
key_file = "/etc/vgpu/k.pem"
cluster = "prod.eu-1"
[lease]
default_ttl_s = 60
[metrics]
port = 9400
[log]
format = "json"
level = "DEBUG"
[tls]
cert_file = "/etc/vgpu/node.pem"
key_file = "/etc/vgpu/node-key.pem"
client_ca_file = "/etc/vgpu/ca.pem"
""",
    )
    cfg = load_config(path, {})
    assert cfg.node_name == "gpu-1"
    assert cfg.state_dir == Path("/srv/vgpu")
    assert cfg.tcp_listen == "[::]:7070"
    assert (cfg.backend, cfg.sim_spec) == ("sim", "h100-80gb:2")
    assert cfg.shutdown_grace_s == 2.0
    assert isinstance(cfg.shutdown_grace_s, float)
    assert cfg.etcd.endpoints == ("https://etcd-1:2379", "etcd-2:2379")
    assert cfg.etcd.ca_file == Path("/etc/vgpu/ca.pem")
    assert cfg.etcd.cluster == "prod.eu-1"
    assert cfg.lease.default_ttl_s == 60
    assert cfg.metrics.port == 9400
    assert cfg.log == LogConfig(format="json", level="debug")


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'node_name = "from-file"\n[lease]\ndefault_ttl_s = 60\n[etcd]\ncluster = "a"\n')
    cfg = load_config(
        path,
        {"node_name": "from-flag", "lease.default_ttl_s": 10, "etcd.cluster": None, "metrics.port": 9000},
    )
    assert cfg.node_name == "from-flag"
    assert cfg.lease.default_ttl_s == 10
    assert cfg.etcd.cluster == "a"  # None means "flag not given"
    assert cfg.metrics.port == 9000


def test_sim_flag_beats_backend_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend = "nvml"\n')
    cfg = load_config(path, {"sim_spec": "a30-24gb"})
    assert (cfg.backend, cfg.sim_spec) == ("sim", "a30-24gb")


def test_backend_flag_beats_sim_spec_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'sim_spec = "a30-24gb"\n')
    cfg = load_config(path, {"backend": "nvml"})
    assert (cfg.backend, cfg.sim_spec) == ("nvml", None)


def test_empty_sim_spec_means_sim_without_gpus() -> None:
    cfg = load_config(None, {"sim_spec": ""})
    assert (cfg.backend, cfg.sim_spec) == ("sim", "")


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE, {})
    assert cfg == dataclasses.replace(load_config(None, {}), node_name=cfg.node_name)


def test_example_config_mentions_every_key() -> None:
    text = EXAMPLE.read_text()
    for key in config_keys():
        name = key.rpartition(".")[2]
        assert re.search(rf"^#? ?{name} = ", text, re.MULTILINE), f"{key} missing from {EXAMPLE.name}"
    # The commented-out examples are valid too.
    uncommented = re.sub(r"^# (\w+ = )", r"\1", text, flags=re.MULTILINE)
    uncommented = uncommented.replace("endpoints = []\n", "")  # the example list follows it
    data = tomllib.loads(uncommented)
    assert data["etcd"]["endpoints"]


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, 'nod_name = "x"\n')
    with pytest.raises(ConfigError, match=r"vgpud.toml: unknown key 'nod_name'; known keys at the top level: node"):
        load_config(path, {})


def test_unknown_key_in_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[lease]\nttl = 3\n")
    with pytest.raises(ConfigError, match=r"unknown key 'lease.ttl'; known keys in \[lease\]: default_ttl_s"):
        load_config(path, {})


def test_unknown_table(tmp_path: Path) -> None:
    path = write(tmp_path, "[tlz]\ncert = 'x'\n")
    with pytest.raises(ConfigError, match=r"unknown key 'tlz'"):
        load_config(path, {})


def test_table_given_as_value(tmp_path: Path) -> None:
    path = write(tmp_path, 'etcd = "localhost:2379"\n')
    with pytest.raises(ConfigError, match=r"etcd: expected a table \[etcd\], got str"):
        load_config(path, {})


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('[lease]\ndefault_ttl_s = "30"', r"lease.default_ttl_s: expected an integer, got str '30'"),
        ("[lease]\ndefault_ttl_s = 30.5", r"lease.default_ttl_s: expected an integer, got float 30.5"),
        ("[lease]\ndefault_ttl_s = true", r"lease.default_ttl_s: expected an integer, got bool True"),
        ('[etcd]\nendpoints = "a:1"', r"etcd.endpoints: expected a list of strings, got str"),
        ("[etcd]\nendpoints = [1]", r"etcd.endpoints: expected a list of strings, got list"),
        ("node_name = 5", r"node_name: expected a string, got int 5"),
        ('shutdown_grace_s = "5"', r"shutdown_grace_s: expected a number"),
        ('state_dir = ""', r"state_dir: expected a path \(string\)"),
        ('backend = "cuda"', r"backend: expected one of 'nvml', 'sim', got str 'cuda'"),
        ('[log]\nformat = "xml"', r"log.format: expected one of 'auto', 'json', 'console'"),
        ('[log]\nlevel = "verbose"', r"log.level: expected one of 'debug'"),
        ('[scheduling]\nplacement = "random"', r"scheduling.placement: expected one of 'best-fit', 'fgd'"),
    ],
)
def test_wrong_types_name_key_and_type(tmp_path: Path, toml: str, expected: str) -> None:
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path, {})
    assert str(info.value).startswith(str(path))


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("[mig]\nkeep_warm_s = nan", r"mig.keep_warm_s: expected a finite number, got nan"),
        ("[mig]\nkeep_warm_s = -5", r"mig.keep_warm_s: -5.0 must be from 0 to 604800 seconds"),
        ("[scheduling]\ngrow_interval_s = nan", r"scheduling.grow_interval_s: expected a finite number, got nan"),
        ("[scheduling]\nbackfill_bound_s = inf", r"scheduling.backfill_bound_s: expected a finite number, got inf"),
        ("[watchdog]\nkill_grace_s = -inf", r"watchdog.kill_grace_s: expected a finite number, got -inf"),
        ("max_queue_length = 18446744073709551617", r"max_queue_length: expected an integer that fits in 64 bits"),
        ("[lease]\nhistory_retention_s = 4611686018427387904", r"lease.history_retention_s: 4611686018427387904 must"),
        (
            "[priority_classes.x]\nvalue = 3000000000",
            r"priority_classes.x.value: expected an integer from -1000000000 to 1000000000",
        ),
        ("[priority_classes.x]\nvalue = 1\npreempt_grace_s = nan", r"priority_classes.x.preempt_grace_s: expected"),
        ("".join(f"[priority_classes.c{i}]\nvalue = {i}\n" for i in range(101)), r"101 classes is more than 100"),
    ],
    ids=lambda v: v if len(v) < 60 else v[:40],
)
def test_values_out_of_range_in_the_file(tmp_path: Path, toml: str, expected: str) -> None:
    path = write(tmp_path, toml + "\n")
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(path, {})
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read config file .*nope.toml: No such file"):
        load_config(tmp_path / "nope.toml", {})


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "node_name = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, {})


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"lease.min_ttl_s": 5, "lease.default_ttl_s": 2},
            r"lease.default_ttl_s: 2 is outside lease.min_ttl_s..lease.max_ttl_s = 5..3600",
        ),
        ({"lease.default_ttl_s": 4000}, r"4000 is outside"),
        ({"lease.min_ttl_s": 1, "lease.default_ttl_s": 1}, r"lease.min_ttl_s: 1 is below 2 seconds"),
        ({"lease.max_ttl_s": 10**7}, r"lease.max_ttl_s: 10000000 is above 604800 seconds"),
        (
            {"lease.min_ttl_s": 100, "lease.max_ttl_s": 50},
            r"lease.min_ttl_s: 100 is above lease.max_ttl_s = 50",
        ),
        ({"lease.history_retention_s": -1}, r"history_retention_s: -1 must be from 2 to 31536000 seconds"),
        ({"lease.history_retention_s": 0}, r"history_retention_s: 0 must be from 2 to 31536000 seconds"),
        # etcd's largest lease TTL is 9e9 s: beyond it every Release failed on the history lease
        ({"lease.history_retention_s": 2**62}, r"history_retention_s: 4611686018427387904 must be from 2 to 31536000"),
        ({"lease.history_retention_s": 9_000_000_001}, r"it is the TTL of an etcd lease"),
        ({"lease.default_ttl_s": 2**63}, r"lease.default_ttl_s: expected an integer that fits in 64 bits"),
    ],
)
def test_bad_ttls(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(None, {"node_name": "n", **overrides})


@pytest.mark.parametrize("name", ["", "has space", "a/b", "ü", "x" * 64, "semi;colon"])
def test_bad_node_names(name: str) -> None:
    with pytest.raises(ConfigError, match=r"node_name: .* is not a valid node name: use 1 to 63 characters"):
        load_config(None, {"node_name": name})


def test_bad_host_name_says_to_set_node_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "gethostname", lambda: "bad host")
    with pytest.raises(ConfigError, match=r"'bad host' is not a valid node name \(the host name; set node_name"):
        load_config(None, {})


def test_good_names() -> None:
    cfg = load_config(None, {"node_name": "A-z_0.9" + "x" * 56, "etcd.cluster": "prod-1"})
    assert len(cfg.node_name) == 63


def test_bad_cluster_name() -> None:
    with pytest.raises(ConfigError, match=r"etcd.cluster: 'a b' is not a valid cluster name"):
        load_config(None, {"node_name": "n", "etcd.cluster": "a b"})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("metrics.port", 0, r"metrics.port: 0 is not a TCP port: use 1 to 65535"),
        ("metrics.port", 70000, r"metrics.port: 70000 is not a TCP port"),
        ("metrics.host", "", r"metrics.host: must not be empty"),
        ("tcp_listen", "7070", r"tcp_listen: '7070': missing HOST or PORT"),
        ("tcp_listen", "host:99999", r"port '99999' is not 1 to 65535"),
        ("tcp_listen", "::1:7070", r"IPv6 addresses need brackets"),
        ("tcp_listen", "http://h:1", r"no scheme expected"),
        ("etcd.endpoints", ("localhost",), r"etcd.endpoints: 'localhost': missing HOST or PORT"),
        ("etcd.endpoints", ("unix://x:1",), r"scheme 'unix' is not supported"),
        ("etcd.endpoints", ("https://h:port",), r"port 'port' is not 1 to 65535"),
        ("etcd.connect_timeout_s", 0.0, r"etcd.connect_timeout_s: 0.0 must be above 0"),
        ("etcd.ca_file", "/ca.pem", r"etcd.ca_file: TLS files need an external etcd"),
        ("shutdown_grace_s", -1.0, r"shutdown_grace_s: -1.0 must be from 0 to 300"),
        ("max_queue_length", 0, r"max_queue_length: 0 must be from 1 to 1000000 requests"),
        ("max_queue_length", 1_000_001, r"max_queue_length: 1000001 must be from 1 to 1000000 requests"),
        ("max_queue_length", 2**64 + 1, r"max_queue_length: expected an integer that fits in 64 bits, got 1844"),
        ("max_queue_length", 10**400, r"max_queue_length: expected an integer .* got an integer of 1329 bits$"),
        ("mig.keep_warm_s", -5.0, r"mig.keep_warm_s: -5.0 must be from 0 to 604800 seconds \(7 days\)"),
        ("mig.keep_warm_s", 1e9, r"mig.keep_warm_s: 1000000000.0 must be from 0 to 604800"),
        ("mig.keep_warm_s", float("nan"), r"mig.keep_warm_s: expected a finite number, got nan"),
        ("scheduling.grow_interval_s", float("nan"), r"scheduling.grow_interval_s: expected a finite number, got nan"),
        ("scheduling.grow_interval_s", 1e6, r"scheduling.grow_interval_s: 1000000.0 must be from 0 to 86400 seconds"),
        ("scheduling.backfill_bound_s", float("inf"), r"backfill_bound_s: expected a finite number, got inf"),
        ("scheduling.backfill_bound_s", 1e300, r"scheduling.backfill_bound_s: 1e\+300 must be from 0 to 86400 seconds"),
        ("scheduling.idle_after_s", 1e9, r"scheduling.idle_after_s: 1000000000.0 must be from 0 to 604800 seconds"),
        ("scheduling.placement_refresh_s", 3601, r"scheduling.placement_refresh_s: 3601.0 must be from 0 to 3600"),
        ("scheduling.idle_utilization", float("-inf"), r"scheduling.idle_utilization: expected a finite number"),
        ("shutdown_grace_s", float("nan"), r"shutdown_grace_s: expected a finite number, got nan"),
        ("etcd.connect_timeout_s", float("inf"), r"etcd.connect_timeout_s: expected a finite number, got inf"),
        ("watchdog.interval_s", float("nan"), r"watchdog.interval_s: expected a finite number"),
        ("accounting.flush_interval_s", float("inf"), r"accounting.flush_interval_s: expected a finite number"),
        ("mps.start_timeout_s", float("nan"), r"mps.start_timeout_s: expected a finite number"),
        ("auth.credential_ttl_s", float("inf"), r"auth.credential_ttl_s: expected a finite number"),
        ("metrics.port", 2**70, r"metrics.port: expected an integer that fits in 64 bits"),
        ("audit.retention_days", -(2**70), r"audit.retention_days: expected an integer that fits in 64 bits"),
        ("sim_spec", "h100-80gb:0", r"sim_spec: bad sim spec 'h100-80gb:0': count '0'"),
        ("sim_spec", "k80", r"sim_spec: bad sim spec 'k80': unknown GPU model 'k80'; known models"),
        ("watchdog.interval_s", 0.0, r"watchdog.interval_s: 0.0 must be from 0.1 to 600 seconds"),
        ("watchdog.over_budget_grace_s", -1.0, r"watchdog.over_budget_grace_s: -1.0 must be from 0 to 86400"),
        ("watchdog.kill_grace_s", 1e9, r"watchdog.kill_grace_s: 1000000000.0 must be from 0 to 86400"),
        ("accounting.sample_interval_s", 0.0, r"accounting.sample_interval_s: 0.0 must be from 0.1 to 600"),
        ("accounting.flush_interval_s", 1.0, r"accounting.flush_interval_s: 1.0 must be at least sample_interval_s"),
        ("accounting.retention_days", 0, r"accounting.retention_days: 0 must be from 1 to 3660 days"),
        ("mps.pipe_root", "run/mps", r"mps.pipe_root: .*absolute"),
        ("mps.start_timeout_s", 0.0, r"mps.start_timeout_s: "),
        ("scheduling.default_priority", "urgent", r"scheduling.default_priority: 'urgent' is not a priority class"),
        ("scheduling.backfill_bound_s", -1.0, r"scheduling.backfill_bound_s: -1.0 must be from 0 to 86400 seconds"),
        ("scheduling.idle_utilization", 1.5, r"scheduling.idle_utilization: 1.5 must be a share from 0 to 1"),
        ("scheduling.placement_window", 0, r"scheduling.placement_window: 0 must be from 1 to 100000 requests"),
        ("scheduling.placement_refresh_s", -1.0, r"scheduling.placement_refresh_s: -1.0 must be from 0 to 3600 s"),
    ],
)
def test_bad_values(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(None, {"node_name": "n", key: value}, override_names={key: "--flag"})
    assert str(info.value).startswith("--flag: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("state_dir", "/" + "x" * 5000, r"state_dir: 5001 characters is longer than 4096"),
        ("etcd.endpoints", ("h:1",) * 1001, r"etcd.endpoints: 1001 items is more than 1000"),
        ("auth.admin_groups", ("g" * 5000,), r"auth.admin_groups: an item of 5000 characters is longer than 4096"),
    ],
    ids=["long string", "many items", "long item"],
)
def test_strings_and_lists_are_bounded(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(None, {"node_name": "n", key: value}, override_names={key: "--flag"})


def test_good_endpoints_and_listen() -> None:
    cfg = load_config(
        None,
        {
            "node_name": "n",
            "etcd.endpoints": ("http://127.0.0.1:2379", "[::1]:2379", "etcd.example.com:2379"),
            "tcp_listen": "0.0.0.0:7070",
            **TLS_FILES,
        },
    )
    assert len(cfg.etcd.endpoints) == 3


def test_cert_needs_key() -> None:
    with pytest.raises(ConfigError, match=r"cert_file and etcd.key_file go together"):
        load_config(None, {"node_name": "n", "etcd.endpoints": ("h:1",), "etcd.cert_file": "/c.pem"})


def test_backend_and_sim_spec_conflict_in_one_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend = "nvml"\nsim_spec = "h100-80gb"\n')
    with pytest.raises(ConfigError, match=r"backend is 'nvml' but sim_spec is set .*remove one of them"):
        load_config(path, {})


def test_sim_backend_needs_a_spec(tmp_path: Path) -> None:
    path = write(tmp_path, 'backend = "sim"\n')
    with pytest.raises(ConfigError, match=r"backend 'sim' needs simulated GPUs: set sim_spec or --sim SPEC"):
        load_config(path, {})


def test_unknown_override_key() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'lease.bogus'"):
        load_config(None, {"lease.bogus": 1})


def test_daemon_config_fields() -> None:
    names = [f.name for f in dataclasses.fields(DaemonConfig)]
    assert names[:8] == [
        "node_name",
        "state_dir",
        "socket_path",
        "tcp_listen",
        "backend",
        "sim_spec",
        "shutdown_grace_s",
        "max_queue_length",
    ]


def test_placement_defaults_to_fgd_and_a_file_can_choose_best_fit(tmp_path: Path) -> None:
    sched = load_config(None, {}).scheduling
    assert (sched.placement, sched.placement_window, sched.placement_refresh_s) == ("fgd", 1000, 5.0)
    path = write(tmp_path, '[scheduling]\nplacement = "Best-Fit"\nplacement_window = 50\n')
    chosen = load_config(path, {}).scheduling
    assert (chosen.placement, chosen.placement_window) == ("best-fit", 50)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"tcp_listen": "0.0.0.0:7070"},
            r"tcp_listen: TCP is served only with mutual TLS: set tls.cert_file \(--tls-cert\)",
        ),
        (
            {"tcp_listen": "0.0.0.0:7070", "tls.cert_file": "/c.pem", "tls.key_file": "/k.pem"},
            r"set tls.client_ca_file \(--tls-client-ca\)$",
        ),
        ({"tls.cert_file": "/c.pem"}, r"tls.cert_file: TLS files are for the TCP listener: set tcp_listen"),
        ({"auth.enabled": False}, r"auth.enabled: false is allowed only with simulated GPUs"),
        (
            {"auth.enabled": False, "sim_spec": "h100-80gb:1", "tcp_listen": "0.0.0.0:7070", **TLS_FILES},
            r"auth.enabled: false cannot go with tcp_listen",
        ),
        ({"auth.admin_groups": ("ok", "bad group")}, r"auth.admin_groups: 'bad group' is not a group name"),
        ({"auth.credential_ttl_s": 1.0}, r"auth.credential_ttl_s: 1.0 must be from 10 to 86400 seconds"),
        ({"auth.credential_ttl_s": float("nan")}, r"auth.credential_ttl_s: expected a finite number, got nan"),
        ({"audit.retention_days": 0}, r"audit.retention_days: 0 must be from 1 to 3650 days"),
    ],
)
def test_bad_auth_settings(overrides: dict[str, object], expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(None, {"node_name": "n", **overrides})


def test_auth_settings_from_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
sim_spec = "h100-80gb:1"
[auth]
enabled = false
admin_groups = ["wheel", "gpu-admins"]
open_default_project = false
credential_ttl_s = 60
[audit]
retention_days = 30
[priority_classes.inference]
value = 200
preemptible = false
projects = ["vision", "speech"]
[priority_classes.train]
value = 100
""",
    )
    cfg = load_config(path, {})
    assert (cfg.auth.enabled, cfg.auth.admin_groups, cfg.auth.open_default_project) == (
        False,
        ("wheel", "gpu-admins"),
        False,
    )
    assert (cfg.auth.credential_ttl_s, cfg.audit.retention_days) == (60.0, 30)
    assert cfg.priority_classes[0].projects == ("vision", "speech")


@pytest.mark.parametrize("projects", ["'vision'", "['bad name']", "[1]"])
def test_bad_class_projects(tmp_path: Path, projects: str) -> None:
    path = write(tmp_path, f"[priority_classes.inference]\nvalue = 1\nprojects = {projects}\n")
    with pytest.raises(ConfigError, match=r"priority_classes.inference.projects: "):
        load_config(path, {})
