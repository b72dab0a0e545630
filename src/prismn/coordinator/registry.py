"""Peer registry and leases: join, heartbeat, expiry; and the live swarm the planner sees."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from prismn.coordinator.auth import require_same_peer
from prismn.coordinator.errors import ApiError
from prismn.coordinator.schemas import HeartbeatRequest, JoinRequest
from prismn.coordinator.settings import Settings
from prismn.coordinator.store import PeerRow, Store, utcnow
from prismn.errors import SwarmError
from prismn.swarm import CLIENT, Swarm, parse_swarm


class UnknownPeer(KeyError):
    pass


#: decode steps a stage must have served before its observed timing replaces its start-up benchmark
OBSERVED_MIN_STEPS = 32


def planning_measurements(bench: list[dict[str, Any]], stage: dict[str, Any] | None) -> list[dict[str, Any]]:
    """What the planner should believe of a peer's speed: the decode steps its stage really served under
    traffic once there are enough of them (first, so they win for that model), then its benchmarks."""
    obs = (stage or {}).get("observed") if isinstance(stage, dict) else None
    if isinstance(obs, dict) and int(obs.get("steps") or 0) >= OBSERVED_MIN_STEPS and obs.get("s_per_layer"):
        return [obs, *bench]
    return list(bench)


class Registry:
    def __init__(self, store: Store, settings: Settings):
        self.store = store
        self.settings = settings
        self._beats: dict[str, float] = {}  # peer id -> when its last heartbeat was taken (monotonic)

    def join(self, req: JoinRequest, key: str) -> PeerRow:
        """Register (or re-register) a peer whose requests ``key`` signed, and give it a fresh lease; its id
        is bound to that key at first join. SwarmError on bad data, Forbidden for another key's id."""
        # the same validation as a swarm file: unknown GPU or zone is one clear line, nothing stored
        probe = {k: v for k, v in req.model_dump(include={"id", "lat", "lon", "free_vram_gb", "gpu", "zone",
                                                          "carbon_intensity", "pue", "bandwidth_mbps"}).items()
                 if v is not None}
        parse_swarm({"coordinator": {"lat": 0, "lon": 0}, "peers": [probe]})
        now = utcnow()
        lease = now + timedelta(seconds=self.settings.lease_s)
        fields: dict[str, Any] = req.model_dump(exclude={"id"})
        fields["measurements"] = [m.model_dump() for m in req.measurements]
        endpoint = self._endpoint(req.transport, req.data_addr, key)
        fields.pop("transport", None)
        fields.pop("gpus", None)
        fields["endpoint"] = endpoint
        with self.store.session() as s:
            row = s.get(PeerRow, req.id)
            if row is None:
                row = PeerRow(id=req.id, joined_at=now, joins=1, public_key=key, **fields)
                s.add(row)
            else:
                require_same_peer(row.public_key, key, req.id)
                for k, v in fields.items():
                    setattr(row, k, v)
                row.joins += 1
                row.public_key = key
            row.status, row.last_seen, row.lease_expires = "online", now, lease
        return row

    def heartbeat(self, peer_id: str, req: HeartbeatRequest, key: str) -> PeerRow:
        now = utcnow()
        with self.store.session() as s:
            row = s.get(PeerRow, peer_id)
            if row is None:
                raise UnknownPeer(peer_id)
            # who is asking comes before how often: another key's request is refused as such (403), and
            # it never meets, nor learns of, the real peer's rate limit
            require_same_peer(row.public_key, key, peer_id)
            last = self._beats.get(peer_id)
            if last is not None and time.monotonic() - last < self.settings.min_heartbeat_interval_s:
                raise ApiError(429, f"peer {peer_id} heartbeats too often: at most one per "
                                    f"{self.settings.min_heartbeat_interval_s:g} s", "rate_limited", retry_after_s=1)
            self._beats[peer_id] = time.monotonic()
            if req.free_vram_gb is not None:
                row.free_vram_gb = req.free_vram_gb
            if req.measurements is not None:
                row.measurements = [m.model_dump() for m in req.measurements]
            if req.rtt_ms is not None:
                row.rtt_ms = dict(req.rtt_ms)
            if req.stage is not None:
                row.stage = req.stage
            if req.transport is not None:
                row.endpoint = self._endpoint(req.transport, row.data_addr, key)
            row.status, row.last_seen = "online", now
            row.lease_expires = now + timedelta(seconds=self.settings.lease_s)
        return row

    def grace(self) -> None:
        """At start: peers could not heartbeat while the coordinator was away. Those online before are
        "rejoining" — not planned onto, not dialled — until they heartbeat or join again, which their
        back-off brings within a lease plus --rejoin-grace-s; then they expire to offline as usual."""
        until = utcnow() + timedelta(seconds=self.settings.lease_s + self.settings.rejoin_grace_s)
        with self.store.session() as s:
            for r in s.scalars(select(PeerRow).where(PeerRow.status.in_(("online", "rejoining")))):
                r.status, r.lease_expires = "rejoining", max(r.lease_expires, until)

    def expire(self) -> list[str]:
        """Mark peers whose lease ran out offline (never deleted); return their ids."""
        now = utcnow()
        with self.store.session() as s:
            rows = list(s.scalars(select(PeerRow).where(PeerRow.status.in_(("online", "rejoining")),
                                                        PeerRow.lease_expires < now)))
            for r in rows:
                r.status = "offline"
            return [r.id for r in rows]

    def extend_leases(self, seconds: float) -> None:
        """Give live leases back the time the coordinator itself was stalled and could not renew them."""
        with self.store.session() as s:
            for r in s.scalars(select(PeerRow).where(PeerRow.status.in_(("online", "rejoining")))):
                r.lease_expires = r.lease_expires + timedelta(seconds=seconds)

    def mark_offline(self, peer_id: str) -> None:
        """A peer failed a request: offline now, not at lease expiry (a live one is back at its next heartbeat)."""
        with self.store.session() as s:
            row = s.get(PeerRow, peer_id)
            if row is not None:
                row.status, row.lease_expires = "offline", utcnow()

    @staticmethod
    def _endpoint(info: dict[str, Any] | None, data_addr: str, key: str) -> dict[str, Any] | None:
        """An Iroh peer's published endpoint, checked: its id is the peer's own key (the one that signed
        the request), and it is the address the peer gave."""
        if not data_addr.startswith("iroh:"):
            return None
        if data_addr != f"iroh:{key}":
            raise ApiError(400, f"data_addr {data_addr!r} is not this peer's own endpoint (iroh:{key[:12]}…): an "
                                "Iroh peer's endpoint id is its key", "bad_endpoint")
        info = info or {}
        addrs = info.get("direct_addresses") or []
        relay = info.get("relay_url")
        if info.get("endpoint_id", key) != key or not isinstance(addrs, list) or len(addrs) > 32 \
                or not all(isinstance(a, str) and len(a) <= 64 for a in addrs) \
                or not (relay is None or (isinstance(relay, str) and len(relay) <= 256)):
            raise ApiError(400, "transport: the endpoint info must be {endpoint_id: this peer's key, "
                                "direct_addresses: [HOST:PORT, ...] (at most 32), relay_url}", "bad_endpoint")
        paths = info.get("paths") if isinstance(info.get("paths"), dict) else {}
        return {"endpoint_id": key, "direct_addresses": addrs, "relay_url": relay,
                "paths": {str(k)[:128]: v for k, v in list(paths.items())[:256] if isinstance(v, dict)}}

    def endpoint(self, endpoint_id: str) -> dict[str, Any] | None:
        """The address book: an online Iroh peer's endpoint info by its id (= its public key)."""
        for p in self.store.peers("online"):
            if p.public_key == endpoint_id and p.endpoint:
                return {k: p.endpoint[k] for k in ("endpoint_id", "direct_addresses", "relay_url")}
        return None

    def remove(self, peer_id: str) -> bool:
        """Forget a peer (its id may then be joined by another key)."""
        with self.store.session() as s:
            row = s.get(PeerRow, peer_id)
            if row is None:
                return False
            s.delete(row)
        self._beats.pop(peer_id, None)
        return True

    def prune(self, keep: set[str]) -> list[str]:
        """Remove peers offline for longer than the retention period (except ``keep``); their ids."""
        cutoff = utcnow() - timedelta(seconds=self.settings.peer_retention_s)
        with self.store.session() as s:
            rows = [r for r in s.scalars(select(PeerRow).where(PeerRow.status == "offline",
                                                               PeerRow.last_seen < cutoff)) if r.id not in keep]
            for r in rows:
                s.delete(r)
        return [r.id for r in rows]

    def keys(self) -> dict[str, str]:
        """Online peers' public keys."""
        return {p.id: p.public_key for p in self.store.peers("online") if p.public_key}

    def addresses(self, exclude: str | None = None) -> dict[str, str]:
        return {p.id: p.data_addr for p in self.store.peers("online") if p.id != exclude}

    def swarm(self, peer_ids: list[str] | None = None) -> Swarm:
        """The online peers as a Swarm for the planner (measured RTTs unless WAN is emulated)."""
        rows = [p for p in self.store.peers("online") if peer_ids is None or p.id in peer_ids]
        if not rows:
            raise SwarmError("no peer is online: start peers with `prismn peer --coordinator URL --token-file FILE`")
        ids = {p.id for p in rows}
        peers, rtt = [], {}
        for p in rows:
            peer = {"id": p.id, "lat": p.lat, "lon": p.lon, "free_vram_gb": p.free_vram_gb, "gpu": p.gpu,
                    "measurements": planning_measurements(p.measurements or [], p.stage)}
            for k in ("zone", "carbon_intensity", "pue", "bandwidth_mbps"):
                if getattr(p, k) is not None:
                    peer[k] = getattr(p, k)
            peers.append(peer)
            if not self.settings.emulate_wan:  # loopback RTTs would misdescribe an emulated world
                row = {k: v for k, v in (p.rtt_ms or {}).items() if k in ids or k == CLIENT}
                if row:
                    rtt[p.id] = row
        return parse_swarm({"coordinator": {"lat": self.settings.lat, "lon": self.settings.lon},
                            "peers": peers, "rtt_ms": rtt}, provider=getattr(self.settings, "carbon", None))
