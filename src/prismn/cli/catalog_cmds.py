"""`prismn models` and `prismn gpus`: what the embedded catalogs hold."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from prismn.data import load
from prismn.model import load_model_spec


def register(app: typer.Typer) -> None:
    @app.command("models")
    def models(dtype: str = typer.Option("bf16", help="fp32, bf16, fp16, int8 or int4.")) -> None:
        """Models in the embedded catalog, with their size at a dtype."""
        t = Table("hub id", "layers", "hidden", "layer GiB", "embedding GiB", "total GiB", title=f"models ({dtype})")
        for mid in load("models.json")["models"]:
            s = load_model_spec(mid, dtype)
            info = s.summary()
            t.add_row(mid, str(s.n_layers), str(s.hidden), f"{info['layer_gb']:.3f}", f"{info['embedding_gb']:.3f}",
                      f"{info['total_gb']:.2f}")
        Console().print(t)

    @app.command("gpus")
    def gpus() -> None:
        """GPUs in the embedded catalog (datasheet values; idle draw where measured and cited)."""
        from prismn.placement.costmodel import IDLE_POWER_FRACTION

        t = Table("name", "aliases", "VRAM GB", "GB/s", "fp16 TFLOP/s", "TDP W", "idle W (held, waiting)")
        for g in load("gpus.json"):
            idle = f"{g['idle_w']:g} (measured)" if g.get("idle_w") else f"{IDLE_POWER_FRACTION * g['tdp_w']:g} (default)"
            t.add_row(g["name"], ", ".join(g.get("aliases", [])), f"{g['vram_gb']:g}", f"{g['mem_bw_gbps']:g}",
                      f"{g['fp16_tflops']:g}", f"{g['tdp_w']:g}", idle)
        Console().print(t)
        Console().print(f"idle: measured with a CUDA context held where the catalog cites a source (idle_source in "
                        f"gpus.json), else {IDLE_POWER_FRACTION:g} x TDP; a peer's own NVML measurement wins over both")
