"""Preemptible kernels on NumPy: stop between chunks when the flag is set, resume to the same result."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.numpy_backend import NumpyBackend
from vgpu._private.runtime.preempt_flag import HostPreemptFlag, PreemptFlag, preempt_flag_for
from vgpu._private.runtime.preemptible_kernel import HostPreemptibleKernel, Progress


def scale_and_shift(start: int, end: int, x: npt.NDArray[np.float32]) -> None:
    """Not idempotent: an item run twice, or skipped, changes the result."""
    x[start:end] = x[start:end] * np.float32(1.5) + (np.arange(start, end) % 7).astype(np.float32)


def fresh(total: int) -> npt.NDArray[np.float32]:
    return np.linspace(-1.0, 1.0, total, dtype=np.float32)


def uninterrupted(total: int) -> npt.NDArray[np.float32]:
    x = fresh(total)
    scale_and_shift(0, total, x)
    return x


class StopAfter:
    """A chunk callback that sets the flag from inside the work after `chunks` chunks, like a preemption."""

    def __init__(self, flag: PreemptFlag, chunks: int) -> None:
        self.flag = flag
        self.chunks = chunks
        self.ranges: list[tuple[int, int]] = []

    def __call__(self, start: int, end: int, x: npt.NDArray[np.float32]) -> None:
        scale_and_shift(start, end, x)
        self.ranges.append((start, end))
        if len(self.ranges) == self.chunks:
            self.flag.set()


def test_stops_mid_way_and_resumes_to_the_uninterrupted_result() -> None:
    flag = HostPreemptFlag()
    fn = StopAfter(flag, 3)
    kernel = HostPreemptibleKernel(fn, 95, chunk=10)
    x = fresh(95)

    first = kernel.run((x,), flag=flag)
    assert first == Progress(done_items=30, total=95, stopped=True)
    assert not first.complete
    assert np.array_equal(x[30:], fresh(95)[30:])  # nothing past the progress was touched

    flag.clear()
    second = kernel.run((x,), flag=flag, start=first.done_items)
    assert second == Progress(done_items=95, total=95, stopped=False)
    assert second.complete
    assert fn.ranges == [(0, 10), (10, 20), (20, 30), (30, 40), (40, 50), (50, 60), (60, 70), (70, 80),
                         (80, 90), (90, 95)]  # fmt: skip
    assert np.array_equal(x, uninterrupted(95))


def test_a_flag_set_before_the_run_does_no_work() -> None:
    flag = HostPreemptFlag()
    flag.set()
    calls: list[tuple[int, int]] = []
    kernel = HostPreemptibleKernel(lambda start, end: calls.append((start, end)), 50, chunk=8)
    assert kernel.run((), flag=flag, start=16) == Progress(16, 50, stopped=True)
    assert calls == []


def test_a_run_from_the_end_is_complete_without_work() -> None:
    calls: list[tuple[int, int]] = []
    kernel = HostPreemptibleKernel(lambda start, end: calls.append((start, end)), 50, chunk=8)
    assert kernel.run((), flag=HostPreemptFlag(), start=50) == Progress(50, 50, stopped=False)
    assert HostPreemptibleKernel(lambda start, end: None, 0).run((), flag=HostPreemptFlag()).complete
    assert calls == []


def test_a_flag_set_in_the_last_chunk_still_reports_complete() -> None:
    flag = HostPreemptFlag()
    fn = StopAfter(flag, 2)
    x = fresh(20)
    assert HostPreemptibleKernel(fn, 20, chunk=10).run((x,), flag=flag) == Progress(20, 20, stopped=False)


def test_an_error_in_a_chunk_propagates_after_the_chunks_before_it() -> None:
    done: list[int] = []

    def fail_at_third(start: int, end: int) -> None:
        if len(done) == 2:
            raise ValueError("bad chunk")
        done.append(start)

    kernel = HostPreemptibleKernel(fail_at_third, 100, chunk=10)
    with pytest.raises(ValueError, match="bad chunk"):
        kernel.run((), flag=HostPreemptFlag())
    assert done == [0, 10]


@pytest.mark.parametrize(
    ("total", "chunk", "start", "match"),
    [
        (-1, 10, 0, "total"),
        (10, 0, 0, "chunk"),
        (10, True, 0, "chunk"),
        (10, 2, -1, "start"),
        (10, 2, 11, "past the 10 items"),
        (10, 2, 1.5, "start"),
    ],
)
def test_rejects_bad_counts(total: int, chunk: int, start: int, match: str) -> None:
    with pytest.raises(InvalidRequestError, match=match):
        HostPreemptibleKernel(lambda start, end: None, total, chunk=chunk).run((), flag=HostPreemptFlag(), start=start)


def test_host_flag_surface() -> None:
    with preempt_flag_for(NumpyBackend(1 << 20)) as flag:
        assert isinstance(flag, HostPreemptFlag)
        assert flag.device_array is None
        assert not flag.is_set()
        flag.set()
        assert flag.is_set()
        flag.clear()
        assert not flag.is_set()
    flag.close()  # idempotent


@settings(max_examples=200, deadline=None)
@given(
    total=st.integers(min_value=1, max_value=500),
    chunk=st.integers(min_value=1, max_value=64),
    stops=st.lists(st.integers(min_value=1, max_value=10), max_size=6),
)
def test_any_pattern_of_stops_gives_the_uninterrupted_result(total: int, chunk: int, stops: list[int]) -> None:
    x = fresh(total)
    flag = HostPreemptFlag()
    progress = Progress(0, total, stopped=False)
    for after in stops:
        flag.clear()
        fn = StopAfter(flag, after)
        progress = HostPreemptibleKernel(fn, total, chunk=chunk).run((x,), flag=flag, start=progress.done_items)
        assert progress.done_items == min(total, fn.ranges[0][0] + after * chunk)
        assert progress.stopped == (progress.done_items < total)
        if progress.complete:
            break
    flag.clear()
    final = HostPreemptibleKernel(scale_and_shift, total, chunk=chunk).run((x,), flag=flag, start=progress.done_items)
    assert final.complete
    assert np.array_equal(x, uninterrupted(total))
