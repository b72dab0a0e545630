"""`prismn carbon show` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from prismn.cli import app
from prismn.cli.carbon_cmds import bar, parse_horizon
from prismn.errors import PrismnError

from .conftest import FAILURES
from .test_replay_and_chain import write_export

runner = CliRunner()
T = datetime(2023, 3, 1, tzinfo=UTC)


def run(*args: str):
    return runner.invoke(app, ["carbon", "show", *args], catch_exceptions=True)


def test_embedded_json_names_source_signal_basis(monkeypatch):
    monkeypatch.delenv("ELECTRICITYMAPS_API_TOKEN", raising=False)
    r = run("--zone", "DE", "--forecast", "3h", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["now"]["provider"] == "embedded" and out["now"]["signal"] == "average"
    assert out["now"]["source"].startswith("Electricity Maps yearly average")
    assert 3 <= len(out["forecast"]) <= 4 and all(p["estimated"] for p in out["forecast"])


def test_replay_at_a_time_with_forecast_chart(tmp_path):
    f = write_export(tmp_path / "XX.csv", "XX", [100, 400, 200, 300], T)
    r = run("--zone", "XX", "--replay", str(f), "--at", "2023-03-01T01:10", "--forecast", "3h")
    assert r.exit_code == 0, r.output
    assert "400 g/kWh" in r.output and "perfect forecast" in r.output
    lines = [ln for ln in r.output.splitlines() if "█" in ln]
    assert len(lines) == 3 and lines[0].count("█") > lines[1].count("█")  # 400 drawn longer than 200
    js = json.loads(run("--zone", "XX", "--replay", str(f), "--at", "2023-03-01T01:10", "--json").output)
    assert [p["g_per_kwh"] for p in js["forecast"]] == [400, 200, 300]


def test_png(tmp_path):
    pytest.importorskip("matplotlib")
    f = write_export(tmp_path / "XX.csv", "XX", [100, 400, 200, 300], T)
    png = tmp_path / "c.png"
    r = run("--zone", "XX", "--replay", str(f), "--at", "2023-03-01T00:00", "--png", str(png))
    assert r.exit_code == 0, r.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_live_outage_falls_back_and_says_so(fake_api, monkeypatch):
    api = fake_api(lambda req: FAILURES["500"])
    monkeypatch.setenv("ELECTRICITYMAPS_API_TOKEN", "k")
    monkeypatch.setenv("ELECTRICITYMAPS_API_URL", api.url + "/v3")
    out = json.loads(run("--city", "Berlin", "--forecast", "0", "--json").output)
    assert out["zone"] == "DE" and out["now"]["provider"] == "embedded"
    assert "electricitymaps: Electricity Maps server error (500)" in out["now"]["fallback_from"][0]
    assert api.hits() == 1


@pytest.mark.parametrize("args,message", [
    (["--zone", "DE", "--forecast", "soon"], "not a duration"),
    (["--city", "Atlantis"], "city 'Atlantis' is unknown"),
    (["--zone", "DE", "--city", "Berlin"], "exactly one of --zone"),
    (["--zone", "DE", "--at", "2023-01-01"], "--at only applies to recorded data"),
    (["--zone", "NOPE"], "no carbon intensity for NOPE"),
    (["--zone", "DE", "--provider", "watttime,embedded"], "mixes marginal and average"),
])
def test_bad_input_is_one_clear_error(args, message, monkeypatch):
    monkeypatch.delenv("ELECTRICITYMAPS_API_TOKEN", raising=False)
    monkeypatch.setenv("WATTTIME_USER", "u")
    monkeypatch.setenv("WATTTIME_PASSWORD", "p")
    r = run(*args)
    assert r.exit_code != 0 and isinstance(r.exception, PrismnError), r.output
    assert message in str(r.exception) and "\n" not in str(r.exception)


def test_error_is_one_line_without_traceback_from_the_real_cli():
    r = subprocess.run([sys.executable, "-m", "prismn", "carbon", "show", "--zone", "NOPE"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_helpers():
    assert parse_horizon("2d").total_seconds() == 48 * 3600 and parse_horizon("0").total_seconds() == 0
    assert bar(50, 100, 10) == "█████" and bar(0, 100) == "" and len(bar(100, 100, 8)) == 8
