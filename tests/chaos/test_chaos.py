"""A short chaos run inside `make test`: daemons and etcd members killed under client load break no invariant.

The long form is `python -m tests.chaos.run --daemons 3 --seconds 60 --seed N`; this one keeps the fault
window short enough for every test run while still killing both kinds of process several times.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.run import run_chaos


@pytest.mark.timeout(420)
def test_short_chaos_run_keeps_every_invariant(tmp_path: Path) -> None:
    result = run_chaos(daemons=2, seconds=25, seed=20240607, base_dir=tmp_path)
    summary = result.summary()
    print(summary)  # shown by pytest on failure, and with -s
    assert result.violations == [], summary
    assert result.clients.acquired > 0, summary
    assert result.clients.released > 0, summary
    assert result.faults["daemon kill -9"] > 0, summary
    assert result.faults["etcd member kill -9"] > 0, summary
    # The checks had something to look at: mid-run samples, and allocations held at the first final check.
    assert result.monitor_samples > 0, summary
    assert result.survivors_live > 0, summary
    assert [label for label, _, _ in result.reports] == ["with the long-lived leases held", "idle"], summary
    assert result.reports[0][1].claims > 0, summary
    assert result.ok, summary
