"""Stages in separate processes over TCP and over Iroh (QUIC, relays off, loopback) give exactly the
unsplit model's logits and greedy tokens."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

ARCHS = ("llama", "qwen2", "gpt2")
N_LAYERS = 6
SPLITS = {2: [(0, 3), (3, 6)], 3: [(0, 1), (1, 4), (4, 6)], 4: [(0, 2), (2, 3), (3, 5), (5, 6)]}
PROMPT = [5, 17, 230, 4, 99, 512, 3, 77, 801, 12, 45]
NEW = 32


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("k", sorted(SPLITS))
def test_split_matches_unsplit(arch, k, tiny, stage_pool):
    from prismn.runtime.client import Hop, Pipeline

    pool, transport = stage_pool
    ckpt, full = tiny[arch]
    assert SPLITS[k][-1][1] == N_LAYERS
    hops = [Hop(f"s{i}", pool[i].address, layers) for i, layers in enumerate(SPLITS[k])]
    ids = torch.tensor([PROMPT])
    with torch.no_grad():
        ref_logits = full(ids).logits[0]
        ref = full.generate(ids, max_new_tokens=NEW, do_sample=False, output_logits=True,
                            return_dict_in_generate=True)
    ref_tokens = ref.sequences[0, len(PROMPT):].tolist()
    assert len(ref_tokens) == NEW

    with Pipeline(hops, transport=transport) as pipe:
        infos = pipe.load(str(ckpt))
        assert len({info["pid"] for info in infos}) == k  # really k processes
        # prefill logits for every prompt position
        evs = list(pipe.generate(PROMPT, max_new_tokens=1, return_logits="all"))
        d_prefill = (evs[0].logits - ref_logits).abs().max().item()
        assert d_prefill <= 1e-5, d_prefill
        # 32 greedy tokens with per-stage KV caches, and each step's logits
        evs = list(pipe.generate(PROMPT, max_new_tokens=NEW, return_logits=True))
        tokens = [e.token for e in evs]
        assert tokens == ref_tokens
        d_steps = max((e.logits[-1] - r[0]).abs().max().item() for e, r in zip(evs, ref.logits, strict=True))
        assert d_steps <= 1e-5, d_steps
        # every stage freed the session when the generation ended
        infos = pipe._run(pipe.client.refresh_info())
        assert [i["sessions"]["open"] for i in infos] == [0] * k


@pytest.mark.slow
def test_stages_report_observed_decode_timing_under_the_served_name(tiny, bare_pool):
    """A loaded stage times the decode steps it serves and labels them with the model's served name:
    what a peer reports to the coordinator in place of its start-up benchmark (see PeerAgent)."""
    from prismn.runtime.client import Hop, Pipeline

    ckpt, _ = tiny["llama"]
    hops = [Hop(f"s{i}", bare_pool[i].address, layers) for i, layers in enumerate(SPLITS[2])]
    with Pipeline(hops) as pipe:
        pipe.load(str(ckpt), name="tiny-served")
        assert all(info["observed"] is None for info in pipe.infos)  # nothing served yet
        list(pipe.generate(PROMPT, max_new_tokens=20))
        infos = pipe._run(pipe.client.refresh_info())
    for info in infos:
        seen = info["observed"]
        assert seen["model"] == "tiny-served" and seen["dtype"] == "fp32"
        assert seen["steps"] == 19  # decode steps only: the prefill is not a per-token time
        assert 0 < seen["s_per_layer"] <= seen["s_step"]
        assert "observed" in seen["source"]


@pytest.mark.slow
def test_a_broken_link_fails_one_generation_and_the_next_reconnects(tiny, stage_pool):
    """A dropped connection fails the generation in flight with one clear error; the client starts over
    (reconnects, re-reads the stages) on the next generation instead of staying broken."""
    from prismn.runtime.client import Hop, Pipeline, PipelineError

    pool, transport = stage_pool
    ckpt, _ = tiny["llama"]
    hops = [Hop(f"s{i}", pool[i].address, layers) for i, layers in enumerate(SPLITS[2])]
    with Pipeline(hops, transport=transport) as pipe:
        pipe.load(str(ckpt))
        want = [e.token for e in pipe.generate(PROMPT, max_new_tokens=4)]
        gen = pipe.generate(PROMPT, max_new_tokens=4)
        next(gen)
        pipe._run(pipe.client.conns[1].close())  # the link to the last stage drops mid-generation
        with pytest.raises(PipelineError, match="peer s1"):
            list(gen)
        assert pipe.client.conns == []  # all dropped: nothing half-connected is left to reuse
        assert [e.token for e in pipe.generate(PROMPT, max_new_tokens=4)] == want
        # a link found closed before a generation starts is simply re-dialled
        pipe._run(pipe.client.conns[0].close())
        assert [e.token for e in pipe.generate(PROMPT, max_new_tokens=4)] == want
