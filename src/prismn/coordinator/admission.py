"""Admission control for one deployment: how many requests run at once, and who waits.

A request reserves the KV cache it may fill (prompt + max_tokens) on every stage. It runs at once
while the deployment has a session slot and enough of its KV budget left; otherwise it waits in a
bounded first-come-first-served queue; past that bound, or after waiting too long, it is refused with
429 and a Retry-After (never a failure deep in the pipeline). A request that leaves while queued
(client gone, timeout) takes its place with it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from prismn.errors import PrismnError


class Busy(PrismnError):
    """The deployment is full and its queue too (or the wait ran out): retry after ``retry_after_s``."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class TooLarge(PrismnError):
    """The request alone needs more KV cache than the deployment can ever hold."""


@dataclass
class _Waiter:
    tokens: int
    granted: asyncio.Future[None]


class Admission:
    def __init__(self, max_sessions: int, kv_tokens: int, max_queue: int, wait_s: float, what: str = "deployment"):
        self.max_sessions = max(1, int(max_sessions))
        self.kv_tokens = max(1, int(kv_tokens))
        self.max_queue = max(0, int(max_queue))
        self.wait_s = float(wait_s)
        self.what = what
        self.active = 0
        self.reserved = 0
        self._queue: collections.deque[_Waiter] = collections.deque()

    @property
    def waiting(self) -> int:
        return len(self._queue)

    def _fits(self, tokens: int) -> bool:
        return self.active < self.max_sessions and self.reserved + tokens <= self.kv_tokens

    def _grant(self, tokens: int) -> None:
        self.active += 1
        self.reserved += tokens

    def _release(self, tokens: int) -> None:
        self.active -= 1
        self.reserved -= tokens
        while self._queue and self._fits(self._queue[0].tokens):  # first come, first served
            w = self._queue.popleft()
            if not w.granted.done():
                self._grant(w.tokens)
                w.granted.set_result(None)

    def full(self, tokens: int) -> bool:
        """Would a request of ``tokens`` be refused right now (no room and no place in the queue)?"""
        return not (not self._queue and self._fits(tokens)) and len(self._queue) >= self.max_queue

    def retry_after(self) -> int:
        return max(1, min(60, int(self.wait_s // 4) or 1))

    @contextlib.asynccontextmanager
    async def slot(self, tokens: int) -> AsyncIterator[None]:
        """Hold a session and ``tokens`` of KV budget for the body of the ``async with``."""
        tokens = max(1, int(tokens))
        if tokens > self.kv_tokens:
            raise TooLarge(f"this request may hold {tokens} tokens of context but the {self.what}'s stages can "
                           f"hold {self.kv_tokens} in all: lower max_tokens or shorten the prompt")
        if not self._queue and self._fits(tokens):
            self._grant(tokens)
        else:
            if len(self._queue) >= self.max_queue:
                raise Busy(f"the {self.what} is busy: {self.active} requests running and {len(self._queue)} "
                           "queued (the queue is full); retry shortly", self.retry_after())
            w = _Waiter(tokens, asyncio.get_running_loop().create_future())
            self._queue.append(w)
            try:
                await asyncio.wait_for(asyncio.shield(w.granted), self.wait_s)
            except BaseException as e:
                if w.granted.done() and not w.granted.cancelled():
                    self._release(tokens)  # granted just as we gave up: hand it on
                else:
                    w.granted.cancel()
                    with contextlib.suppress(ValueError):
                        self._queue.remove(w)
                if isinstance(e, TimeoutError):
                    raise Busy(f"the {self.what} stayed busy for {self.wait_s:.0f} s with {self.active} requests "
                               "running; retry shortly", self.retry_after()) from None
                raise
        try:
            yield
        finally:
            self._release(tokens)
