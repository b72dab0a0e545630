"""Great-circle distance, round-trip time estimates, and offline (lat, lon) -> grid zone resolution.

RTT model (research/carbon-and-latency-data.md §5): light in fibre travels at ~204,000 km/s; real
routes are longer than the great circle. A fit of public city-to-city pings gives a median RTT of
~1.86x the direct-fibre RTT, so RTT(d) = 2 * ROUTE_FACTOR * d / V_FIBRE + FIXED_MS. A measured RTT
always wins over this estimate.
"""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass
from functools import cache

import numpy as np

from prismn.data import load

EARTH_RADIUS_KM = 6371.0
V_FIBRE_KM_PER_MS = 204.0  # 204,000 km/s
ROUTE_FACTOR = 1.9
FIXED_MS = 3.0  # last-mile, switching and host stack on both ends
NEAREST_CITY_KM = 150.0  # a point this close to a known city takes that city's grid zone


def haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def haversine_matrix_km(lat_a: np.ndarray, lon_a: np.ndarray, lat_b: np.ndarray, lon_b: np.ndarray) -> np.ndarray:
    """Pairwise great-circle distances, shape (len(a), len(b))."""
    p1, p2 = np.radians(lat_a)[:, None], np.radians(lat_b)[None, :]
    dl = np.radians(lon_b)[None, :] - np.radians(lon_a)[:, None]
    a = np.sin((p2 - p1) / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(a)))


def estimate_rtt_ms(distance_km: float | np.ndarray) -> float | np.ndarray:
    """Round-trip time from distance when no measurement exists (0 km -> FIXED_MS)."""
    return 2.0 * ROUTE_FACTOR * distance_km / V_FIBRE_KM_PER_MS + FIXED_MS


@dataclass(frozen=True)
class Place:
    zone: str | None  # Electricity Maps zone key, when known
    country: str | None  # ISO-3166 alpha-2
    how: str  # how it was resolved, for provenance


@cache
def _cities() -> tuple[np.ndarray, np.ndarray, list[dict]]:
    rows = load("cities.json")
    return np.array([r["lat"] for r in rows]), np.array([r["lon"] for r in rows]), rows


@cache
def _country_polygons() -> list[tuple[str, tuple[float, float, float, float], list[list[list[float]]]]]:
    """(iso2, bbox, rings) for every country polygon; rings are [[lon, lat], ...]."""
    out = []
    for iso2, c in load("countries.json")["countries"].items():
        for poly in c["polygons"]:
            outer = poly[0]
            lons = [p[0] for p in outer]
            lats = [p[1] for p in outer]
            out.append((iso2, (min(lons), min(lats), max(lons), max(lats)), poly))
    return out


def _in_ring(lon: float, lat: float, ring: list[list[float]]) -> bool:
    inside = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def country_at(lat: float, lon: float) -> str | None:
    """ISO alpha-2 of the country whose (simplified) border contains the point, if any."""
    for iso2, (x0, y0, x1, y1), poly in _country_polygons():
        if x0 <= lon <= x1 and y0 <= lat <= y1 and _in_ring(lon, lat, poly[0]):
            if not any(_in_ring(lon, lat, hole) for hole in poly[1:]):
                return iso2
    return None


def nearest_city(lat: float, lon: float) -> tuple[dict, float]:
    lats, lons, rows = _cities()
    d = haversine_matrix_km(np.array([lat]), np.array([lon]), lats, lons)[0]
    i = int(np.argmin(d))
    return rows[i], float(d[i])


def locate(lat: float, lon: float) -> Place:
    """Grid zone (or at least country) of a point, offline: nearby known city, else country border."""
    city, dist = nearest_city(lat, lon)
    if dist <= NEAREST_CITY_KM:
        return Place(city["zone"], city["country"], f"nearest city {city['name']} ({dist:.0f} km)")
    iso2 = country_at(lat, lon)
    if iso2 is not None:
        return Place(None, iso2, "country border")
    return Place(None, None, "no country at this point")


def _fold(text: str) -> str:
    """Case- and accent-insensitive form: 'São Paulo' -> 'sao paulo'."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().strip().lower()


def find_city(name: str) -> dict | None:
    """A known city by name (case- and accent-insensitive; 'Paris' or 'Paris, FR')."""
    key, _, cc = name.partition(",")
    key, cc = _fold(key), cc.strip().upper()
    for row in _cities()[2]:
        if _fold(row["name"]) == key and (not cc or row["country"] == cc):
            return row
    return None
