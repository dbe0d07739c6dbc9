"""Lag per partition from committed offsets and the log bounds."""

from __future__ import annotations

from streams.lag import partition_lags


def test_partition_lags_count_from_the_log_start_without_a_commit() -> None:
    rows = partition_lags(
        {("a", 0): 7, ("a", 1): None, ("a", 2): 1},
        {("a", 1): 3, ("a", 2): 5},
        {("a", 0): 9, ("a", 1): 10, ("a", 2): 5},
    )
    assert [(r.partition, r.committed, r.lag) for r in rows] == [(0, 7, 2), (1, 3, 7), (2, 5, 0)]
