"""Claims (batchrun.engines.ray.claims): each fingerprint is sent by the one batch holding it."""

from __future__ import annotations

from batchrun.engines.ray.claims import Claims


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


def test_the_claims_of_a_worker_not_seen_for_stale_s_are_released() -> None:
    # A worker died holding claims and Ray did not retry its batch: the waiter must not
    # wait forever, but a live holder (seen while it works) keeps its claims.
    now = [0.0]
    claims = Claims(stale_s=140.0, clock=lambda: now[0])
    claims.claim("a+1", ["x"], "worker-a")
    claims.claim("b+1", ["y"], "worker-b")
    assert claims.claim("c+1", ["x", "y"], "worker-c") == ["x", "y"]
    for _ in range(3):  # worker b keeps working; a is gone
        now[0] += 100.0
        claims.alive("worker-b")
        claims.alive("worker-c")
    assert claims.held_by_others("c+1", ["x", "y"]) == ["y"]
    assert "a+1" not in claims.held and "x" not in claims.holder


def test_a_retried_batch_keeps_its_claims_under_its_new_worker() -> None:
    now = [0.0]
    claims = Claims(stale_s=140.0, clock=lambda: now[0])
    claims.claim("a+1", ["x"], "worker-a")
    now[0] += 100.0
    assert claims.claim("a+1", ["x"], "worker-b") == []  # Ray retried it on worker b
    now[0] += 100.0
    assert claims.held_by_others("c+1", ["x"]) == ["x"]  # b was seen 100 s ago
