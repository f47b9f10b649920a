"""The exit code in words: what the person on call reads first."""

from __future__ import annotations

from batchrun.engines.reason import Outcome, exit_reason


def test_failed_rows_over_the_limit_name_the_limit_and_the_cut_off_answers() -> None:
    outcome = Outcome(
        exit_code=1,
        stopped=None,
        rows=300,
        by_status={"ok": 255, "error": 45},
        by_error_type={"parse_error": 45},
        max_failed_rows=5,
        cut_off=45,
        max_completion_tokens=64,
    )

    assert exit_reason(outcome) == (
        "exit 1: 45 failed rows > limits.max_failed_rows = 5 (parse_error 45: the answers"
        " were cut off at max_completion_tokens = 64)"
    )


def test_failed_rows_within_the_limit_say_so_most_common_type_first() -> None:
    outcome = Outcome(
        exit_code=0,
        stopped=None,
        rows=10,
        by_status={"ok": 7, "error": 2, "invalid": 1},
        by_error_type={"invalid_row": 1, "server_error": 2},
        max_failed_rows=5,
    )

    assert exit_reason(outcome) == (
        "exit 0: 3 failed rows <= limits.max_failed_rows = 5 (server_error 2, invalid_row 1)"
    )


def test_a_signal_and_the_budget_say_how_many_rows_wait_and_what_to_do() -> None:
    interrupted = Outcome(130, "interrupted", 10, {"ok": 4, "pending": 6}, signal="SIGTERM")
    budget = Outcome(3, "budget", 10, {"ok": 4, "pending": 6}, max_cost_usd=0.5, run_cost_usd=0.49)

    assert exit_reason(interrupted) == (
        "exit 130: interrupted by SIGTERM, 6 rows pending; run the same command again to continue"
    )
    assert exit_reason(budget) == (
        "exit 3: stopped by the budget, limits.max_cost_usd = 0.5 reached (this run spent"
        " $0.4900), 6 rows pending; raise it and run the same command again to continue"
    )
