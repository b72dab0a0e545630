"""`prismn carbon show`: what Prismn believes about a grid now and next, and where each value came from."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import typer
from rich.table import Table

from prismn import geo
from prismn.carbon import CarbonUnavailable, Intensity, WattTimeProvider, default_provider, make_provider
from prismn.carbon.point import as_utc, parse_time, utcnow
from prismn.cli.render import make_console, short_source
from prismn.errors import PrismnError

BARS = " ▏▎▍▌▋▊▉█"


def parse_horizon(text: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+)\s*(h|d)?\s*", text.lower())
    if not m:
        raise PrismnError(f"--forecast {text!r} is not a duration: use e.g. 24h, 48h or 2d")
    return timedelta(hours=int(m.group(1)) * (24 if m.group(2) == "d" else 1))


def bar(value: float, top: float, width: int = 40) -> str:
    """A unicode bar of value/top x width cells, in eighths."""
    eighths = round(max(0.0, value) / top * width * 8) if top > 0 else 0
    return "█" * (eighths // 8) + (BARS[eighths % 8] if eighths % 8 else "")


def _resolve_zone(zone: str | None, city: str | None, provider: object) -> tuple[str, str]:
    if (zone is None) == (city is None):
        raise PrismnError("give exactly one of --zone (e.g. DE) or --city (e.g. 'Berlin')")
    if zone is not None:
        return zone, zone
    row = geo.find_city(city or "")
    if row is None:
        raise PrismnError(f"city {city!r} is unknown: try a larger nearby city, or 'Name, CC' (e.g. 'Paris, FR')")
    where = f"{row['name']}, {row['country']}"
    if isinstance(provider, WattTimeProvider):  # WattTime speaks its own regions
        return provider.region_for(row["lat"], row["lon"]), where
    z = row.get("zone") or row["country"]
    return z, where


def _fmt_point(p: Intensity) -> str:
    span = f"{p.time:%Y-%m-%d %H:%M} UTC, {p.duration_s // 60} min" if p.time and p.duration_s and \
        p.duration_s < 86400 * 2 else (f"year {p.year}" if p.year else "no time")
    est = ", estimated" if p.estimated else ""
    return f"{p.g_per_kwh:.0f} g/kWh ({p.signal}, {p.basis}{est}; {span})"


def _png(path: Path, where: str, now: Intensity, fc: list[Intensity]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise PrismnError("--png needs matplotlib: pip install 'prismn[plot]'") from None
    fig, ax = plt.subplots(figsize=(8, 3.2))
    if fc:
        ax.step([p.time for p in fc], [p.g_per_kwh for p in fc], where="post", label=fc[0].source[:60])
    ax.axhline(now.g_per_kwh, color="grey", ls="--", lw=1, label=f"now: {now.source[:50]}")
    ax.set_ylabel(f"g CO2e/kWh ({now.signal}, {now.basis})")
    ax.set_title(f"Grid carbon intensity, {where}")
    ax.legend(fontsize=7, loc="best")
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def register(app: typer.Typer) -> None:
    carbon_app = typer.Typer(help="Grid carbon intensity: what Prismn believes, and from where.",
                             no_args_is_help=True)
    app.add_typer(carbon_app, name="carbon")

    @carbon_app.command("show")
    def show(
        zone: str | None = typer.Option(None, "--zone", help="Electricity Maps zone (DE, US-CAL-CISO), GB-NG-13, "
                                        "or a WattTime region with --provider watttime."),
        city: str | None = typer.Option(None, "--city", help="A city name ('Berlin' or 'Paris, FR')."),
        forecast: str = typer.Option("24h", "--forecast", help="How far ahead to show (0 for none)."),
        provider: str | None = typer.Option(None, "--provider", help="embedded, electricitymaps, watttime, "
                                            "nationalgrid, replay, or a fallback chain 'electricitymaps,embedded'."),
        replay: list[Path] = typer.Option([], "--replay", help="Hourly export(s) in Electricity Maps' format."),
        at: str | None = typer.Option(None, "--at", help="Replay: the time that counts as now (ISO, UTC)."),
        as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
        png: Path | None = typer.Option(None, "--png", help="Also draw the chart into this PNG (matplotlib)."),
    ) -> None:
        """The value now and the forecast, each naming its source, signal, basis and any fallback."""
        horizon = parse_horizon(forecast)
        try:
            when = parse_time(at) if at else None
        except ValueError:
            raise PrismnError(f"--at {at!r} is not a time: use ISO 8601, e.g. 2023-06-01T12:00") from None
        if when is not None and not replay:
            raise PrismnError("--at only applies to recorded data: add --replay FILE")
        spec = provider or ("replay" if replay else None)
        prov = make_provider(spec, list(replay), when) if spec else default_provider()
        z, where = _resolve_zone(zone, city, prov)
        now = as_utc(when) if when else utcnow()
        try:
            current = prov.latest(z)
        except CarbonUnavailable as e:
            raise PrismnError(f"no carbon intensity for {z}: {e}") from None
        fc: list[Intensity] = []
        fc_error = None
        if horizon:
            try:
                fc = prov.forecast(z, now, now + horizon)
            except CarbonUnavailable as e:
                fc_error = str(e)
        if png is not None:
            _png(png, where, current, fc)
        if as_json:
            print(json.dumps({"zone": z, "where": where, "now": current.to_json(),
                              "forecast": [p.to_json() for p in fc], "forecast_error": fc_error}, indent=1))
            return
        console = make_console()
        label = where if where == z else f"{where} ({z})"
        console.print(f"[bold]{label}[/bold] now: [bold]{_fmt_point(current)}[/bold]")
        console.print(f"  source: {current.source} [{current.provider}]"
                      + (f", fetched {current.fetched_at:%H:%M:%S} UTC" if current.fetched_at else ""))
        for f in current.fallback_from:
            console.print(f"  [yellow]fell back past[/yellow] {f}")
        if fc_error:
            console.print(f"  no forecast: {fc_error}")
        elif fc:
            top = max(p.g_per_kwh for p in fc)
            t = Table(title=f"next {horizon.total_seconds() / 3600:g} h: {short_source(fc[0].source)} [{fc[0].provider}]",
                      show_edge=False, box=None)
            for col in ("UTC", "g/kWh", ""):
                t.add_column(col, justify="right" if col == "g/kWh" else "left")
            for p in fc:
                t.add_row(f"{p.time:%a %H:%M}", f"{p.g_per_kwh:.0f}" + ("*" if p.estimated else " "),
                          bar(p.g_per_kwh, top))
            console.print(t)
            if any(p.estimated for p in fc):
                console.print("  * estimated (a forecast, a modelled value, or a yearly average repeated)")
        if png is not None:
            console.print(f"wrote {png}")
