"""Enforcement by the in-process runtime: compute-share accuracy, overhead at full share, memory-limit exactness.

    python bench/enforce.py [--backend auto|cupy|numpy] [--shares 0.1,0.25,0.5,0.75,1.0] [--seconds 3]
                            [--kernel-ms 1.5] [--kernels-per-step 8] [--overhead-rounds 20]
                            [--overhead-seconds 0.2] [--budget-mib 1024] [--device 0]

The workload is one kernel (CuPy: a float32 matmul; NumPy: sin over a float32 array) sized once to take
--kernel-ms, launched --kernels-per-step times between checkpoints with no sync in between (CuPy queues them;
`runtime.step()` syncs through the throttle's event timer), so the device is kept fed. Per share, after a
warm-up that drains the throttle's burst bank, it runs --seconds; achieved share = device busy time / wall
time, the busy time timed apart from the runtime (CuPy: our own CUDA events around each step window; NumPy:
perf_counter around it), beside calibrated kernel time x kernels launched (by-count: moves with clocks and,
on a shared host, with the neighbours) and the runtime's own count (its GPU-seconds / wall).
Overhead: the same kernels with no runtime (back to back, one sync at the end; the baseline of this run) and
in a runtime at share 1.0 stepping after each group, interleaved ABBA, medians; and one empty step().
Memory: allocations through `runtime.xp`, halving from 1 MiB, until the budget refuses: bytes held, gap to
the budget, mem_info clamping, and NVML's count of the process on CuPy. Last line: one JSON object of it all.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import time
from typing import Any

import numpy as np

from vgpu import InvalidRequestError, MemoryBudgetError, Runtime, RuntimeOptions
from vgpu._private.runtime.array_backend import ArrayBackend
from vgpu._private.runtime.numpy_backend import NumpyBackend
from vgpu._private.runtime.runtime import RuntimeTarget
from vgpu._private.units import format_memory

MIB = 1024 * 1024
COMPUTE_BUDGET = 16 * 1024**3
"""Memory budget of the compute runs: far above what the kernels use (and above any CUDA context)."""
WARMUP_MAX_S = 5.0
"""Longest warm-up spent draining the throttle's burst bank before a share is measured."""
WARMUP_FULL_SHARE_S = 0.2
"""Warm-up at share 1.0, where the bank never drains (the throttle never waits)."""


def _cupy() -> Any:
    import cupy  # imported only on the GPU path: NumPy runs never need CuPy

    return cupy


def _pick_backend(kind: str, device: int) -> str:
    """The backend to run on, "cupy" or "numpy": auto takes CuPy when it imports and sees `device`."""
    if kind == "numpy":
        return "numpy"
    try:
        count = int(_cupy().cuda.runtime.getDeviceCount())
    except (ImportError, RuntimeError):  # no CuPy, no driver or no device: CuPy's CUDARuntimeError is a RuntimeError
        count = 0
    if count > device:
        return "cupy"
    if kind == "cupy":
        raise SystemExit(f"bench/enforce.py: --backend cupy needs CuPy and a visible GPU {device}")
    return "numpy"


