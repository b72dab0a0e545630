"""Grid carbon intensity with provenance, behind one provider interface.

Every value carries where it came from (zone, time, duration, g/kWh, signal, basis, estimated, source,
fetched_at) so that every gram Prismn prints can name its origin. Providers:
- EmbeddedProvider (default, offline): Electricity Maps yearly zone averages, then Ember per country,
  then the world average.
- ElectricityMapsProvider (ELECTRICITYMAPS_API_TOKEN): latest, 24 h history / past-range, forecast.
- WattTimeProvider (WATTTIME_USERNAME/WATTTIME_PASSWORD, `watttime` client): marginal MOER.
- NationalGridProvider (no key): Great Britain, national and regional, half-hourly.
- ReplayProvider: recorded hourly files in Electricity Maps' export format.
- FileProvider: a JSON file of zone -> g/kWh (or hourly points) an operator or a script rewrites.
- ChainProvider: the first provider that answers wins; signals never mix.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from prismn.carbon.base import BaseProvider, CarbonProvider
from prismn.carbon.chain import ChainProvider, check_one_signal
from prismn.carbon.electricitymaps import ElectricityMapsProvider
from prismn.carbon.embedded import EmbeddedProvider
from prismn.carbon.file import FileProvider
from prismn.carbon.nationalgrid import NationalGridProvider
from prismn.carbon.point import (
    LBS_PER_MWH_TO_G_PER_KWH,
    CarbonConfigError,
    CarbonUnavailable,
    Intensity,
    IntensityPoint,
    user_supplied,
)
from prismn.carbon.replay import ReplayProvider
from prismn.carbon.watttime import WattTimeProvider

PROVIDERS = ("embedded", "electricitymaps", "watttime", "nationalgrid", "replay", "file")

__all__ = [
    "LBS_PER_MWH_TO_G_PER_KWH", "PROVIDERS", "BaseProvider", "CarbonConfigError", "CarbonProvider",
    "CarbonUnavailable", "ChainProvider", "ElectricityMapsProvider", "EmbeddedProvider", "FileProvider", "Intensity",
    "IntensityPoint", "NationalGridProvider", "ReplayProvider", "WattTimeProvider", "check_one_signal",
    "default_provider", "make_provider", "user_supplied",
]


def default_provider() -> CarbonProvider:
    """Embedded data, with Electricity Maps in front when a key is in the environment."""
    embedded = EmbeddedProvider()
    if os.environ.get("ELECTRICITYMAPS_API_TOKEN"):
        return ChainProvider([ElectricityMapsProvider(), embedded])
    return embedded


def make_provider(spec: str, replay: list[str | Path] | None = None, at: datetime | None = None) -> CarbonProvider:
    """'electricitymaps,embedded' -> a chain in that order; one name -> that provider alone."""
    names = [n.strip().lower() for n in spec.split(",") if n.strip()]
    built: list[CarbonProvider] = []
    for n in names:
        if n == "embedded":
            built.append(EmbeddedProvider())
        elif n == "electricitymaps":
            built.append(ElectricityMapsProvider())
        elif n == "watttime":
            built.append(WattTimeProvider())
        elif n == "nationalgrid":
            built.append(NationalGridProvider())
        elif n == "replay":
            tables = [f for f in replay or [] if Path(f).suffix != ".json"]
            if not tables:
                raise CarbonConfigError("the replay provider needs files: add --replay FILE (an hourly export)")
            built.append(ReplayProvider(tables, at=at))
        elif n == "file":
            jsons = [f for f in replay or [] if Path(f).suffix == ".json"]
            if len(jsons) != 1:
                raise CarbonConfigError("the file provider reads one JSON file: name it once, e.g. "
                                        "--carbon-file intensities.json")
            built.append(FileProvider(jsons[0]))
        else:
            raise CarbonConfigError(f"unknown carbon provider {n!r}: use one or more of {', '.join(PROVIDERS)}")
    if not built:
        raise CarbonConfigError(f"no carbon provider named: use one or more of {', '.join(PROVIDERS)}")
    return built[0] if len(built) == 1 else ChainProvider(built)
