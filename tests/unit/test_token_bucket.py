"""TokenBucket algebra: refill at the rate, debt paid back by waiting, live rate changes, argument checks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vgpu._private.errors import InvalidRequestError
from vgpu._private.runtime.token_bucket import TokenBucket

EPS = 1e-9


def test_starts_full_and_refills_up_to_capacity() -> None:
    bucket = TokenBucket(rate=0.5, capacity=0.2, now=10.0)
    assert bucket.level(10.0) == pytest.approx(0.2)
    bucket.charge(0.2, 10.0)
    assert bucket.level(10.0) == pytest.approx(0.0)
    assert bucket.level(10.2) == pytest.approx(0.1)
    assert bucket.level(100.0) == pytest.approx(0.2)


def test_charge_makes_debt_that_delay_pays_back_at_the_rate() -> None:
    bucket = TokenBucket(rate=0.25, capacity=0.5, now=0.0)
    bucket.charge(1.5, 0.0)
    assert bucket.level(0.0) == pytest.approx(-1.0)
    assert bucket.delay(0.0) == pytest.approx(4.0)
    assert bucket.delay(1.0) == pytest.approx(3.0)
    assert bucket.delay(4.0) == pytest.approx(0.0)
    assert bucket.level(4.0) == pytest.approx(0.0)


def test_no_delay_while_out_of_debt() -> None:
    bucket = TokenBucket(rate=0.5, capacity=1.0, now=0.0)
    bucket.charge(0.75, 0.0)
    assert bucket.delay(0.0) == 0.0


def test_set_rate_settles_at_the_old_rate_then_refills_at_the_new_one() -> None:
    bucket = TokenBucket(rate=0.5, capacity=0.5, now=0.0)
    bucket.charge(1.5, 0.0)  # level -1.0
    bucket.set_rate(0.25, 1.0)  # one second at 0.5 -> -0.5
    assert bucket.rate == 0.25
    assert bucket.level(1.0) == pytest.approx(-0.5)
    assert bucket.delay(1.0) == pytest.approx(2.0)
    bucket.set_rate(1.0, 2.0)  # one second at 0.25 -> -0.25
    assert bucket.delay(2.0) == pytest.approx(0.25)


def test_refill_during_started_work_counts_against_its_charge() -> None:
    """A step longer than capacity / rate keeps what it earned while it ran, instead of losing it to the cap."""
    bucket = TokenBucket(rate=0.5, capacity=0.25, now=0.0)
    bucket.charge(0.25, 0.0)  # level 0
    bucket.start_work(0.0)
    assert bucket.level(0.8) == pytest.approx(0.4)  # above capacity while the work is uncharged
    bucket.charge(1.0, 1.0)
    assert bucket.level(1.0) == pytest.approx(-0.5)
    assert bucket.delay(1.0) == pytest.approx(1.0)


def test_without_started_work_the_refill_is_capped() -> None:
    bucket = TokenBucket(rate=0.5, capacity=0.25, now=0.0)
    bucket.charge(0.25, 0.0)
    bucket.charge(1.0, 1.0)
    assert bucket.level(1.0) == pytest.approx(-0.75)


def test_the_cap_applies_again_after_the_charge() -> None:
    bucket = TokenBucket(rate=0.5, capacity=0.25, now=0.0)
    bucket.start_work(0.0)
    bucket.charge(0.1, 10.0)
    assert bucket.level(10.0) == pytest.approx(0.25)
    assert bucket.level(20.0) == pytest.approx(0.25)


@pytest.mark.parametrize("rate", [0.0, -0.5, 1.5, math.nan, math.inf])
def test_rejects_a_rate_outside_zero_to_one(rate: float) -> None:
    with pytest.raises(InvalidRequestError, match="share"):
        TokenBucket(rate=rate, capacity=1.0, now=0.0)
    bucket = TokenBucket(rate=0.5, capacity=1.0, now=0.0)
    with pytest.raises(InvalidRequestError, match="share"):
        bucket.set_rate(rate, 1.0)
    assert bucket.rate == 0.5


@pytest.mark.parametrize("capacity", [0.0, -1.0, math.inf, math.nan])
def test_rejects_a_capacity_that_is_not_positive_and_finite(capacity: float) -> None:
    with pytest.raises(InvalidRequestError, match="capacity"):
        TokenBucket(rate=0.5, capacity=capacity, now=0.0)


@pytest.mark.parametrize("seconds", [-0.1, math.nan, math.inf])
def test_rejects_a_bad_charge(seconds: float) -> None:
    bucket = TokenBucket(rate=0.5, capacity=1.0, now=0.0)
    with pytest.raises(InvalidRequestError, match="charged GPU time"):
        bucket.charge(seconds, 0.0)
    assert bucket.level(0.0) == pytest.approx(1.0)


def test_rejects_a_clock_that_goes_backwards_or_is_not_finite() -> None:
    bucket = TokenBucket(rate=0.5, capacity=1.0, now=5.0)
    with pytest.raises(InvalidRequestError, match="backwards"):
        bucket.delay(4.0)
    with pytest.raises(InvalidRequestError, match="finite"):
        bucket.level(math.nan)
    with pytest.raises(InvalidRequestError, match="finite"):
        TokenBucket(rate=0.5, capacity=1.0, now=math.inf)


rates = st.floats(min_value=0.01, max_value=1.0)
steps = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=5.0),  # idle time beyond the delay
        st.floats(min_value=0.0, max_value=3.0),  # wall time the work runs (after start_work)
        st.floats(min_value=0.0, max_value=3.0),  # GPU seconds charged for it
        st.none() | rates,  # a resize while the work runs
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(rate=rates, capacity=st.floats(min_value=0.001, max_value=2.0), schedule=steps)
def test_honouring_delay_never_uses_more_than_the_share_plus_the_bank(
    rate: float, capacity: float, schedule: list[tuple[float, float, float, float | None]]
) -> None:
    bucket = TokenBucket(rate=rate, capacity=capacity, now=0.0)
    now = 0.0
    earned = 0.0  # integral of the rate in force over wall time
    used = 0.0
    for idle, run, charge, new_rate in schedule:
        wait = bucket.delay(now) + idle
        earned += bucket.rate * wait
        now += wait
        # After waiting out the delay the bucket is out of debt, and everything used so far was earned or banked.
        assert bucket.delay(now) <= 1e-6
        assert used <= earned + capacity + EPS
        bucket.start_work(now)
        if new_rate is not None:
            earned += bucket.rate * run / 2
            now += run / 2
            bucket.set_rate(new_rate, now)
            earned += bucket.rate * run / 2
            now += run / 2
        else:
            earned += bucket.rate * run
            now += run
        bucket.charge(charge, now)
        used += charge


@settings(max_examples=200, deadline=None)
@given(rate=rates, capacity=st.floats(min_value=0.001, max_value=2.0), charges=st.lists(st.floats(0.0, 3.0)))
def test_a_busy_caller_gets_its_full_share(rate: float, capacity: float, charges: list[float]) -> None:
    """Back-to-back work that waits exactly `delay()` uses everything it earns: the bucket is not too strict."""
    bucket = TokenBucket(rate=rate, capacity=capacity, now=0.0)
    now = 0.0
    for charge in charges:
        bucket.start_work(now)
        now += charge  # the GPU is busy for the whole step
        bucket.charge(charge, now)
        now += bucket.delay(now)
    used = sum(charges)
    assert used == pytest.approx(capacity - bucket.level(now) + rate * now, abs=1e-6)
    assert bucket.level(now) >= -1e-9
