"""What every live provider shares: a TTL cache, and a backoff that skips a failing source instead of
waiting for it (an outage must never block a request: the chain answers from the next provider)."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from typing import Any

import httpx

from prismn.carbon.point import CarbonUnavailable

Clock = Callable[[], float]


class TTLCache:
    """key -> value for ttl_s seconds (monotonic clock, injectable for tests)."""

    def __init__(self, ttl_s: float, clock: Clock = time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self._d: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any | None:
        hit = self._d.get(key)
        if hit is None or self.clock() - hit[0] >= self.ttl_s:
            return None
        return hit[1]

    def put(self, key: Any, value: Any) -> None:
        self._d[key] = (self.clock(), value)


def retry_after_s(value: str | None) -> float | None:
    """Retry-After is either seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class Backoff:
    """After a failure the source is skipped until `blocked_until`: Retry-After when the server gave one,
    else base_s doubling per consecutive failure up to max_s (codecarbon's 30 s .. 1 h pattern)."""

    def __init__(self, name: str, base_s: float = 30.0, max_s: float = 3600.0, clock: Clock = time.monotonic):
        self.name, self.base_s, self.max_s, self.clock = name, base_s, max_s, clock
        self.failures = 0
        self.blocked_until = 0.0
        self.last_reason = ""

    def check(self) -> None:
        left = self.blocked_until - self.clock()
        if left > 0:
            raise CarbonUnavailable(f"{self.name} backing off {left:.0f} s more after: {self.last_reason}")

    def fail(self, reason: str, wait_s: float | None = None) -> None:
        self.failures += 1
        if wait_s is None:
            wait_s = min(self.max_s, self.base_s * 2 ** (self.failures - 1))
        self.blocked_until = self.clock() + wait_s
        self.last_reason = reason

    def ok(self) -> None:
        self.failures = 0
        self.blocked_until = 0.0


def classify(status: int, headers: httpx.Headers | dict, key_hint: str) -> tuple[str, float | None, bool]:
    """(reason, wait override, back off?) for a non-2xx answer."""
    if status == 429:
        ra = retry_after_s(headers.get("retry-after") if headers else None)
        return f"rate limited (429{f', Retry-After {ra:.0f} s' if ra is not None else ''})", ra, True
    if status == 401:
        return f"rejected the credentials (401): check {key_hint}", None, True
    if status == 403:  # e.g. an endpoint or zone outside the key's plan: other calls may still work
        return f"refused this endpoint or zone for the key (403): check the plan of {key_hint}", None, False
    if status >= 500:
        return f"server error ({status})", None, True
    return f"refused the request ({status})", None, False  # e.g. unknown zone: no point backing off


class HttpJson:
    """GET JSON through httpx with a timeout and a Backoff; every failure is a CarbonUnavailable."""

    def __init__(self, name: str, key_hint: str, client: httpx.Client | None = None, timeout_s: float = 5.0,
                 backoff: Backoff | None = None):
        self.name, self.key_hint = name, key_hint
        self.client = client or httpx.Client(timeout=timeout_s)
        self.timeout_s = timeout_s
        self.backoff = backoff or Backoff(name)

    def get(self, url: str, params: dict | None = None, headers: dict | None = None) -> Any:
        self.backoff.check()
        try:
            r = self.client.get(url, params=params, headers=headers, timeout=self.timeout_s)
        except httpx.TimeoutException:
            self.backoff.fail(f"no answer within {self.timeout_s:g} s")
            raise CarbonUnavailable(f"{self.name}: no answer within {self.timeout_s:g} s") from None
        except httpx.HTTPError as e:
            self.backoff.fail(f"unreachable ({type(e).__name__})")
            raise CarbonUnavailable(f"{self.name}: unreachable ({type(e).__name__})") from None
        if r.status_code != 200:
            reason, wait, back_off = classify(r.status_code, r.headers, self.key_hint)
            if back_off:
                self.backoff.fail(reason, wait)
            raise CarbonUnavailable(f"{self.name} {reason}")
        try:
            body = r.json()
        except ValueError:
            self.backoff.fail("answered malformed JSON")
            raise CarbonUnavailable(f"{self.name} answered malformed JSON") from None
        self.backoff.ok()
        return body


def shape_error(name: str, what: str) -> CarbonUnavailable:
    return CarbonUnavailable(f"{name} answered an unexpected shape ({what}): the API may have changed")
