"""Trace-driven scheduler quality on the openb trace (shared/traces/openb), through the project's scheduling core.

    python bench/replay.py --nodes NODES.csv --pods PODS.csv [PODS.csv ...] [--seeds 10]
                           [--policy bestfit fgd fgd-host fgd-lean daemon] [--mode fgd|time] [--jobs 1]

--mode fgd (default), the FGD paper's protocol: per seed, pods sampled with replacement from the pod list are
placed one by one with no departures until arrived GPU demand reaches 130 % of the cluster's GPUs; a pod
placed only where its CPU, host memory, GPU model and GPU share all fit, else it fails. Every policy replays
the same samples. One JSON line per policy and trace: mean (and std, per-seed values) of the allocation
ratio at 100 % and 130 % arrived demand, the fragmentation rate at 100 % (task classes: the pod list's
distinct (num_gpu, gpu_milli, gpu_spec) shapes by frequency; frag_rate_cpu_100 also counts a class's
CPU against the node's free CPU, as the paper's simulator does), failed pods, best fit's figures on the
same samples, and the paper's published figures when the pod file's name matches its table.

--mode time: pods arrive at creation_time and leave at deletion_time; waiters go through the core's queue
decide(); one JSON line per policy with the time-weighted allocation, queueing delays and failures.

Policies (bench/replay_policies.py): bestfit (the core's default), fgd (the paper's FGD), fgd-gpu (FGD
over GPU shapes only), fgd-host (FGD whose fragment also counts idle GPU the node's free CPU cannot feed),
fgd-host-typical (fgd-host over the FGD simulator's typical pods only), fgd-lean (fgd-host over one class
per GPU shape at the least CPU its pods ask), daemon (what vgpud runs: FGD over the
GPU shapes of the last 1000 requests seen, learned online, blind to host CPU and memory).
A bad CSV prints one line and exits 2. Ratios are percent.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from replay_fgd import SeedResult, draw, replay
from replay_policies import NAMES, build, task_mix
from replay_time import replay_time
from replay_trace import NodeSpec, PodSpec, TraceError, read_nodes, read_pods

BASELINE = "bestfit"
PUBLISHED: dict[str, dict[str, tuple[float, float]]] = {
    # shared/traces/openb/README.md: FGD artifact, mean of 10 seeds, allocation ratio % at 100 % / 130 %.
    "default": {"bestfit": (92.86, 93.08), "fgd": (95.23, 95.39)},
    "gpushare40": {"bestfit": (91.44, 91.69), "fgd": (93.96, 94.15)},
    "multigpu20": {"bestfit": (93.73, 93.93), "fgd": (95.53, 95.65)},
    "gpuspec10": {"bestfit": (93.10, 93.30), "fgd": (94.66, 94.95)},
    "cpu050": {"bestfit": (93.56, 93.79), "fgd": (95.00, 95.21)},
}


def trace_name(path: Path) -> str:
    """The pod file's stem."""
    return path.stem


def published(stem: str) -> dict[str, tuple[float, float]] | None:
    """The paper's figures for this pod file, by its stem (openb_pod_list_<name> or <name>)."""
    return PUBLISHED.get(stem.removeprefix("openb_pod_list_"))


def _seed_run(
    nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], policies: Sequence[str], seed: int
) -> list[SeedResult]:
    """Every policy on one seed's sample (a unit of work for a worker process)."""
    metric = task_mix(pods)
    host_metric = task_mix(pods, cpu=True)
    sample = draw(pods, sum(n.gpus for n in nodes), seed)
    return [
        replay(nodes, pods, sample, policy=build(name, pods), mix=metric, cpu_mix=host_metric, seed=seed)
        for name in policies
    ]


def _stats(values: Sequence[float], scale: float = 100.0) -> tuple[float, float, list[float]]:
    scaled = [v * scale for v in values]
    spread = statistics.stdev(scaled) if len(scaled) > 1 else 0.0
    return round(statistics.fmean(scaled), 3), round(spread, 3), [round(v, 3) for v in scaled]


