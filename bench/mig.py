"""MIG placement quality: our `choose` next to first fit, replaying one random create/destroy sequence.

    python bench/mig.py [--gpus 8] [--model h100-80gb] [--steps 20000] [--seed 1] [--load 1.0] [--mix ...] [--json]

The sequence is drawn once from the seed: step i asks for one instance of a profile drawn from the mix and
says how long it lives (exponential, mean chosen so that the offered memory slices average `--load` times
the pool's); an instance whose time is up is destroyed before the next request. Each policy keeps its own
simulated GPUs and replays the same requests and departures: a request that does not fit anywhere is refused
(no queue), and the departure of a refused request is a no-op. Printed per policy: requests, granted,
refused per profile, the fraction of the large requests granted (3g and 7g on 8-slice models; on A30 the
2g and 4g), the fraction of steps after which a fresh such request would still fit somewhere, and the mean
share of memory slices in use. Pure computation: no daemon, no etcd, no GPU.
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from vgpud._private.backend.geometry import GpuModel, UnknownModelError, lookup_model
from vgpud._private.core.mig_placement import (
    Choice,
    MigGpu,
    choose,
    choose_first_fit,
    fits,
    profile_named,
)

Policy = Callable[[Sequence[MigGpu], str], Choice | None]

DEFAULT_WEIGHTS: dict[tuple[int, int], float] = {(1, 1): 35, (2, 1): 10, (2, 2): 25, (4, 3): 15, (4, 4): 7, (8, 7): 8}
"""Default mix by (memory slices, compute slices): mostly 1g/2g, some 3g/4g/7g; shapes a model lacks drop out."""


@dataclass(frozen=True)
class Request:
    profile: str
    lifetime: int
    """Steps until its instance (if granted) is destroyed."""


@dataclass
class Run:
    """One policy's replay: its GPUs, which request holds which instance, and its counters."""

    name: str
    policy: Policy
    gpus: list[MigGpu]
    held: dict[int, tuple[int, int]] = field(default_factory=dict)
    """Request number -> (gpu index, start) of its live instance."""
    requested: dict[str, int] = field(default_factory=dict)
    granted: dict[str, int] = field(default_factory=dict)
    still_fits: dict[str, int] = field(default_factory=dict)
    """Profile -> steps after which a fresh request for it would fit somewhere."""
    used_slices: int = 0
    """Memory slices in use, summed over the steps."""


def default_mix(model: GpuModel) -> dict[str, float]:
    """The default weights mapped onto the model's plain (non-"+me") profiles."""
    mix = {}
    for p in model.mig_profiles:
        weight = DEFAULT_WEIGHTS.get((p.memory_slices, p.compute_slices), 0.0)
        if "+" not in p.name and weight > 0 and p.name not in mix:
            mix[p.name] = weight
    return mix


def parse_mix(text: str, model: GpuModel) -> dict[str, float]:
    mix = {}
    for part in filter(None, (x.strip() for x in text.split(","))):
        name, _, weight = part.partition("=")
        profile = profile_named(model, name)
        if profile is None:
            known = ", ".join(p.name for p in model.mig_profiles)
            raise argparse.ArgumentTypeError(f"{model.key} has no MIG profile {name!r}; its profiles: {known}")
        try:
            mix[profile.name] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--mix wants NAME=WEIGHT pairs, not {part!r}") from None
    if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise argparse.ArgumentTypeError(f"--mix wants NAME=WEIGHT pairs with positive weights, not {text!r}")
    return mix


def headline_profiles(model: GpuModel) -> tuple[str, str]:
    """The "3g" and "7g" of this model: the 3-compute-slice profile (else the largest below the whole
    GPU) and the whole-GPU profile."""
    plain = [p for p in model.mig_profiles if "+" not in p.name]
    full = max(plain, key=lambda p: (p.compute_slices, p.memory_slices))
    below = [p for p in plain if p.compute_slices < full.compute_slices]
    half = next((p for p in below if p.compute_slices == 3), None) or max(below, key=lambda p: p.compute_slices)
    return half.name, full.name


def make_sequence(
    model: GpuModel, gpus: int, mix: dict[str, float], *, steps: int, load: float, seed: int
) -> list[Request]:
    """The shared request sequence; lifetimes sized so that the offered load is `load` x the pool's slices."""
    rng = random.Random(seed)
    names = list(mix)
    weights = [mix[n] for n in names]
    slices = {n: p.memory_slices for n in names if (p := profile_named(model, n)) is not None}
    mean_slices = sum(mix[n] * slices[n] for n in names) / sum(weights)
    mean_life = load * gpus * model.memory_slices / mean_slices
    return [
        Request(name, max(1, round(rng.expovariate(1 / mean_life))))
        for name in rng.choices(names, weights=weights, k=steps)
    ]


