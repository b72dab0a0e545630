"""Typed messages between Prismn processes: what a stage server and a pipeline client say per step.

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

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, ValidationError

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
