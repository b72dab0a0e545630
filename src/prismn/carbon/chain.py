"""Providers in order with fallback; a chain of one signal only (marginal and average never mix)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from prismn.carbon.base import BaseProvider, CarbonProvider
from prismn.carbon.point import CarbonConfigError, CarbonUnavailable, Intensity


def check_one_signal(providers: list[CarbonProvider]) -> str:
    signals = {getattr(p, "signal", "average") for p in providers}
    if len(signals) > 1:
        parts = ", ".join(f"{p.name}={getattr(p, 'signal', 'average')}" for p in providers)
        raise CarbonConfigError(
            f"provider chain mixes marginal and average signals ({parts}): chain providers of one signal "
            f"only, e.g. 'watttime' alone or 'electricitymaps,embedded'"
        )
    return signals.pop() if signals else "average"


class ChainProvider(BaseProvider):
    """Ask providers in order; the first that answers wins, and its answer lists who failed before it."""

    name = "chain"

    def __init__(self, providers: list[CarbonProvider]):
        if not providers:
            raise CarbonConfigError("an empty provider chain answers nothing: name at least one provider")
        self.signal = check_one_signal(providers)
        self.providers = providers

    def _first(self, ask: Callable[[CarbonProvider], object], zone: str, what: str):  # type: ignore[no-untyped-def]
        failed: list[str] = []
        for p in self.providers:
            try:
                out = ask(p)
            except CarbonUnavailable as e:
                failed.append(f"{p.name}: {e}")
                continue
            if out is None or out == []:
                failed.append(f"{p.name}: no {what} for {zone}")
                continue
            return out, tuple(failed)
        raise CarbonUnavailable(f"no provider has {what} for {zone} ({'; '.join(failed)})")

    def zone_intensity(self, zone: str) -> Intensity | None:
        # zone_intensity: a provider answering None means "not my zone" (e.g. embedded's unknown zone)
        try:
            v, failed = self._first(lambda p: p.zone_intensity(zone), zone, "a value")
        except CarbonUnavailable:
            return None
        return replace(v, fallback_from=failed) if failed else v

    def latest(self, zone: str) -> Intensity:
        v, failed = self._first(lambda p: p.latest(zone), zone, "a latest value")
        return replace(v, fallback_from=failed) if failed else v

    def forecast(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        vs, failed = self._first(lambda p: p.forecast(zone, start, end), zone, "a forecast")
        return [replace(v, fallback_from=failed) for v in vs] if failed else vs

    def history(self, zone: str, start: datetime, end: datetime) -> list[Intensity]:
        vs, failed = self._first(lambda p: p.history(zone, start, end), zone, "a history")
        return [replace(v, fallback_from=failed) for v in vs] if failed else vs