class Device:
    """The workload: calibrated kernels, and a busy-time timer apart from the runtime's own.

    On CuPy a kernel is an n x n float32 matmul (one cuBLAS kernel, compute-bound). On NumPy it is `sin` over
    n float32s: single-threaded, so a busy neighbour on a shared host slows it far less than multi-threaded BLAS.
    """

    def __init__(self, kind: str, index: int) -> None:
        self.kind = kind
        self.index = index
        self.xp: Any = np
        self._operands: tuple[Any, Any, Any] | None = None
        self._events: tuple[Any, Any] | None = None
        self._host_start = 0.0
        self._host_busy = 0.0
        self.n = 0
        self.power = 1.0
        """Time ratio to size ratio: size ~ time ** power (1/3 for a matmul, 1 for an elementwise op)."""
        self.sizes = (4096, 4096, 1 << 26, 1 << 20)
        """(step, smallest, largest, first guess) of n."""
        if kind == "cupy":
            self.power = 1 / 3
            self.sizes = (16, 16, 16384, 1024)
            self.xp = cupy = _cupy()
            cupy.cuda.Device(index).use()
            self._events = (cupy.cuda.Event(), cupy.cuda.Event())

    def resize(self, n: int) -> None:
        """Operands for size n (values bounded: the inputs never change, the output is overwritten)."""
        self._operands = None
        shape = (n, n) if self.kind == "cupy" else (n,)
        host = np.random.default_rng(0).standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(n))
        a = self.xp.asarray(host)
        self._operands = (a, self.xp.asarray(host.T.copy()), self.xp.empty_like(a))
        self.n = n

    def describe(self) -> str:
        """The kernel, in words."""
        return f"{self.n}x{self.n} float32 matmul" if self.kind == "cupy" else f"sin over {self.n} float32"

    def release(self) -> None:
        """Drop the operands (and CuPy's cached blocks), so the memory run starts from the bare process."""
        self._operands = None
        gc.collect()
        if self.kind == "cupy":
            self.sync()
            self.xp.get_default_memory_pool().free_all_blocks()

    def launch(self, count: int) -> None:
        """Queue `count` kernels (CuPy returns at once; NumPy runs them)."""
        assert self._operands is not None
        a, b, c = self._operands
        if self.kind == "cupy":
            for _ in range(count):
                self.xp.matmul(a, b, out=c)
        else:
            for _ in range(count):
                np.sin(a, out=c)

    def sync(self) -> None:
        """Wait for everything queued on the device."""
        if self.kind == "cupy":
            self.xp.cuda.Device(self.index).synchronize()

    def begin(self) -> None:
        """Start a busy-time window (a CUDA event on the current stream, or the host clock)."""
        if self._events is not None:
            self._events[0].record()
        else:
            self._host_start = time.perf_counter()

    def end(self) -> None:
        """End the window after the last launch; on CuPy this does not wait for the work."""
        if self._events is not None:
            self._events[1].record()
        else:
            self._host_busy = time.perf_counter() - self._host_start

    def busy(self) -> float:
        """Device seconds between begin() and end(); on CuPy waits for the end event (a no-op after step())."""
        if self._events is None:
            return self._host_busy
        start, end = self._events
        end.synchronize()
        return float(self.xp.cuda.get_elapsed_time(start, end)) / 1000.0

    def seconds_per_kernel(self, count: int) -> float:
        """Device time of one kernel, `count` of them back to back after one warm launch."""
        self.launch(1)
        self.sync()
        self.begin()
        self.launch(count)
        self.end()
        self.sync()
        return self.busy() / count


