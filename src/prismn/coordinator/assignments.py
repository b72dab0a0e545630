"""Signed stage assignments: what the coordinator tells each peer of a pipeline to serve.

Each hop gets an :class:`~prismn.protocol.Assignment` naming the deployment, model, layer range, the
peer's own key, the client key allowed to open sessions (the coordinator's), its upstream and
downstream neighbours (id, key, address) and an expiry, signed with the coordinator's Ed25519 key.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from typing import Any

from prismn.errors import PrismnError
from prismn.identity import Identity
from prismn.protocol import Assignment, Neighbour, SignedAssignment


def _neighbour(hop: Any) -> Neighbour:
    return Neighbour(peer=hop.peer_id, key=hop.key, address=hop.address)


def sign_assignments(identity: Identity, hops: Sequence[Any], *, deployment: str, model: str, checkpoint: str,
                     dtype: str, ttl_s: float) -> list[dict[str, Any]]:
    """One signed assignment per hop (:class:`prismn.runtime.client.Hop`, in pipeline order)."""
    for hop in hops:
        if not hop.key:
            raise PrismnError(f"peer {hop.peer_id} has no registered key: restart it with a current `prismn peer` "
                              "so that it joins with one")
        if hop.layers is None:
            raise PrismnError(f"peer {hop.peer_id} has no layer range to serve")
    now = time.time()
    out = []
    for i, hop in enumerate(hops):
        a = Assignment(deployment=deployment, model=model, checkpoint=checkpoint, layers=tuple(hop.layers),
                       embedding=bool(hop.embedding), head=bool(hop.head), dtype=dtype, peer=hop.peer_id,
                       peer_key=hop.key, client=identity.public,
                       upstream=_neighbour(hops[i - 1]) if i > 0 else None,
                       downstream=_neighbour(hops[i + 1]) if i + 1 < len(hops) else None,
                       issued_at=now, expires_at=now + ttl_s, nonce=secrets.token_hex(16))
        sig = identity.sign_json(a.model_dump(mode="json"))
        out.append(SignedAssignment(assignment=a, signature=sig).model_dump(mode="json"))
    return out