def fgd_lines(
    nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], stem: str, policies: Sequence[str], *, seeds: int, jobs: int
) -> list[dict[str, Any]]:
    """One JSON-ready line per requested policy (best fit is replayed too, for the comparison fields)."""
    ran = [BASELINE, *(p for p in policies if p != BASELINE)]
    started = time.perf_counter()
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            per_seed = list(pool.map(_seed_run, [nodes] * seeds, [pods] * seeds, [ran] * seeds, range(seeds)))
    else:
        per_seed = [_seed_run(nodes, pods, ran, s) for s in range(seeds)]
    elapsed = time.perf_counter() - started
    by_policy = {name: [results[k] for results in per_seed] for k, name in enumerate(ran)}
    base = _summary(by_policy[BASELINE])
    paper = published(stem)
    lines = []
    for name in policies:
        summary = _summary(by_policy[name])
        line: dict[str, Any] = {
            "mode": "fgd",
            "trace": stem,
            "policy": name,
            "seeds": seeds,
            "nodes": len(nodes),
            "gpus": sum(n.gpus for n in nodes),
            **summary,
        }
        if name != BASELINE:
            line |= {f"{BASELINE}_{k}": v for k, v in base.items() if k != "per_seed" and not k.endswith("_std")}
        if paper is not None:
            line |= {
                "fgd_published_100": paper["fgd"][0],
                "fgd_published_130": paper["fgd"][1],
                "bestfit_published_100": paper["bestfit"][0],
                "bestfit_published_130": paper["bestfit"][1],
                "meets_fgd_published_100": summary["alloc_ratio_100"] >= paper["fgd"][0],
            }
        line["units"] = "ratios in percent; failed_pods per seed"
        line["seconds_all_policies"] = round(elapsed, 1)
        lines.append(line)
    return lines


def _summary(results: Sequence[SeedResult]) -> dict[str, Any]:
    out: dict[str, Any] = {"pods_sampled": round(statistics.fmean(r.pods for r in results), 1)}
    per_seed: dict[str, list[float]] = {}
    for field in ("alloc_ratio_100", "alloc_ratio_130", "frag_rate_100", "frag_rate_cpu_100"):
        mean, std, values = _stats([getattr(r, field) for r in results])
        out[field] = mean
        out[f"{field}_std"] = std
        per_seed[field] = values
    out["failed_pods"] = round(statistics.fmean(r.failed_pods for r in results), 1)
    per_seed["failed_pods"] = [r.failed_pods for r in results]
    out["per_seed"] = per_seed
    return out


def time_lines(
    nodes: Sequence[NodeSpec], pods: Sequence[PodSpec], stem: str, policies: Sequence[str]
) -> list[dict[str, Any]]:
    """One JSON-ready line per policy for the time-driven replay."""
    lines = []
    for name in policies:
        started = time.perf_counter()
        result = replay_time(nodes, pods, build(name, pods))
        lines.append(
            {
                "mode": "time",
                "trace": stem,
                "policy": name,
                "nodes": len(nodes),
                "gpus": sum(n.gpus for n in nodes),
                **result.overall,
                "never_fits": result.never_fits,
                "mean_alloc_ratio": round(100 * result.mean_alloc_ratio, 3),
                "peak_alloc_ratio": round(100 * result.peak_alloc_ratio, 3),
                "span_s": round(result.span_s, 1),
                "decide_calls": result.decide_calls,
                "by_priority": result.by_priority,
                "by_project": result.by_project,
                "units": "ratios in percent; delays in seconds of trace time",
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="replay.py", description="Replay the openb trace through the scheduling core."
    )
    parser.add_argument("--nodes", type=Path, required=True, help="node list CSV (sn,cpu_milli,memory_mib,gpu,model)")
    parser.add_argument("--pods", type=Path, nargs="+", required=True, help="pod list CSV(s), one JSON line set each")
    parser.add_argument("--seeds", type=int, default=10, help="samples per trace in fgd mode (default 10)")
    parser.add_argument(
        "--policy",
        nargs="+",
        choices=NAMES,
        default=["bestfit", "fgd", "fgd-host", "fgd-lean", "daemon"],
        help="policies to report",
    )
    parser.add_argument("--mode", choices=("fgd", "time"), default="fgd", help="FGD protocol or time-driven replay")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes over seeds in fgd mode (default 1)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    args.policy = list(dict.fromkeys(args.policy))
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        nodes = read_nodes(args.nodes)
        traces = [(path, read_pods(path)) for path in args.pods]
    except TraceError as exc:
        print(f"replay.py: error: {exc}", file=sys.stderr)
        return 2
    for path, pods in traces:
        stem = trace_name(path)
        if args.mode == "fgd":
            lines = fgd_lines(nodes, pods, stem, args.policy, seeds=args.seeds, jobs=args.jobs)
        else:
            lines = time_lines(nodes, pods, stem, args.policy)
        for line in lines:
            print(json.dumps(line, separators=(",", ":")), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
