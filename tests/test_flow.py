from __future__ import annotations

from mcnotify.steps.flow import RateLimiter, Throttle


def test_throttle_halves_on_repeated_429_and_climbs_back_one_at_a_time() -> None:
    t = Throttle(8)
    t.throttled()
    assert t.limit == 8  # a single 429 is left to Retry-After
    t.throttled()
    assert t.limit == 4
    t.throttled()
    assert t.limit == 2
    for _ in range(4 * 2):
        t.succeeded()
    assert t.limit == 3
    for _ in range(1000):
        t.succeeded()
    assert t.limit == 8
    for _ in range(20):
        t.throttled()
    assert t.limit == 1


def test_rate_limiter_sleeps_for_the_deficit() -> None:
    slept: list[float] = []
    limiter = RateLimiter(100.0, slept.append)
    limiter.acquire(100)  # the bucket starts full
    assert slept == []
    limiter.acquire(50)
    assert len(slept) == 1 and 0.45 < slept[0] <= 0.5
    unlimited = RateLimiter(0, slept.append)
    unlimited.acquire(10**6)
    assert len(slept) == 1
