"""Over TCP: session bounds, freeing on completion/failure/disconnect/idle; emulated wide-area delay over
TCP and Iroh."""

from __future__ import annotations

import time

import pytest

from prismn.transport import RttMatrix

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def bounded_stage(tiny):
    from prismn.runtime.local import LocalStage

    s = LocalStage(["--checkpoint", str(tiny["llama"][0]), "--port", "0", "--no-bench", "--max-sessions", "2",
                    "--max-context", "64", "--idle-timeout", "1", "--log-level", "warning"], threads=1)
    try:
        yield s
    finally:
        s.stop()


def _raw(addr):
    from test_malformed import Raw  # the raw-socket peer of the malformed-frame tests

    return Raw(addr)


@pytest.mark.slow
def test_session_bounds_and_freeing(bounded_stage):
    from prismn.runtime.client import Hop, Pipeline, PipelineError

    addr = bounded_stage.address
    a, b = _raw(addr), _raw(addr)
    for r, sid in ((a, "one"), (b, "two")):
        r.frame({"kind": "open", "session": sid, "max_context": 32})
        assert r.read()["kind"] == "opened"
    c = _raw(addr)
    c.frame({"kind": "open", "session": "three", "max_context": 32})
    err = c.read()
    assert err["kind"] == "error" and "stage is full" in err["message"] and "--max-sessions" in err["message"]
    c.frame({"kind": "open", "session": "big", "max_context": 65})
    assert "allows 64" in c.read()["message"]
    # a client that disconnects frees its sessions
    a.close()
    time.sleep(0.3)
    c.frame({"kind": "info"})
    assert c.read()["sessions"]["open"] == 1
    # idle sessions expire (idle timeout 1 s)
    time.sleep(1.8)
    c.frame({"kind": "info"})
    info = c.read()
    assert info["sessions"]["open"] == 0 and info["sessions"]["freed"] >= 2
    b.close()
    c.close()
    # a generation asking for more context than the stage allows fails with one clear line
    with Pipeline([Hop("s", addr)]) as pipe:
        with pytest.raises(PipelineError, match="allows 64"):
            list(pipe.generate(list(range(1, 40)), max_new_tokens=30))
        # and a normal one completes and frees its cache
        assert len(list(pipe.generate([1, 2, 3], max_new_tokens=5))) == 5
        assert pipe._run(pipe.client.refresh_info())[0]["sessions"]["open"] == 0


@pytest.mark.slow
def test_emulated_delay_end_to_end(tiny, stage_pool):
    from prismn.runtime.client import Hop, Pipeline

    pool, transport = stage_pool
    hops = [Hop("oslo-1", pool[0].address, (0, 3)), Hop("paris-1", pool[1].address, (3, 6))]
    rtt = RttMatrix({"client": {"oslo-1": 20, "paris-1": 40}, "oslo-1": {"paris-1": 30}})
    one_way = (20 + 30 + 40) / 2 / 1000  # client->oslo, oslo->paris, paris->client
    with Pipeline(hops, rtt=rtt, transport=transport) as pipe:
        pipe.load(str(tiny["llama"][0]))
        list(pipe.generate([1, 2, 3], max_new_tokens=3))  # warm up
        list(pipe.generate([1, 2, 3, 4], max_new_tokens=12))
        st = pipe.stats
        assert st.emulated and st.as_dict()["emulated"] is True
        for lat, comp in zip(st.step_s, st.compute_s, strict=True):
            assert one_way + comp <= lat <= one_way + comp + 0.025, (lat, comp)  # generous: CI boxes are busy
