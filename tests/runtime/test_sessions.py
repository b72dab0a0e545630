"""Bounded KV-cache sessions: max sessions, max context, idle expiry, freed on close/failure."""

from __future__ import annotations

import pytest

from prismn.runtime.sessions import SessionError, SessionLimits, SessionStore


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_max_sessions_refused_with_fix():
    st = SessionStore(SessionLimits(max_sessions=2, max_context=100, idle_timeout_s=60))
    st.open("a", dict)
    st.open("b", dict)
    with pytest.raises(SessionError, match="max 2.*--max-sessions"):
        st.open("c", dict)
    st.close("a")
    st.open("c", dict)
    assert sorted(st.ids()) == ["b", "c"]


def test_context_bounds():
    st = SessionStore(SessionLimits(max_sessions=4, max_context=16))
    with pytest.raises(SessionError, match="allows 16"):
        st.open("a", dict, max_context=17)
    s = st.open("a", dict, max_context=10)
    st.check_step(s, 0, 0, 8)
    st.advance(s, 8)
    st.check_step(s, 1, 8, 2)
    with pytest.raises(SessionError, match="exceed its context of 10"):
        st.check_step(s, 1, 8, 3)


def test_step_order_and_position():
    st = SessionStore()
    s = st.open("a", dict)
    with pytest.raises(SessionError, match="step 1 arrived where step 0"):
        st.check_step(s, 1, 0, 1)
    with pytest.raises(SessionError, match="position 3"):
        st.check_step(s, 0, 3, 1)


def test_idle_expiry_frees_cache():
    clock = Clock()
    st = SessionStore(SessionLimits(max_sessions=2, idle_timeout_s=10), clock=clock)
    a = st.open("a", lambda: object())
    clock.t = 5
    st.open("b", dict)
    clock.t = 12
    assert st.expire() == ["a"] and a.cache is None and "b" in st
    clock.t = 14
    st.get("b")  # touching keeps it alive
    clock.t = 20
    assert st.expire() == []
    clock.t = 30
    assert st.expire() == ["b"] and len(st) == 0


def test_full_store_expires_idle_before_refusing():
    clock = Clock()
    st = SessionStore(SessionLimits(max_sessions=1, idle_timeout_s=10), clock=clock)
    st.open("a", dict)
    clock.t = 11
    st.open("b", dict)  # "a" was idle: freed to make room
    assert st.ids() == ["b"]


def test_bad_and_duplicate_ids():
    st = SessionStore()
    st.open("x", dict)
    with pytest.raises(SessionError, match="already open"):
        st.open("x", dict)
    with pytest.raises(SessionError, match="session id"):
        st.open("bad id with spaces", dict)
    with pytest.raises(SessionError, match="unknown session"):
        st.get("nope")


def test_close_where_frees_on_failure():
    st = SessionStore()
    owner = object()
    st.open("a", dict, client=owner)
    st.open("b", dict, client=object())
    assert st.close_where(lambda s: s.attrs["client"] is owner) == ["a"]
    assert st.freed_total == 1
