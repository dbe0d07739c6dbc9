"""narrow: a refused batch write is retried on halves down to the rows that cause it."""

from __future__ import annotations

from collections.abc import Sequence

import pymysql
import pytest

from agents.narrow import REFUSED_OPERATIONAL_CODES, describe, is_refusal, narrow


class Table:
    """Refuses a write holding any poisoned value, like a multi-row INSERT refused for one row."""

    def __init__(self, poison: set[int]) -> None:
        self.poison = poison
        self.rows: set[int] = set()
        self.calls = 0

    async def write(self, items: Sequence[int]) -> None:
        self.calls += 1
        bad = self.poison.intersection(items)
        if bad:
            raise pymysql.err.DataError(1406, f"Data too long for column 'x' at row {min(bad)}")
        self.rows.update(items)


async def test_the_poisoned_items_are_found_and_the_others_written() -> None:
    table = Table({3, 11})
    refused = await narrow(list(range(16)), table.write)
    assert [item for item, _ in refused] == [3, 11]
    assert all(isinstance(exc, pymysql.err.DataError) for _, exc in refused)
    assert table.rows == set(range(16)) - {3, 11}
    assert table.calls < 16  # halves, not one statement per row


async def test_a_clean_batch_is_written_in_one_call() -> None:
    table = Table(set())
    assert await narrow([1, 2, 3], table.write) == []
    assert table.calls == 1


async def test_nothing_to_write_calls_nothing() -> None:
    table = Table(set())
    assert await narrow([], table.write) == []
    assert table.calls == 0


async def test_an_outage_is_not_narrowed_but_raised_for_the_guard_to_retry() -> None:
    calls = []

    async def down(items: Sequence[int]) -> None:
        calls.append(list(items))
        raise pymysql.err.OperationalError(2003, "Can't connect to MySQL server")

    with pytest.raises(pymysql.err.OperationalError):
        await narrow([1, 2, 3, 4], down)
    assert calls == [[1, 2, 3, 4]]


async def test_a_bug_is_not_narrowed() -> None:
    async def bug(items: Sequence[int]) -> None:
        raise KeyError("oops")

    with pytest.raises(KeyError):
        await narrow([1, 2], bug)


async def test_a_batch_too_large_as_a_whole_succeeds_in_halves() -> None:
    written: list[list[int]] = []

    async def packet_limit(items: Sequence[int]) -> None:
        if len(items) > 2:
            raise pymysql.err.OperationalError(1153, "Got a packet bigger than 'max_allowed_packet' bytes")
        written.append(list(items))

    assert await narrow([1, 2, 3, 4, 5], packet_limit) == []
    assert sorted(i for part in written for i in part) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize(
    ("exc", "refused"),
    [
        (pymysql.err.DataError(1406, "Data too long"), True),
        (pymysql.err.IntegrityError(1048, "Column 'x' cannot be null"), True),
        (pymysql.err.OperationalError(1153, "packet too large"), True),
        (pymysql.err.OperationalError(1366, "Incorrect string value"), True),
        (pymysql.err.OperationalError(2013, "Lost connection"), False),
        (pymysql.err.OperationalError(1205, "Lock wait timeout"), False),
        (pymysql.err.OperationalError(), False),
        (pymysql.err.InterfaceError(0, ""), False),
        (pymysql.err.ProgrammingError(1064, "syntax"), False),
        (ValueError("x"), False),
    ],
)
def test_what_counts_as_the_database_refusing_the_data(exc: BaseException, refused: bool) -> None:
    assert is_refusal(exc) is refused


def test_the_refusal_codes_are_the_servers_own() -> None:
    from pymysql.constants import ER

    named = {
        ER.TOO_BIG_ROWSIZE,
        ER.NET_PACKET_TOO_LARGE,
        ER.WARN_ALLOWED_PACKET_OVERFLOWED,
        ER.TRUNCATED_WRONG_VALUE_FOR_FIELD,
        ER.CONSTRAINT_FAILED,
        3140,  # ER_INVALID_JSON_TEXT (MySQL 5.7+; pymysql has no name for it)
    }
    assert named == REFUSED_OPERATIONAL_CODES
    for code in named:
        assert is_refusal(pymysql.err.OperationalError(code, "refused"))
    assert not is_refusal(pymysql.err.OperationalError(2013, "Lost connection to MySQL server"))


def test_describe_names_the_error_and_cuts_it() -> None:
    assert describe(ValueError("bad row")) == "ValueError: bad row"
    assert describe(ValueError("x" * 500)) == "ValueError: " + "x" * 288
    assert len(describe(ValueError("x" * 500), limit=20)) == 20
