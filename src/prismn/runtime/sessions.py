"""Per-session KV caches on a stage, bounded: max sessions, max context per session, idle expiry.

A session is one generation. Its cache is freed when the client closes it, when a step fails, when
the client's connection drops, or when it sits idle longer than ``idle_timeout_s``. No torch here:
the cache object comes from a factory the stage provides.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from prismn.errors import PrismnError

SESSION_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class SessionError(PrismnError):
    """A session cannot be opened or used as asked (unknown, full, out of context, out of order)."""


@dataclass(frozen=True)
class SessionLimits:
    max_sessions: int = 64  # sessions batch together; memory is admitted by the coordinator's KV budget
    max_context: int = 4096
    idle_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if self.max_sessions < 1 or self.max_context < 1 or self.idle_timeout_s <= 0:
            raise SessionError("session limits must be positive: check --max-sessions/--max-context/--idle-timeout")


@dataclass
class Session:
    id: str
    cache: Any
    max_context: int
    length: int = 0  # tokens already in this stage's cache
    step: int = 0  # next step number to compute
    queued_step: int = 0  # next step number expected on the wire (steps may wait in the stage's queue)
    queued_length: int = 0  # tokens received so far, computed or queued
    created: float = 0.0
    last_used: float = 0.0
    attrs: dict[str, Any] = field(default_factory=dict)  # server attachments: connections, sampler, ...


class SessionStore:
    def __init__(self, limits: SessionLimits = SessionLimits(), clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self.freed_total = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sid: object) -> bool:
        return sid in self._sessions

    def ids(self) -> list[str]:
        return list(self._sessions)

    def open(self, sid: str, cache_factory: Callable[[], Any], max_context: int | None = None,
             **attrs: Any) -> Session:
        if not isinstance(sid, str) or not SESSION_ID.match(sid):
            raise SessionError("session id must be 1-128 characters of letters, digits, '_.:-'")
        if sid in self._sessions:
            raise SessionError(f"session {sid} is already open on this stage: use a fresh session id")
        ctx = self.limits.max_context if max_context is None else int(max_context)
        if ctx < 1:
            raise SessionError("max_context must be at least 1 token")
        if ctx > self.limits.max_context:
            raise SessionError(
                f"session asks for {ctx} tokens of context but this stage allows {self.limits.max_context}: "
                "shorten the prompt/max_new_tokens or restart the stage with a larger --max-context"
            )
        self.expire()
        if len(self._sessions) >= self.limits.max_sessions:
            raise SessionError(
                f"stage is full: {len(self._sessions)} sessions open (max {self.limits.max_sessions}); "
                "retry later or restart the stage with a larger --max-sessions"
            )
        now = self.clock()
        s = Session(sid, cache_factory(), ctx, created=now, last_used=now, attrs=dict(attrs))
        self._sessions[sid] = s
        return s

    def get(self, sid: Any) -> Session:
        s = self._sessions.get(sid) if isinstance(sid, str) else None
        if s is None:
            raise SessionError(f"unknown session {sid!r} on this stage (never opened, closed or expired)")
        s.last_used = self.clock()
        return s

    def peek(self, sid: Any) -> Session | None:
        return self._sessions.get(sid) if isinstance(sid, str) else None

    def check_step(self, s: Session, step: Any, pos: Any, n_new: int) -> None:
        """The step must be the next one received, follow the tokens received so far, and fit the
        session's context."""
        if step != s.queued_step:
            raise SessionError(f"session {s.id}: step {step!r} arrived where step {s.queued_step} was expected")
        if pos != s.queued_length:
            raise SessionError(f"session {s.id}: position {pos!r} does not follow the cache "
                               f"({s.queued_length} tokens)")
        if s.queued_length + n_new > s.max_context:
            raise SessionError(
                f"session {s.id}: {s.queued_length + n_new} tokens exceed its context of {s.max_context}: "
                "ask for fewer new tokens or a larger context"
            )

    def enqueue(self, s: Session, n_new: int) -> None:
        """A checked step waits in the stage's queue: the next one must follow it."""
        s.queued_step += 1
        s.queued_length += n_new
        s.last_used = self.clock()

    def advance(self, s: Session, n_new: int) -> None:
        s.length += n_new
        s.step += 1
        s.queued_step, s.queued_length = max(s.queued_step, s.step), max(s.queued_length, s.length)
        s.last_used = self.clock()

    def close(self, sid: str) -> Session | None:
        s = self._sessions.pop(sid, None)
        if s is not None:
            s.cache = None  # drop the KV cache now
            self.freed_total += 1
        return s

    def close_where(self, pred: Callable[[Session], bool]) -> list[str]:
        gone = [sid for sid, s in self._sessions.items() if pred(s)]
        for sid in gone:
            self.close(sid)
        return gone

    def expire(self, now: float | None = None) -> list[str]:
        t = self.clock() if now is None else now
        return self.close_where(lambda s: t - s.last_used > self.limits.idle_timeout_s)

    def close_all(self) -> list[str]:
        return self.close_where(lambda s: True)
