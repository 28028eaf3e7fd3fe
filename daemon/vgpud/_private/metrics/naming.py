"""vgpud's metric naming rules (Prometheus conventions), as a check the unit tests run over the registry.

- every metric of ours starts with `vgpu_` (the standard `process_*` and `python_*` ones are left as they are);
- counters end in `_total`; histograms measure `_seconds` (or `_bytes`);
- a gauge ends in its unit: `_bytes`, `_seconds`, `_ratio` (a share, always 0..1) or `_gpus` (compute in
  whole-GPU units: 0.5 is half a GPU; may exceed 1), or it is a count named for what it counts (COUNTS);
- no scaled or non-base units anywhere in a name: no `_milli`, `_percent`, `_mib`, `_ms`, ...
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.metrics_core import Metric

PREFIX = "vgpu_"
STANDARD_PREFIXES = ("process_", "python_")
GAUGE_UNITS = ("_bytes", "_seconds", "_ratio", "_gpus")
HISTOGRAM_UNITS = ("_seconds", "_bytes")
COUNTS = frozenset(
    {
        "vgpu_leader",
        "vgpu_leases",
        "vgpu_project_leases",
        "vgpu_project_waiting_requests",
        "vgpu_queue_length",
        "vgpu_socket_connections",
    }
)
"""Unitless gauges: how many of something there are (the name says what), or 0/1 for vgpu_leader."""
FORBIDDEN = ("_milli", "_percent", "_mib", "_gib", "_kib", "_mb", "_gb", "_ms", "_us", "_minutes", "_hours")


def problems(metrics: Iterable[Metric]) -> list[str]:
    """What breaks the rules, one line per metric family (empty when all is well)."""
    found = []
    for metric in metrics:
        name, kind = metric.name, metric.type
        if name.startswith(STANDARD_PREFIXES):
            continue
        why = _problem(name, kind)
        if why:
            found.append(f"{name} ({kind}): {why}")
        if kind == "counter":
            odd = [s.name for s in metric.samples if not s.name.endswith(("_total", "_created"))]
            if odd:
                found.append(f"{name}: a counter's sample {odd[0]} does not end in _total")
        if name.endswith("_ratio"):
            outside = [s.value for s in metric.samples if not 0.0 <= s.value <= 1.0]
            if outside:
                found.append(f"{name}: a ratio outside 0..1: {outside[0]}")
    return found


def _problem(name: str, kind: str) -> str:
    if not name.startswith(PREFIX):
        return f"does not start with {PREFIX}"
    scaled = [part for part in FORBIDDEN if f"{part}_" in f"{name}_"]
    if scaled:
        return f"names a non-base unit ({scaled[0]})"
    return _unit_problem(name, kind)


def _unit_problem(name: str, kind: str) -> str:
    if kind in {"counter", "info"}:
        # prometheus_client keeps a counter's family name without `_total`; `problems` checks the samples.
        return ""
    if kind == "histogram":
        return "" if name.endswith(HISTOGRAM_UNITS) else f"a histogram should end in {' or '.join(HISTOGRAM_UNITS)}"
    if kind != "gauge":
        return f"unexpected metric type {kind}"
    named = name.endswith(GAUGE_UNITS) or name in COUNTS
    return "" if named else f"a gauge should end in {', '.join(GAUGE_UNITS)} or be a named count (naming.COUNTS)"