def calibrate(dev: Device, target_s: float) -> float:
    """Size the kernel to take about `target_s` on `dev`; its measured seconds per kernel (median of runs)."""
    step, smallest, largest, n = dev.sizes
    for _ in range(8):
        dev.resize(n)
        per = statistics.median(dev.seconds_per_kernel(3) for _ in range(5))
        wanted = min(largest, max(smallest, round(n * (target_s / per) ** dev.power / step) * step))
        if abs(wanted - n) <= max(step, n // 50):
            break
        n = wanted
    dev.resize(n)
    count = min(1000, max(3, round(0.1 / dev.seconds_per_kernel(3))))  # sustained: bursts run faster
    return statistics.median(dev.seconds_per_kernel(count) for _ in range(5))


def make_runtime(dev: Device, share: float, budget: int) -> Runtime:
    """A runtime as a lease makes one, on the bench's device."""
    backend: ArrayBackend
    if dev.kind == "cupy":
        from vgpu._private.runtime.cupy_backend import CupyBackend

        backend = CupyBackend(dev.index, budget)  # NVML finds the GPU by PCI bus id, no UUID needed
    else:
        backend = NumpyBackend(budget)
    # The UUID is only a label here: a runtime compares it on resume, which the bench never does.
    target = RuntimeTarget(f"bench-{dev.kind}-{dev.index}", budget, share)
    return Runtime(backend, target, RuntimeOptions(backend=dev.kind))


def share_run(dev: Device, share: float, seconds: float, per_step: int, kernel_s: float) -> dict[str, float]:
    """Keep the device fed under a runtime at `share` for `seconds` after the burst bank drained."""
    runtime = make_runtime(dev, share, COMPUTE_BUDGET)
    try:
        runtime.step()
        started = time.perf_counter()
        limit = WARMUP_FULL_SHARE_S if share >= 1.0 else WARMUP_MAX_S
        while time.perf_counter() - started < limit:
            dev.launch(per_step)
            runtime.step()
            if runtime.throttle_stats().throttled_seconds > 0.0:
                break  # the bank is empty: from here the share is what the refill allows
        warmup = time.perf_counter() - started
        before = runtime.throttle_stats()
        busy, kernels = 0.0, 0
        t0 = time.perf_counter()
        while True:
            dev.begin()
            dev.launch(per_step)
            dev.end()
            runtime.step()  # syncs (the throttle's event timer), charges, waits off any debt
            busy += dev.busy()
            kernels += per_step
            if time.perf_counter() - t0 >= seconds:
                break
        wall = time.perf_counter() - t0
        after = runtime.throttle_stats()
    finally:
        runtime.close()
    achieved = busy / wall
    own_wall = after.wall_seconds - before.wall_seconds
    return {
        "target": share,
        "achieved": round(achieved, 4),
        "error": round(achieved / share - 1.0, 4),
        "by_count": round(kernel_s * kernels / wall, 4),
        "runtime": round((after.gpu_seconds - before.gpu_seconds) / own_wall, 4),
        "throttled": round((after.throttled_seconds - before.throttled_seconds) / own_wall, 4),
        "wall_s": round(wall, 3),
        "warmup_s": round(warmup, 3),
        "kernels": kernels,
    }


def _plain(dev: Device, groups: int, per_step: int) -> float:
    dev.sync()
    started = time.perf_counter()
    for _ in range(groups):
        dev.launch(per_step)
    dev.sync()
    return time.perf_counter() - started


def _stepped(dev: Device, groups: int, per_step: int) -> float:
    runtime = make_runtime(dev, 1.0, COMPUTE_BUDGET)
    try:
        runtime.step()  # starts the first segment; the device is idle (the throttle has nothing queued)
        started = time.perf_counter()
        for _ in range(groups):
            dev.launch(per_step)
            runtime.step()
        return time.perf_counter() - started
    finally:
        runtime.close()


def empty_step_us(dev: Device, count: int = 2000) -> float:
    """Microseconds per `step()` with no work queued at share 1.0: the runtime's own cost per checkpoint."""
    runtime = make_runtime(dev, 1.0, COMPUTE_BUDGET)
    try:
        runtime.step()
        started = time.perf_counter()
        for _ in range(count):
            runtime.step()
        return (time.perf_counter() - started) / count * 1e6
    finally:
        runtime.close()


def overhead_run(dev: Device, groups: int, per_step: int, rounds: int) -> dict[str, Any]:
    """The same kernels with no runtime and in one at share 1.0, ABBA-interleaved; medians."""
    plain: list[float] = []
    stepped: list[float] = []
    for i in range(rounds):
        if i % 2 == 0:
            plain.append(_plain(dev, groups, per_step))
            stepped.append(_stepped(dev, groups, per_step))
        else:
            stepped.append(_stepped(dev, groups, per_step))
            plain.append(_plain(dev, groups, per_step))
    kernels = groups * per_step
    ratios = [p / s for p, s in zip(plain, stepped, strict=True)]
    ratio = statistics.median(ratios)
    quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio, ratio, ratio]
    per_step_cost = statistics.median(s - p for p, s in zip(plain, stepped, strict=True)) / groups
    return {
        "rounds": rounds,
        "kernels_per_round": kernels,
        "plain_kernels_per_s": round(kernels / statistics.median(plain), 1),
        "runtime_kernels_per_s": round(kernels / statistics.median(stepped), 1),
        "throughput_ratio": round(ratio, 4),
        "overhead_pct": round((1.0 - ratio) * 100.0, 2),
        "overhead_pct_iqr": [round((1.0 - quartiles[2]) * 100.0, 2), round((1.0 - quartiles[0]) * 100.0, 2)],
        "cost_per_step_us": round(per_step_cost * 1e6, 1),
        "empty_step_us": round(statistics.median(empty_step_us(dev) for _ in range(3)), 1),
    }


