"""Rich rendering of evaluated plans: one table of stages per plan, one comparison table."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from prismn.placement import EvaluatedPlan


def _fmt_g(x: float) -> str:
    return f"{x * 1000:.3f} mg" if x < 0.1 else f"{x:.3f} g"


def short_source(source: str) -> str:
    """'Electricity Maps yearly average (via @tgwf/co2 ...)' -> 'Electricity Maps yearly average'."""
    return source.split(" (")[0]


def make_console() -> Console:
    """A console that keeps tables readable when output is piped (Rich assumes 80 columns then)."""
    console = Console()
    if not console.is_terminal:
        console = Console(width=170)
    return console


def plan_label(ev: EvaluatedPlan) -> str:
    """'prismn-hackathon (low-carbon)', 'prismn (latency)', 'petals'."""
    tag = ev.plan.notes.get("preference") or ev.plan.notes.get("objective")
    return ev.plan.strategy + (f" ({tag})" if tag else "")


def plan_table(ev: EvaluatedPlan) -> Table:
    verdict = "[green]feasible[/green]" if ev.feasible else "[red]INFEASIBLE[/red]"
    proof = ev.proof
    proof = f"[green]{proof}[/green]" if proof == "optimal" else f"[yellow]{proof}[/yellow]"
    t = Table(title=f"{ev.plan.strategy} — {ev.plan.model} — {verdict} — {proof}", title_justify="left")
    for col in ("#", "peer", "layers", "emb/head", "GPU", "VRAM used / free GiB", "zone", "grid g/kWh", "source", "ms/token"):
        t.add_column(col, justify="right" if col in ("#", "ms/token", "grid g/kWh") else "left")
    for i, s in enumerate(ev.stages, 1):
        a, b = s["layers"]
        extras = "+".join(x for x, on in (("emb", s["embedding"]), ("head", s["head"])) if on) or "-"
        used = f"{s['vram_used_gb']:.2f} / {s['vram_free_gb']:.2f}"
        if not s["fits"]:
            used = f"[red]{used}[/red]"
        ci = s["intensity"]
        src = f"{short_source(ci['source'])}{' ' + str(ci['year']) if ci['year'] else ''}"
        t.add_row(str(i), s["peer"], f"[{a}, {b})", extras, s["gpu"], used, ci["zone"] or "-", f"{ci['g_per_kwh']:.0f}", src,
                  f"{s['compute_ms_per_token']:.2f}")
    return t


def metrics_lines(ev: EvaluatedPlan) -> list[str]:
    m = ev.metrics
    lines = [
        f"latency {m['latency_ms_per_token']:.1f} ms/token (compute {m['compute_ms_per_token']:.1f} + network "
        f"{m['network_ms_per_token']:.1f}), {m['tokens_per_s']:.2f} tokens/s; time to first token "
        f"{m['ttft_ms']:.0f} ms for a {ev.options['prompt_tokens']}-token prompt",
        f"energy {m['energy_j_per_token']:.2f} J/token; {_fmt_g(m['gco2e_per_token'])} CO2e/token operational "
        f"(mean grid {m['mean_intensity_g_per_kwh']:.0f} g/kWh), + {_fmt_g(m['gco2e_embodied_per_token'])} embodied, "
        f"+ {_fmt_g(m['gco2e_network_per_token'])} network = {_fmt_g(m['gco2e_total_per_token'])} total",
    ]
    if "concurrency" in m:
        lines.append(
            f"reserved at load ({m['concurrency']} sequence{'s' if m['concurrency'] > 1 else ''} per step, every peer "
            f"held for the whole step): {m['latency_ms_per_token_at_load']:.1f} ms/token, "
            f"{m['tokens_per_s_at_load']:.2f} tokens/s; {m['energy_j_per_token_at_load']:.2f} J/token; "
            f"{_fmt_g(m['gco2e_per_token_at_load'])} operational + {_fmt_g(m['gco2e_embodied_per_token_at_load'])} "
            f"embodied + {_fmt_g(m['gco2e_network_per_token_at_load'])} network = "
            f"{_fmt_g(m['gco2e_total_per_token_at_load'])} CO2e/token")
    scope = ev.plan.notes.get("carbon_scope")
    if scope and "objective" in ev.plan.notes:
        what = {"reserved": "the reserved-at-load total above: operational + embodied + network",
                "operational": "operational by compute time", "total": "compute-time total"}.get(scope, scope)
        lines.append(f"carbon minimised: {scope} ({what})")
    lines.append(f"proof: {ev.proof}")
    route = " -> ".join([ev.hops[0]["from"], *(h["to"] for h in ev.hops)]) if ev.hops else "-"
    measured = sum(h["rtt_source"] == "measured" for h in ev.hops)
    lines.append(f"route {route} ({measured}/{len(ev.hops)} hop RTTs measured, the rest estimated from distance)")
    for p in ev.problems:
        lines.append(f"[red]problem:[/red] {p}")
    return lines


def print_plan(console: Console, ev: EvaluatedPlan) -> None:
    console.print(plan_table(ev))
    for line in metrics_lines(ev):
        console.print("  " + line)
    console.print()


def comparison_table(evs: list[EvaluatedPlan], reference: EvaluatedPlan | None = None) -> Table:
    t = Table(title="strategies compared on one ruler (Prismn's evaluator)", title_justify="left")
    for col in ("strategy", "feasible", "peers", "ms/token", "TTFT ms", "J/token", "mgCO2e/token", "total mgCO2e/token",
                "reserved mgCO2e/token", "proof"):
        t.add_column(col, justify="left" if col == "strategy" else "right")
    if reference is not None:
        t.add_column(f"latency / carbon vs {reference.plan.strategy}", justify="right")
    for ev in evs:
        m = ev.metrics
        row = [plan_label(ev),
               "[green]yes[/green]" if ev.feasible else "[red]no[/red]", str(m["peers_used"]),
               f"{m['latency_ms_per_token']:.1f}", f"{m['ttft_ms']:.0f}", f"{m['energy_j_per_token']:.2f}",
               f"{m['gco2e_per_token'] * 1e3:.3f}", f"{m['gco2e_total_per_token'] * 1e3:.3f}",
               f"{m['gco2e_total_per_token_at_load'] * 1e3:.3f}" if "gco2e_total_per_token_at_load" in m else "-",
               ev.proof]
        if reference is not None:
            r = reference.metrics
            row.append(f"{m['latency_ms_per_token'] / r['latency_ms_per_token']:.2f}x / "
                       f"{m['gco2e_per_token'] / r['gco2e_per_token']:.2f}x")
        t.add_row(*row)
    return t


def pareto_table(front, baselines: list[EvaluatedPlan]) -> Table:
    """The Pareto front (slowest first) and, below it, the baselines on the same axes."""
    metric = front.carbon_metric
    title = ("Pareto front of exact plans (latency vs carbon)" +
             ("" if front.complete else " — a subset: steps were skipped or a point was not proven"))
    t = Table(title=title, title_justify="left")
    for col in ("#", "ms/token", metric, "peers", "mean grid g/kWh", "proof"):
        t.add_column(col, justify="right")
    for i, ev in enumerate(front.plans, 1):
        m = ev.metrics
        t.add_row(str(i), f"{m['latency_ms_per_token']:.2f}", _fmt_g(m[metric]), str(m["peers_used"]),
                  f"{m['mean_intensity_g_per_kwh']:.0f}", ev.proof)
    for ev in baselines:
        m = ev.metrics
        name = plan_label(ev)
        t.add_row(name, f"{m['latency_ms_per_token']:.2f}", _fmt_g(m[metric]), str(m["peers_used"]),
                  f"{m['mean_intensity_g_per_kwh']:.0f}", "[red]infeasible[/red]" if not ev.feasible else "baseline")
    return t


def plot_pareto(front, baselines: list[EvaluatedPlan], path, title: str = "") -> None:
    """Front as a step line, baselines as labelled markers (infeasible ones hollow)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = front.carbon_metric
    fig, ax = plt.subplots(figsize=(7.5, 5))
    pts = sorted((e.metrics["latency_ms_per_token"], e.metrics[metric] * 1000) for e in front.plans)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color="tab:green",
            label="prismn: exact Pareto points" + ("" if front.complete else " (a subset of the front)"))
    markers = {"tandemn": "s", "prismn-hackathon": "^", "petals": "D"}
    for ev in baselines:
        m = ev.metrics
        name = plan_label(ev)
        style = {} if ev.feasible else {"facecolors": "none", "edgecolors": "red", "linewidths": 1.5}
        ax.scatter([m["latency_ms_per_token"]], [m[metric] * 1000], marker=markers.get(ev.plan.strategy, "x"),
                   s=60, label=name + ("" if ev.feasible else " (infeasible)"), **style)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latency per token (ms)")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (mg CO2e)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
