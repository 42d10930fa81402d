from __future__ import annotations

import pytest

from tidings.core.protocol.codes import (
    DISCONNECT_REASONS,
    ERROR_MESSAGES,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    ReplyError,
    reconnects,
)


def test_every_code_has_its_documented_text() -> None:
    assert set(ERROR_MESSAGES) == set(ErrorCode)
    assert set(DISCONNECT_REASONS) == set(DisconnectCode)
    assert ReplyError.of(ErrorCode.UNRECOVERABLE_POSITION) == ReplyError(
        112, "unrecoverable position", False
    )
    assert ReplyError.of(ErrorCode.INTERNAL).temporary
    assert Disconnect.of(DisconnectCode.SLOW) == Disconnect(3008, "slow")


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (3000, True),
        (3012, True),
        (3499, True),
        (3500, False),
        (3999, False),
        (4000, True),
        (4499, True),
        (4500, False),
        (4999, False),
        (1001, True),
    ],
)
def test_reconnect_ranges(code: int, expected: bool) -> None:
    assert reconnects(code) is expected
    assert Disconnect(code, "x").reconnect is expected


def test_terminal_codes_are_3500_and_up() -> None:
    for code in DisconnectCode:
        assert Disconnect.of(code).reconnect is (code < 3500)