def replay(run: Run, sequence: list[Request], probes: tuple[str, ...]) -> None:
    """Play the sequence on this policy's GPUs."""
    departures: list[tuple[int, int]] = []
    for step, request in enumerate(sequence):
        while departures and departures[0][0] <= step:
            _, number = heapq.heappop(departures)
            if number in run.held:
                index, start = run.held.pop(number)
                run.gpus[index] = run.gpus[index].without_instance(start)
        run.requested[request.profile] = run.requested.get(request.profile, 0) + 1
        choice = run.policy(run.gpus, request.profile)
        if choice is not None:
            run.gpus[choice.index] = choice.gpu.with_instance(choice.instance)
            run.held[step] = (choice.index, choice.start)
            run.granted[request.profile] = run.granted.get(request.profile, 0) + 1
            heapq.heappush(departures, (step + request.lifetime, step))
        for name in probes:
            if any(fits(g, name) for g in run.gpus):
                run.still_fits[name] = run.still_fits.get(name, 0) + 1
        run.used_slices += sum(i.size for g in run.gpus for i in g.instances)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    model: GpuModel = args.model
    mix = args.mix or default_mix(model)
    half, full = headline_profiles(model)
    sequence = make_sequence(model, args.gpus, mix, steps=args.steps, load=args.load, seed=args.seed)
    runs = [Run("ours", choose, []), Run("first-fit", choose_first_fit, [])]
    for run in runs:
        run.gpus = [MigGpu(f"GPU-sim-{i}", model, mig_enabled=True) for i in range(args.gpus)]
        replay(run, sequence, (half, full))
    pool_slices = args.gpus * model.memory_slices
    return {
        "model": model.key,
        "gpus": args.gpus,
        "steps": args.steps,
        "seed": args.seed,
        "load": args.load,
        "mix": mix,
        "headline": [half, full],
        "policies": {
            run.name: {
                "requested": run.requested,
                "granted": run.granted,
                "still_fits_steps": run.still_fits,
                "mean_slices_in_use": run.used_slices / (args.steps * pool_slices),
            }
            for run in runs
        },
    }


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _ratio(ours: float, base: float) -> str:
    return f"{ours / base:.2f}x" if base else "-"


def print_report(report: dict[str, Any]) -> None:
    ours, ff = report["policies"]["ours"], report["policies"]["first-fit"]
    steps = report["steps"]
    total = sum(report["mix"].values())
    mix = ", ".join(f"{n} {100 * w / total:.0f}%" for n, w in report["mix"].items())
    print(
        f"{report['gpus']} x {report['model']}, {steps} create requests at offered load {report['load']:g}"
        f" (seed {report['seed']}); mix: {mix}"
    )
    rows: list[tuple[str, str, str, str]] = []

    def add(label: str, a: int | float, b: int | float, text: Callable[[Any], str] = str) -> None:
        rows.append((label, text(a), text(b), _ratio(a, b)))

    add("requests", sum(ours["requested"].values()), sum(ff["requested"].values()))
    add("granted", sum(ours["granted"].values()), sum(ff["granted"].values()))
    for name in report["mix"]:
        asked = ours["requested"].get(name, 0)
        add(f"  refused {name} (of {asked})", asked - ours["granted"].get(name, 0), asked - ff["granted"].get(name, 0))
    for name in report["headline"]:
        asked = ours["requested"].get(name, 0)
        a, b = ours["granted"].get(name, 0), ff["granted"].get(name, 0)
        rows.append((f"{name} requests granted", _pct(a, asked), _pct(b, asked), _ratio(a, b)))
    for name in report["headline"]:
        a, b = ours["still_fits_steps"].get(name, 0), ff["still_fits_steps"].get(name, 0)
        rows.append((f"steps after which a {name} fits", _pct(a, steps), _pct(b, steps), _ratio(a, b)))
    a, b = ours["mean_slices_in_use"], ff["mean_slices_in_use"]
    rows.append(("mean memory slices in use", f"{100 * a:.1f}%", f"{100 * b:.1f}%", _ratio(a, b)))
    width = max(len(r[0]) for r in rows)
    print(f"{'':<{width}}{'ours':>12}{'first-fit':>12}{'ours/ff':>10}")
    for label, a_text, b_text, ratio in rows:
        print(f"{label:<{width}}{a_text:>12}{b_text:>12}{ratio:>10}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=8, help="simulated GPUs, all in MIG mode")
    parser.add_argument("--model", default="h100-80gb", help="GPU model key, e.g. a100-40gb, a30-24gb")
    parser.add_argument("--steps", type=int, default=20000, help="create requests in the sequence")
    parser.add_argument("--seed", type=int, default=1, help="seed of the sequence")
    parser.add_argument("--load", type=float, default=1.0, help="offered memory slices / the pool's slices")
    parser.add_argument("--mix", default="", help="profile weights, e.g. 1g.10gb=3,3g.40gb=1 (default: mostly 1g/2g)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    try:
        args.model = lookup_model(args.model)
        args.mix = parse_mix(args.mix, args.model) if args.mix else None
    except (UnknownModelError, argparse.ArgumentTypeError) as exc:
        parser.error(str(exc))
    if not args.model.mig_capable:
        parser.error(f"{args.model.key} has no MIG")
    if args.gpus < 1 or args.steps < 1 or args.load <= 0:
        parser.error("--gpus and --steps must be >= 1 and --load > 0")
    report = measure(args)
    if args.json:
        print(json.dumps(report))
    else:
        print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
