"""bench/inference.py: the "turns" overhead pairs each node run with the bare run beside it, so
one disturbed run moves it less than the ratio of the fastest runs."""

from __future__ import annotations

import statistics

import pytest

from tests.bench.test_ingest_bench import _load


def test_each_turn_is_its_node_run_against_its_own_bare_run() -> None:
    inference = _load("inference")
    turns = inference.turn_overheads([1.1, 2.4, 1.2], [1.0, 1.2, 1.0])
    assert turns == pytest.approx((0.1, 1.0, 0.2))
    # one stalled node run (2.4 s) moves the median of the turns by a little...
    assert statistics.median(turns) == pytest.approx(0.2)
    # ...and a bare run with no measured CPU gives no ratio instead of a division by zero
    assert inference.turn_overheads([1.0, 1.0], [0.0, 0.5]) == pytest.approx((1.0,))
    with pytest.raises(ValueError):  # turns come in pairs
        inference.turn_overheads([1.0, 1.0], [1.0])
