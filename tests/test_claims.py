"""Claims (batchrun._claims): each fingerprint is sent by the one batch holding it."""

from __future__ import annotations

from batchrun._claims import Claims


def test_a_fingerprint_held_by_one_batch_is_set_aside_by_another_until_released() -> None:
    claims = Claims()
    assert claims.claim("a+1", ["x", "y"]) == []
    assert claims.claim("b+1", ["y", "z"]) == ["y"]
    assert claims.held_by_others("b+1", ["y", "z"]) == ["y"]
    claims.release("a+1")
    assert claims.held_by_others("b+1", ["y"]) == []
    assert claims.claim("c+1", ["x", "z"]) == ["z"]  # z is still b's


def test_a_batch_retried_elsewhere_takes_its_own_claims_over() -> None:
    claims = Claims()
    claims.claim("a+1", ["x"])
    assert claims.claim("a+1", ["x"]) == []  # Ray retried batch a on another worker
    claims.release("a+1")
    assert claims.holder == {} and claims.held == {}
