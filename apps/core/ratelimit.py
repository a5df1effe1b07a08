"""Login throttling: failed attempts are counted per username and per client address in the shared cache.

Each counter lives for a fixed window from its first failure. Once either counter reaches the limit, every
attempt for that username or from that address is refused until the window passes, even with the right password.
"""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.core.cache import cache

_KEY_PREFIX = "login-failures"


def _limit() -> tuple[int, int]:
    config = settings.LOGIN_RATE_LIMIT
    return int(config["attempts"]), int(config["window_seconds"])


def _keys(*, username: str | None, ip: str | None) -> list[str]:
    # Hashed so any submitted username makes a safe cache key; case-folded so "Alice" and "alice" share a counter.
    keys = []
    if username:
        digest = hashlib.sha256(username.strip().casefold().encode()).hexdigest()
        keys.append(f"{_KEY_PREFIX}:user:{digest}")
    if ip:
        keys.append(f"{_KEY_PREFIX}:ip:{ip}")
    return keys


def login_blocked(*, username: str | None, ip: str | None) -> bool:
    attempts, _ = _limit()
    counts = cache.get_many(_keys(username=username, ip=ip))
    return any(int(count) >= attempts for count in counts.values())


def login_failure_record(*, username: str | None, ip: str | None) -> None:
    _, window = _limit()
    for key in _keys(username=username, ip=ip):
        # add() starts the window only on the first failure; incr() keeps the key's expiry.
        cache.add(key, 0, timeout=window)
        try:
            cache.incr(key)
        except ValueError:  # the window expired between add() and incr()
            cache.set(key, 1, timeout=window)


def login_failures_clear(*, username: str | None) -> None:
    """Forget a username's failures after a successful login; the address counter keeps running."""
    cache.delete_many(_keys(username=username, ip=None))
