"""Replay of recorded hourly exports, the embedded provider's hourly view, and chain rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from prismn.carbon import (
    CarbonUnavailable,
    ChainProvider,
    EmbeddedProvider,
    ReplayProvider,
    default_provider,
    make_provider,
)
from prismn.carbon.point import CarbonConfigError
from prismn.errors import PrismnError

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "carbon_intensity" / "electricitymaps_hourly"
HEADER = ("Datetime (UTC),Country,Zone Name,Zone Id,Carbon Intensity gCO₂eq/kWh (direct),"
          "Carbon Intensity gCO₂eq/kWh (LCA),Low Carbon Percentage,Renewable Percentage,Data Source,"
          "Data Estimated,Data Estimation Method\n")


def write_export(path: Path, zone: str, values: list[float], start: datetime, estimated_at: int = -1) -> Path:
    lines = [HEADER]
    for i, v in enumerate(values):
        t = (start + timedelta(hours=i)).strftime("%Y-%m-%d %H:%M:%S")
        est = "true" if i == estimated_at else "false"
        lines.append(f"{t},X,X,{zone},{v / 2},{v},50,40,test,{est},\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


T = datetime(2023, 3, 1, tzinfo=UTC)


def test_replay_latest_at_a_time_history_and_forecast(tmp_path):
    f = write_export(tmp_path / "XX_2023_hourly.csv", "XX", [100, 200, 300, 400], T, estimated_at=2)
    p = ReplayProvider([f], at=T + timedelta(hours=1, minutes=40))
    v = p.latest("XX")
    assert (v.g_per_kwh, v.time, v.duration_s, v.basis, v.provider) == (200, T + timedelta(hours=1), 3600,
                                                                       "lifecycle", "replay")
    assert "XX_2023_hourly.csv" in v.source
    fc = p.forecast("XX", T + timedelta(hours=1, minutes=30), T + timedelta(hours=4))
    assert [x.g_per_kwh for x in fc] == [200, 300, 400] and fc[1].estimated and "perfect forecast" in fc[0].source
    assert [x.g_per_kwh for x in ReplayProvider([tmp_path], basis="direct").history("XX", T, T + timedelta(hours=2))] \
        == [50, 100]
    with pytest.raises(CarbonUnavailable, match="no recorded hour"):
        ReplayProvider([f], at=T + timedelta(days=3)).latest("XX")
    with pytest.raises(CarbonUnavailable, match="hold no zone 'DE'"):
        p.latest("DE")


def test_replay_bad_files_are_one_clear_line(tmp_path):
    with pytest.raises(PrismnError, match="does not exist"):
        ReplayProvider([tmp_path / "nope.csv"])
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(PrismnError, match="not an Electricity Maps hourly export"):
        ReplayProvider([bad])


def test_missing_hours_are_never_invented(tmp_path):
    f = write_export(tmp_path / "a.csv", "XX", [100, 200], T)
    text = f.read_text().splitlines(keepends=True)
    f.write_text(text[0] + text[1] + text[2].replace(",200,50,", ",,50,"))  # LCA value of hour 1 missing
    p = ReplayProvider([f], at=T + timedelta(hours=1))
    with pytest.raises(CarbonUnavailable):
        p.latest("XX")


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data (recorded Electricity Maps exports) is absent")
def test_replays_the_real_recorded_exports():
    p = ReplayProvider([SHARED / "DE-LU_2023_hourly.csv", SHARED / "DE-LU_2024_hourly.csv"],
                       at=datetime(2023, 6, 1, 12, tzinfo=UTC))
    assert p.zones() == ["DE"]  # the folder is DE-LU, the zone id is DE
    s = p.series["DE"]
    assert len(s.times) == 8760 + 8784
    noon = p.latest("DE")
    assert 20 < noon.g_per_kwh < 1000 and noon.time == datetime(2023, 6, 1, 12, tzinfo=UTC)
    day = p.history("DE", datetime(2023, 6, 1, tzinfo=UTC), datetime(2023, 6, 2, tzinfo=UTC))
    assert len(day) == 24 and max(d.g_per_kwh for d in day) > 1.2 * min(d.g_per_kwh for d in day)


def test_embedded_hourly_view_repeats_the_yearly_average_flagged_estimated():
    e = EmbeddedProvider()
    base = e.latest("DE")
    fc = e.forecast("DE", T, T + timedelta(hours=3))
    assert [f.g_per_kwh for f in fc] == [base.g_per_kwh] * 3 and all(f.estimated for f in fc)
    assert fc[0].time == T and fc[0].duration_s == 3600
    assert e.yearly("DE", 2023) == 379.0 and e.yearly("DE", 1990) is None
    with pytest.raises(CarbonUnavailable):
        e.latest("NOT-A-ZONE")


def test_existing_lookups_keep_working(monkeypatch):
    monkeypatch.delenv("ELECTRICITYMAPS_API_TOKEN", raising=False)
    p = default_provider()
    assert isinstance(p, EmbeddedProvider) and p.zone_intensity("NOT-A-ZONE") is None
    v = p.zone_intensity("FR")
    assert v.signal == "average" and "Electricity Maps" in v.source and v.to_json()["time"].startswith(str(v.year))
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "k")
    assert isinstance(default_provider(), ChainProvider)


def test_chain_rules():
    with pytest.raises(CarbonConfigError, match="empty"):
        ChainProvider([])
    with pytest.raises(CarbonConfigError, match="unknown carbon provider 'nope'"):
        make_provider("nope")
    with pytest.raises(CarbonConfigError, match="--replay"):
        make_provider("replay")
    with pytest.raises(CarbonUnavailable, match="no provider has a latest value"):
        ChainProvider([EmbeddedProvider()]).latest("NOT-A-ZONE")


def test_parquet_export_reads_like_the_csv(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet replay needs pyarrow (optional)")
    import csv

    import pyarrow as pa

    f = write_export(tmp_path / "XX.csv", "XX", [100, 200], T)
    with f.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "XX.parquet")
    p = ReplayProvider([tmp_path / "XX.parquet"], at=T + timedelta(hours=1))
    assert p.latest("XX").g_per_kwh == 200