def memory_run(dev: Device, budget: int) -> dict[str, Any]:
    """Allocate through runtime.xp, halving the chunk from 1 MiB at each refusal, until the smallest is refused."""
    try:
        runtime = make_runtime(dev, 1.0, budget)
    except InvalidRequestError as exc:  # on a GPU: a budget below the CUDA context; the message says how much
        return {"budget_bytes": budget, "error": str(exc)}
    held: list[Any] = []
    refused_with: list[str] = []
    smallest = 512 if dev.kind == "cupy" else 1  # CuPy's pool rounds every request up to 512 bytes
    try:
        chunk = MIB
        while chunk >= smallest:
            try:
                held.append(runtime.xp.empty(chunk, dtype=np.uint8))
            except MemoryError as exc:  # MemoryBudgetError is one; CuPy's own OutOfMemoryError would be too
                refused_with.append(type(exc).__name__)
                chunk //= 2
        usage = runtime.memory_usage()
        free, total = runtime.mem_info()
        nvml: int | None = None
        if dev.kind == "cupy":
            from vgpu._private.runtime.cupy_backend import measure_process_bytes

            nvml = measure_process_bytes(dev.index)
        held_bytes = sum(int(array.nbytes) for array in held)
    finally:
        held.clear()
        runtime.close()
    return {
        "budget_bytes": budget,
        "held_bytes": held_bytes,
        "held_gap_bytes": budget - held_bytes,
        "used_bytes": usage.used_bytes,
        "gap_bytes": budget - usage.used_bytes,
        "smallest_chunk": smallest,
        "refusals": usage.refusals,
        "all_budget_errors": all(name == MemoryBudgetError.__name__ for name in refused_with),
        "refused_with": sorted(set(refused_with)),
        "mem_info_free": free,
        "mem_info_total": total,
        "clamped": 0 <= free <= budget - usage.used_bytes and total == budget,
        "nvml_process_bytes": nvml,
        "nvml_over_budget_bytes": None if nvml is None else nvml - budget,
    }


def _header(dev: Device, kernel_s: float, per_step: int) -> None:
    if dev.kind == "cupy":
        props = dev.xp.cuda.runtime.getDeviceProperties(dev.index)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        print(f"backend cupy on device {dev.index} ({name}): busy time is device time from our own CUDA events")
    else:
        print(
            "backend numpy (no GPU): 'GPU time' is the wall time of host work, so share accuracy measures the "
            "token bucket and the host waits, not a device"
        )
    print(f"kernel: {dev.describe()}, {kernel_s * 1000:.2f} ms each, {per_step} per step")


def _print_shares(rows: list[dict[str, float]]) -> None:
    print(f"{'share':>6} {'achieved':>9} {'error':>8} {'by-count':>9} {'runtime':>8} {'throttled':>10} {'warmup':>7}")
    for row in rows:
        print(
            f"{row['target']:>6.2f} {row['achieved']:>9.4f} {row['error'] * 100:>+7.2f}% {row['by_count']:>9.4f} "
            f"{row['runtime']:>8.4f} {row['throttled'] * 100:>9.1f}% {row['warmup_s']:>6.2f}s"
        )


