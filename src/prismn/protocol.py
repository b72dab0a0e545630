"""Typed messages between Prismn processes: every message is one model here, imported by both ends.

Stage frames (step, tokens), the stage handshake (hello, challenge, auth), signed stage assignments,
and the peer's requests to the coordinator (join, heartbeat).

One place for the shape of a batched step, imported by both ends (the stage server validates with
these models before it allocates anything; the client builds its frames from them). A frame's
tensor rides beside the header as raw bytes (:mod:`prismn.wire`); these models describe only the
JSON header.

A ``step`` frame carries the work of one or more sessions: ``items`` in order, and one tensor whose
first axis concatenates the items' tokens (ids ``[T]`` to the first stage, hidden states ``[T, hidden]``
to the others; ``T = Σ item.n``). A ``tokens`` frame carries the last stage's answers for the items
of one client connection, and optionally their float32 logits ``[Σ item.rows, vocab]``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StringConstraints,
    ValidationError,
    field_validator,
)

from prismn.swarm import Measurement, PeerIn
from prismn.wire import WireError

SessionId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
#: most items one step frame may carry (a stage's batch never exceeds its session limit anyway)
MAX_ITEMS = 1024
#: hops recorded per item: a pipeline longer than this is refused rather than grown without bound
MAX_TRACE = 64

# one hop of an item's trace: [peer id, this item's share of the stage's compute seconds, batch size]
TraceEntry = tuple[str, float, int]


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StepItem(_Msg):
    session: SessionId
    step: StrictInt = Field(ge=0)
    pos: StrictInt = Field(ge=0)  # absolute position of the item's first token
    n: StrictInt = Field(ge=1)  # tokens of this item in the frame's tensor
    sample: StrictBool = True  # False for a prompt chunk that is not the last: no head, no token back
    trace: list[TraceEntry] = Field(default_factory=list, max_length=MAX_TRACE)


class StepFrame(_Msg):
    kind: Literal["step"]
    items: list[StepItem] = Field(min_length=1, max_length=MAX_ITEMS)
    dtype: str
    shape: list[StrictInt]


class TokenItem(_Msg):
    session: SessionId
    step: StrictInt
    token: StrictInt
    pos: StrictInt  # tokens in the caches after this step
    rows: StrictInt = Field(default=0, ge=0)  # logits rows of this item in the frame's payload
    trace: list[TraceEntry] = Field(default_factory=list)


class TokensFrame(_Msg):
    kind: Literal["tokens"]
    items: list[TokenItem] = Field(min_length=1, max_length=MAX_ITEMS)
    dtype: str | None = None
    shape: list[int] | None = None


def parse(model: type[_Msg], header: dict[str, Any]) -> Any:
    """Validate a frame header against its model; a violation is a WireError naming the field."""
    try:
        return model.model_validate(header)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err.get("loc", ())) or "header"
        raise WireError(f"bad {header.get('kind', 'frame')} frame: {where}: {err.get('msg', 'invalid')}") from None


def dump(msg: _Msg) -> dict[str, Any]:
    return msg.model_dump(mode="json", exclude_defaults=False)


# ---------------------------------------------------------------------------------------- identity
PublicKey = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Signature = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{128}$")]
Nonce = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{32,64}$")]
PeerId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
DeploymentId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]


class Hello(_Msg):
    """Opens the handshake on a stage connection: who the dialler says it is, and a fresh nonce."""

    kind: Literal["hello"]
    key: PublicKey
    nonce: Nonce


class Challenge(_Msg):
    """The stage's answer: its own key, its nonce, and its signature of the dialler's nonce (mutual)."""

    kind: Literal["challenge"]
    key: PublicKey
    nonce: Nonce
    signature: Signature


class Auth(_Msg):
    """The dialler's proof: its signature of the stage's nonce."""

    kind: Literal["auth"]
    signature: Signature


def handshake_bytes(role: str, nonce: str, signer: str, other: str) -> bytes:
    """What each side signs: its role, the other side's nonce and both keys (bound to this pair)."""
    return f"prismn-handshake-v1|{role}|{nonce}|{signer}|{other}".encode()


# ---------------------------------------------------------------------------------------- assignments
class Neighbour(_Msg):
    """The stage before or after this one: who (its public key) and where (its transport address)."""

    peer: PeerId
    key: PublicKey
    address: str = Field(min_length=3, max_length=300)


