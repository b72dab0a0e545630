"""Malformed, truncated, oversized and wrong-dtype frames close that connection; the peer keeps serving."""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest

from prismn.transport import parse_address
from prismn.wire import MAGIC, PREFIX, encode_frame

torch = pytest.importorskip("torch")
PROMPT = [3, 14, 15, 92, 65]


class Raw:
    """A blocking raw-socket peer for hand-made frames."""

    def __init__(self, address: str):
        self.s = socket.create_connection(parse_address(address), timeout=10)

    def send(self, data: bytes) -> None:
        self.s.sendall(data)

    def frame(self, header: dict, payload: bytes = b"") -> None:
        self.send(encode_frame(header, payload))

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.s.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def read(self) -> dict:
        _, hl, pl = PREFIX.unpack(self._exact(PREFIX.size))
        h = json.loads(self._exact(hl))
        self._exact(pl)
        return h

    def closed_by_peer(self, timeout: float = 10.0) -> bool:
        self.s.settimeout(timeout)
        try:
            while True:
                data = self.s.recv(65536)
                if not data:
                    return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.s.close()


def _info(address: str) -> dict:
    r = Raw(address)
    r.frame({"kind": "info"})
    h = r.read()
    r.close()
    return h


def _rejected(address: str) -> int:
    return _info(address)["stats"]["rejected_frames"]


@pytest.mark.slow
def test_bad_frames_rejected_peer_keeps_serving(tiny, bare_pool):
    from prismn.runtime.client import Hop, Pipeline

    ckpt, full = tiny["llama"]
    a, b = bare_pool[0].address, bare_pool[1].address
    hops = [Hop("s0", a, (0, 3)), Hop("s1", b, (3, 6))]
    with torch.no_grad():
        ref = full.generate(torch.tensor([PROMPT]), max_new_tokens=8, do_sample=False)[0, len(PROMPT):].tolist()
    with Pipeline(hops) as pipe:
        pipe.load(str(ckpt))
        assert [e.token for e in pipe.generate(PROMPT, max_new_tokens=8)] == ref
        hidden = pipe.infos[1]["stage"]["hidden_size"]

        # a live client session on the middle stage, owned by `owner`
        owner = Raw(b)
        owner.frame({"kind": "open", "session": "victim", "max_context": 32,
                     "sampling": {"temperature": 0}})
        assert owner.read()["kind"] == "opened"

        before_a, before_b = _rejected(a), _rejected(b)
        good_act = {"kind": "step", "session": "victim", "step": 0, "pos": 0, "dtype": "float32",
                    "shape": [1, 2, hidden]}
        bad = [
            (a, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"),  # not a Prismn peer
            (a, PREFIX.pack(MAGIC, 5, 0) + b"{nope"),  # header not JSON
            (a, PREFIX.pack(MAGIC, 2, 1 << 40) + b"{}"),  # oversized payload, refused before reading it
            (a, PREFIX.pack(MAGIC, 1 << 30, 0)),  # oversized header
            (a, encode_frame({"kind": "teleport"})),  # unknown kind
            # first stage: float "token ids", and ids outside the vocabulary
            (a, encode_frame({"kind": "open", "session": "t1", "max_context": 16, "next": b})
             + encode_frame({"kind": "step", "session": "t1", "step": 0, "pos": 0, "dtype": "float32",
                             "shape": [2]}, b"\0" * 8)),
            (a, encode_frame({"kind": "open", "session": "t2", "max_context": 16, "next": b})
             + encode_frame({"kind": "step", "session": "t2", "step": 0, "pos": 0, "dtype": "int32",
                             "shape": [1]}, struct.pack("<i", 10**6))),
            # middle stage: wrong dtype, wrong hidden size, payload shorter than the shape says
            (b, encode_frame({**good_act, "dtype": "float16"}, b"\0" * (2 * hidden * 2))),
            (b, encode_frame({**good_act, "shape": [1, 2, hidden + 1]}, b"\0" * (2 * (hidden + 1) * 4))),
        ]
        for addr, data in bad:
            r = Raw(addr)
            r.send(data)
            if addr == a and b"open" in data:
                assert r.read()["kind"] == "opened"
            if not r.closed_by_peer():
                open("/tmp/rt/fail.txt", "w").write("\n".join(bare_pool[1].stderr_lines + ["----"] + bare_pool[0].stderr_lines))
                raise AssertionError(data[:40])
            r.close()
        # truncated: promise 64 payload bytes, send 10, hang up
        r = Raw(b)
        hdr = json.dumps({**good_act, "shape": [1, 1, 16]}).encode()
        r.send(PREFIX.pack(MAGIC, len(hdr), 64) + hdr + b"\0" * 10)
        r.close()
        time.sleep(0.3)
        assert _rejected(a) - before_a == 7
        assert _rejected(b) - before_b == 3
        # a malformed frame naming a live session fails that session and tells its owner
        err = owner.read()
        assert err["kind"] == "error" and err["session"] == "victim" and "malformed" in err["message"]
        owner.close()
        # the peers are alive and still compute the same tokens
        assert bare_pool[0].alive() and bare_pool[1].alive()
        assert [e.token for e in pipe.generate(PROMPT, max_new_tokens=8)] == ref
        info_b = pipe._run(pipe.client.refresh_info())[1]
        assert info_b["sessions"]["open"] == 0


@pytest.mark.slow
def test_a_bare_stage_with_a_load_token_loads_only_for_its_holder(tiny):
    """Loading reads files and fills memory on the peer: with --load-token only the holder may ask."""
    from prismn.runtime.client import Hop, Pipeline, PipelineError
    from prismn.runtime.local import LocalStage

    ckpt = str(tiny["llama"][0])
    s = LocalStage(["--port", "0", "--no-bench", "--load-token", "s3cret", "--log-level", "warning"], threads=1)
    try:
        assert _info(s.address)["load_needs_token"] is True
        for token in (None, "wrong"):
            with Pipeline([Hop("s", s.address, (0, 6))]) as pipe, pytest.raises(PipelineError, match="load refused"):
                pipe.load(ckpt, token=token)
        assert _info(s.address)["stage"] is None  # nothing was loaded
        with Pipeline([Hop("s", s.address, (0, 6))]) as pipe:
            pipe.load(ckpt, token="s3cret")
            assert len(list(pipe.generate(PROMPT, max_new_tokens=3))) == 3
    finally:
        s.stop()
