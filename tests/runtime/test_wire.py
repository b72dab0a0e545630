"""Wire format: header + raw bytes, validated before use."""

from __future__ import annotations

import asyncio
import struct

import pytest

from prismn.wire import MAGIC, PREFIX, Limits, WireError, check_tensor, encode_frame, read_frame


def _read(data: bytes, limits: Limits = Limits()):
    async def go():
        r = asyncio.StreamReader()
        r.feed_data(data)
        r.feed_eof()
        return await read_frame(r, limits)

    return asyncio.run(go())


def test_roundtrip_header_and_payload():
    payload = bytes(range(16))
    f = _read(encode_frame({"kind": "step", "session": "a", "dtype": "float32", "shape": [1, 1, 4]}, payload))
    assert f.kind == "step" and f.header["session"] == "a" and f.payload == payload
    assert check_tensor(f.header, f.payload, dtypes="float32", ndim=3, fixed={-1: 4}) == ("float32", (1, 1, 4))


def test_clean_eof_is_none():
    assert _read(b"") is None


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"XXXX" + b"\0" * 12, "bad magic"),
        (PREFIX.pack(MAGIC, 10, 0)[:7], "truncated frame prefix"),
        (PREFIX.pack(MAGIC, 100, 0) + b"{}", "truncated"),
        (PREFIX.pack(MAGIC, 0, 0), "header length"),
        (PREFIX.pack(MAGIC, 1 << 20, 0), "header length"),
        (PREFIX.pack(MAGIC, 2, 1 << 40) + b"{}", "exceeds the limit"),
        (PREFIX.pack(MAGIC, 3, 0) + b"\xff\xfe{", "not JSON"),
        (PREFIX.pack(MAGIC, 2, 0) + b"[]", "JSON object"),
        (PREFIX.pack(MAGIC, 14, 8) + b'{"kind":"s"}  ' + b"1234", "truncated"),
    ],
)
def test_malformed_frames_raise(data, reason):
    with pytest.raises(WireError, match=reason):
        _read(data)


def test_oversized_rejected_before_reading_payload():
    # only the 16-byte prefix + header exist: the size check must fire without waiting for 1 GiB
    data = PREFIX.pack(MAGIC, 14, 10**9) + b'{"kind":"step"}'[:14]
    with pytest.raises(WireError, match="exceeds"):
        _read(data, Limits(max_payload=1 << 20))


@pytest.mark.parametrize(
    "header, payload, reason",
    [
        ({"dtype": "float64", "shape": [1, 1, 4]}, b"\0" * 32, "dtype"),
        ({"dtype": "float32", "shape": [1, 4]}, b"\0" * 16, "shape"),
        ({"dtype": "float32", "shape": [1, 1, 5]}, b"\0" * 20, "axis"),
        ({"dtype": "float32", "shape": [1, 1, 4]}, b"\0" * 15, "payload is 15 bytes"),
        ({"dtype": "float32", "shape": [1, -1, 4]}, b"", "positive"),
        ({"dtype": "float32", "shape": [1, True, 4]}, b"\0" * 16, "positive"),
        ({"dtype": "float32", "shape": "1,1,4"}, b"\0" * 16, "shape"),
        ({"dtype": "float32", "shape": [1, 1000, 4]}, b"\0" * 16000, "limit"),
    ],
)
def test_check_tensor_rejects(header, payload, reason):
    with pytest.raises(WireError, match=reason):
        check_tensor(header, payload, dtypes="float32", ndim=3, fixed={-1: 4}, max_elems=1000)


def test_tensor_glue_roundtrip():
    torch = pytest.importorskip("torch")
    from prismn.wire import tensor_payload, to_tensor

    for dt in (torch.float32, torch.bfloat16, torch.float16, torch.int32):
        t = (torch.randn(1, 3, 5) * 100).to(dt)
        name, shape, mv = tensor_payload(t)
        back = to_tensor(bytes(mv), name, tuple(shape))
        assert back.dtype == dt and torch.equal(back, t)


def test_prefix_is_16_bytes():
    assert PREFIX.size == 16 and struct.calcsize("!4sIQ") == 16