class Assignment(_Msg):
    """What the coordinator tells one peer to serve, signed with the coordinator's key.

    A stage loads only an assignment signed by its coordinator, naming its own key, before it expires;
    it then takes sessions only from ``client`` (the key holding the deployment's sessions), steps only
    from ``upstream`` (or the client, for the first stage) and forwards only to ``downstream``.
    """

    deployment: DeploymentId
    model: str = Field(min_length=1, max_length=200)
    checkpoint: str = Field(min_length=1, max_length=1024)
    layers: tuple[StrictInt, StrictInt]
    embedding: StrictBool
    head: StrictBool
    dtype: str = Field(default="fp32", max_length=16)
    peer: PeerId
    peer_key: PublicKey
    client: PublicKey
    upstream: Neighbour | None = None  # None: the first stage (steps come from the client)
    downstream: Neighbour | None = None  # None: the last stage (tokens go back to the client)
    issued_at: float
    expires_at: float
    nonce: Nonce


class SignedAssignment(_Msg):
    assignment: Assignment
    signature: Signature


def request_bytes(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    """What a peer signs for each coordinator request (join, heartbeat): both ends compute the same."""
    import hashlib

    return f"prismn-request-v1|{method.upper()}|{path}|{timestamp}|{hashlib.sha256(body).hexdigest()}".encode()


# ---------------------------------------------------------------------------------------- coordinator
def _finite_rtts(v: dict[str, float]) -> dict[str, float]:
    import math

    for k, ms in v.items():
        if not (isinstance(ms, int | float) and math.isfinite(ms) and 0 <= ms <= 60_000):
            raise ValueError(f"RTT to {k!r} = {ms!r}: an RTT is a finite number of milliseconds in 0..60000")
    return v


RttKey = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.:-]{1,128}$")]
Rtts = Annotated[dict[RttKey, float], Field(max_length=4096)]


def _check_address(v: str) -> str:
    """A stage server's address: HOST:PORT for TCP, or ``iroh:`` and a 64-hex endpoint id."""
    from prismn.transport import TransportError, parse_address

    if v.startswith("iroh:"):
        if not re.fullmatch(r"iroh:[0-9a-f]{64}", v):
            raise ValueError(f"{v!r}: an Iroh address is 'iroh:' and the 64-hex endpoint id")
        return v
    try:
        parse_address(v)
    except TransportError as e:
        raise ValueError(str(e)) from None
    return v


class JoinRequest(PeerIn):
    """A peer as a swarm file describes it, plus where its stage server listens and what it measured.
    Signed with the peer's key (``X-Prismn-Key``), which the id is bound to at first join."""

    gpu: str = "CPU"
    free_vram_gb: float = Field(ge=0, le=100_000, allow_inf_nan=False)
    data_addr: str = Field(min_length=3, max_length=256, description="host:port of the peer's stage server")
    rtt_ms: Rtts = {}
    measurements: list[Measurement] = Field(default=[], max_length=64)
    stage: dict[str, Any] | None = None
    transport: dict[str, Any] | None = Field(default=None, description="transport details (Iroh endpoint info)")
    gpus: None = Field(default=None, description="not for joins: one `prismn peer` process serves one GPU")

    @field_validator("gpus", mode="before")
    @classmethod
    def _one_gpu(cls, v: Any) -> None:
        if v is not None:
            raise ValueError("a peer process serves one GPU: start one `prismn peer` per GPU (--gpu, --vram)")
        return None

    @field_validator("data_addr")
    @classmethod
    def _addr(cls, v: str) -> str:
        return _check_address(v)

    @field_validator("rtt_ms")
    @classmethod
    def _rtts(cls, v: dict[str, float]) -> dict[str, float]:
        return _finite_rtts(v)


class JoinResponse(BaseModel):
    peer_id: str
    lease_s: float
    heartbeat_s: float
    peers: dict[str, str]  # other online peers' data addresses, to measure RTTs to
    coordinator_key: str  # the key that signs stage assignments: the peer's stage server trusts only it


class HeartbeatRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    free_vram_gb: float | None = Field(default=None, ge=0, le=100_000, allow_inf_nan=False)
    measurements: list[Measurement] | None = Field(default=None, max_length=64)
    rtt_ms: Rtts | None = None
    stage: dict[str, Any] | None = None
    transport: dict[str, Any] | None = None

    @field_validator("rtt_ms")
    @classmethod
    def _rtts(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        return None if v is None else _finite_rtts(v)


class HeartbeatResponse(BaseModel):
    lease_expires_in_s: float
    peers: dict[str, str]
    coordinator_key: str