def _print_memory(mem: dict[str, Any]) -> None:
    if "error" in mem:
        print(f"memory: not measured: {mem['error']}")
        return
    print(
        f"memory: budget {format_memory(mem['budget_bytes'])}, held {mem['held_bytes']} B in arrays at refusal "
        f"({'/'.join(mem['refused_with'])}, {mem['refusals']} refusals down to {mem['smallest_chunk']} B), "
        f"runtime counts {mem['used_bytes']} B used: gap {mem['gap_bytes']} B; "
        f"mem_info free {mem['mem_info_free']} total {mem['mem_info_total']}: "
        f"{'clamped' if mem['clamped'] else 'NOT CLAMPED'}"
    )
    if mem["nvml_process_bytes"] is not None:
        print(
            f"memory: NVML counts {mem['nvml_process_bytes']} B for this process "
            f"({mem['nvml_over_budget_bytes']:+d} B vs the budget)"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("auto", "cupy", "numpy"), default="auto")
    parser.add_argument("--device", type=int, default=0, help="CUDA device index (CuPy)")
    parser.add_argument("--shares", default="0.1,0.25,0.5,0.75,1.0", help="compute shares to measure")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured seconds per share (after warm-up)")
    parser.add_argument("--kernel-ms", type=float, default=1.5, help="calibrated duration of one kernel")
    parser.add_argument("--kernels-per-step", type=int, default=8, help="kernels queued between checkpoints")
    parser.add_argument("--overhead-rounds", type=int, default=20, help="pairs of overhead runs (medians)")
    parser.add_argument("--overhead-seconds", type=float, default=0.2, help="length of one overhead run")
    parser.add_argument("--budget-mib", type=int, default=1024, help="memory budget (on a GPU: CUDA context too)")
    args = parser.parse_args()
    shares = [float(x) for x in args.shares.split(",") if x.strip()]
    if not shares or not all(0.0 < share <= 1.0 for share in shares):
        parser.error(f"--shares must be a comma-separated list of shares in (0, 1], got {args.shares!r}")
    per_step = args.kernels_per_step

    dev = Device(_pick_backend(args.backend, args.device), args.device)
    kernel_s = calibrate(dev, args.kernel_ms / 1000.0)
    _header(dev, kernel_s, per_step)

    rows = [share_run(dev, share, args.seconds, per_step, kernel_s) for share in shares]
    _print_shares(rows)

    groups = max(10, round(args.overhead_seconds / (kernel_s * per_step)))
    over = overhead_run(dev, groups, per_step, args.overhead_rounds)
    low, high = over["overhead_pct_iqr"]
    print(
        f"overhead at share 1.0 (medians of {args.overhead_rounds} ABBA pairs of {groups} steps): no runtime "
        f"{over['plain_kernels_per_s']:.0f} kernels/s, runtime {over['runtime_kernels_per_s']:.0f} kernels/s\n"
        f"  overhead {over['overhead_pct']:+.2f}% (IQR {low:+.2f}..{high:+.2f}%), "
        f"{over['cost_per_step_us']:+.1f} us per step; an empty step() costs {over['empty_step_us']:.1f} us"
    )

    dev.release()
    mem = memory_run(dev, args.budget_mib * MIB)
    _print_memory(mem)

    errors = [abs(row["error"]) for row in rows]
    print(
        json.dumps(
            {
                "backend": dev.kind,
                "kernel": dev.describe(),
                "kernel_ms": round(kernel_s * 1000, 3),
                "kernels_per_step": per_step,
                "seconds_per_share": args.seconds,
                "shares": rows,
                "max_abs_share_error": round(max(errors), 4) if errors else None,
                "overhead": over,
                "memory": mem,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
