"""`citystream rights` refuses an empty identifier before it connects to anything."""

from __future__ import annotations

import pytest

from citystream.cli import main


@pytest.mark.parametrize(
    "argv",
    [
        ["rights", "opt-out", "--case", "  "],
        ["rights", "opt-out", "--field", "request_id", "--value", ""],
        ["rights", "access", "--case", ""],
        ["rights", "erase", "--case", " "],
    ],
)
def test_an_empty_identifier_is_refused(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--bootstrap-servers", "127.0.0.1:1"]) == 2
    assert "empty identifier" in capsys.readouterr().err


def test_opt_out_needs_a_case_or_a_value() -> None:
    with pytest.raises(SystemExit):
        main(["rights", "opt-out", "--field", "request_id"])
