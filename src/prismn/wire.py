"""Wire format for activations and control messages between Prismn peers.

A frame is a fixed 16-byte prefix, a small JSON header and the raw bytes of at most one tensor:

    magic  b"PRM1"          4 bytes
    header length (u32, big-endian)
    payload length (u64, big-endian)
    header                  UTF-8 JSON object, at most ``Limits.max_header`` bytes
    payload                 raw little-endian tensor bytes (C order), at most ``Limits.max_payload``

The header always has a ``kind`` (``"step"``, ``"token"``, ``"open"``, ``"info"``, ...). A frame that
carries a tensor also names its ``dtype`` and ``shape``; a ``step`` frame names its ``session``,
``step`` and ``pos`` (absolute position of its first token). Nothing received is ever unpickled or
``torch.load``-ed: a tensor is rebuilt from its bytes only after its dtype, shape and size have been
checked against what the receiver expects (:func:`check_tensor`).

This module needs neither torch nor numpy; :func:`tensor_payload` / :func:`to_tensor` import torch
lazily for the runtime.
"""

from __future__ import annotations

import asyncio
import json
import math
import struct
import sys
from dataclasses import dataclass, field
from typing import Any

from prismn.errors import PrismnError

MAGIC = b"PRM1"
PREFIX = struct.Struct("!4sIQ")  # magic, header length, payload length

#: bytes per element of every dtype the wire carries
DTYPE_SIZES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "int32": 4,
    "int64": 8,
}
FLOAT_DTYPES = ("float32", "bfloat16", "float16")
DTYPE_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "half": "float16", "float": "float32"}

if sys.byteorder != "little":  # pragma: no cover - every supported platform is little-endian
    raise ImportError("prismn.wire assumes a little-endian host")


class WireError(PrismnError):
    """A frame is malformed, truncated, oversized or not what the receiver expects."""


def canonical_dtype(name: str) -> str:
    """``"fp32"`` → ``"float32"`` etc.; raise WireError for a dtype the wire does not carry."""
    d = DTYPE_ALIASES.get(str(name).lower(), str(name).lower())
    if d not in DTYPE_SIZES:
        raise WireError(f"unsupported dtype {name!r}: use one of {', '.join(DTYPE_SIZES)}")
    return d


@dataclass(frozen=True)
class Limits:
    """Upper bounds a receiver enforces before it allocates anything."""

    max_header: int = 64 * 1024
    max_payload: int = 1 << 30  # 1 GiB; a stage lowers this to what its context limit allows


@dataclass
class Frame:
    header: dict[str, Any]
    payload: bytes = b""
    #: perf_counter() when the last byte of the frame was read (set by :func:`read_frame`)
    t_recv: float = field(default=0.0, compare=False)

    @property
    def kind(self) -> str:
        return str(self.header.get("kind", ""))


def encode_header(header: dict[str, Any], payload_len: int) -> bytes:
    """Prefix + header bytes for a frame whose payload has ``payload_len`` bytes."""
    h = json.dumps(header, separators=(",", ":"), allow_nan=False).encode()
    return PREFIX.pack(MAGIC, len(h), payload_len) + h


def encode_frame(header: dict[str, Any], payload: bytes | bytearray | memoryview = b"") -> bytes:
    """One contiguous frame (convenient for tests; senders write header and payload separately)."""
    mv = memoryview(payload).cast("B") if not isinstance(payload, bytes) else payload
    return encode_header(header, len(mv)) + bytes(mv)


def decode_prefix(prefix: bytes, limits: Limits) -> tuple[int, int]:
    if len(prefix) != PREFIX.size:
        raise WireError("truncated frame prefix")
    magic, hlen, plen = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise WireError(f"bad magic {magic!r} (not a Prismn peer, or a different wire version)")
    if hlen == 0 or hlen > limits.max_header:
        raise WireError(f"header length {hlen} outside 1..{limits.max_header}")
    if plen > limits.max_payload:
        raise WireError(f"payload of {plen} bytes exceeds the limit of {limits.max_payload}")
    return hlen, plen


def decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WireError(f"header is not JSON ({e.__class__.__name__})") from None
    if not isinstance(header, dict) or not isinstance(header.get("kind"), str):
        raise WireError("header must be a JSON object with a string 'kind'")
    return header


async def read_frame(reader: asyncio.StreamReader, limits: Limits = Limits()) -> Frame | None:
    """Read one frame; None on a clean end of stream; WireError on anything malformed."""
    import time

    try:
        prefix = await reader.readexactly(PREFIX.size)
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise WireError(f"truncated frame prefix ({len(e.partial)} of {PREFIX.size} bytes)") from None
    hlen, plen = decode_prefix(prefix, limits)
    try:
        raw = await reader.readexactly(hlen)
        header = decode_header(raw)
        payload = await reader.readexactly(plen) if plen else b""
    except asyncio.IncompleteReadError as e:
        raise WireError(f"truncated frame (stream ended {len(e.partial)} bytes into a part)") from None
    return Frame(header, payload, time.perf_counter())


def check_tensor(
    header: dict[str, Any],
    payload: bytes,
    *,
    dtypes: tuple[str, ...] | str,
    ndim: int,
    fixed: dict[int, int] | None = None,
    max_elems: int | None = None,
) -> tuple[str, tuple[int, ...]]:
    """Validate the tensor a frame carries before it is used; return ``(dtype, shape)``.

    ``fixed`` pins dimensions (``{-1: hidden_size}``); every dimension must be a positive int; the
    payload must be exactly ``prod(shape) × itemsize`` bytes.
    """
    allowed = (dtypes,) if isinstance(dtypes, str) else dtypes
    dtype = header.get("dtype")
    if dtype not in allowed:
        raise WireError(f"dtype {dtype!r} where {' or '.join(allowed)} was expected")
    shape = header.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != ndim
        or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)
    ):
        raise WireError(f"shape {shape!r} is not {ndim} positive integers")
    for axis, size in (fixed or {}).items():
        if shape[axis] != size:
            raise WireError(f"shape {shape} has {shape[axis]} on axis {axis} where {size} was expected")
    n = math.prod(shape)
    if max_elems is not None and n > max_elems:
        raise WireError(f"tensor of {n} elements exceeds the limit of {max_elems}")
    if len(payload) != n * DTYPE_SIZES[dtype]:
        raise WireError(f"payload is {len(payload)} bytes; dtype {dtype} shape {shape} needs {n * DTYPE_SIZES[dtype]}")
    return dtype, tuple(shape)


# ---------------------------------------------------------------------------------------- torch glue
def tensor_payload(t: Any) -> tuple[str, list[int], memoryview]:
    """``(dtype, shape, bytes view)`` of a CPU tensor, without copying when it is contiguous."""
    import torch

    t = t.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    t = t.contiguous()
    dtype = str(t.dtype).removeprefix("torch.")
    if dtype not in DTYPE_SIZES:
        raise WireError(f"cannot send a tensor of dtype {t.dtype}")
    shape = list(t.shape)
    if t.numel() == 0:
        return dtype, shape, memoryview(b"")
    return dtype, shape, memoryview(t.view(torch.uint8).reshape(-1).numpy())


def to_tensor(payload: bytes, dtype: str, shape: tuple[int, ...]) -> Any:
    """Rebuild a tensor from validated bytes (a private, writable copy)."""
    import torch

    tdtype = getattr(torch, dtype)
    buf = bytearray(payload)
    return torch.frombuffer(buf, dtype=tdtype).reshape(shape)
