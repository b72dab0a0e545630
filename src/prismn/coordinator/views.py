"""The JSON the API shows for stored rows: one builder per kind, used by the routes and the dashboard."""

from __future__ import annotations

from typing import Any

from prismn.coordinator.store import PeerRow, ReceiptRow


def peer_json(p: PeerRow) -> dict[str, Any]:
    return {"id": p.id, "status": p.status, "lat": p.lat, "lon": p.lon, "zone": p.zone, "city": p.city,
            "gpu": p.gpu, "free_vram_gb": p.free_vram_gb, "data_addr": p.data_addr, "public_key": p.public_key,
            "transport": "iroh" if p.data_addr.startswith("iroh:") else "tcp", "endpoint": p.endpoint,
            "measurements": p.measurements, "stage": p.stage, "joins": p.joins,
            "last_seen": p.last_seen.isoformat() + "Z"}


def receipt_json(r: ReceiptRow) -> dict[str, Any]:
    return {"id": r.id, "deployment": r.deployment_id, "created": r.created_at.isoformat() + "Z",
            "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens, "gco2e": r.gco2e,
            "joules": r.joules, "ms_per_token": r.ms_per_token, "receipt": r.receipt}
