"""Stage building (in process): only the stage's tensors, transformers' own layers, exact results."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from prismn.runtime import RuntimeStageError  # noqa: E402
from prismn.runtime.checkpoint import Checkpoint, resolve_checkpoint  # noqa: E402
from prismn.runtime.stage import Sampler, Stage, parse_layers  # noqa: E402


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_in_process_split_is_bit_exact(arch, tiny):
    ckpt_dir, full = tiny[arch]
    ck = Checkpoint(ckpt_dir)
    stages = [Stage(ck, 0, 2), Stage(ck, 2, 5), Stage(ck, 5, 6)]
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7]])
    h = ids
    for s in stages:
        h = s.forward(h, s.new_cache(), 0, all_logits=True)
    with torch.no_grad():
        ref = full(ids).logits
    assert (h - ref).abs().max().item() == 0.0


def test_stage_reads_only_its_tensors(tiny):
    ck = Checkpoint(tiny["llama"][0])
    names = {k for k, _ in ck.stage_tensor_names(2, 4, False, False)}
    assert names and all(k.startswith(("model.layers.2.", "model.layers.3.")) for k in names)
    first = {k for k, _ in ck.stage_tensor_names(0, 1, True, False)}
    assert "model.embed_tokens.weight" in first and "lm_head.weight" not in first
    last = {m for _, m in ck.stage_tensor_names(5, 6, False, True)}
    assert {"body.norm.weight", "lm_head.weight"} <= last
    assert ck.stage_bytes(2, 4, False, False) < ck.total_bytes() / 2


def test_tied_head_uses_embedding(tiny):
    ck = Checkpoint(tiny["qwen2"][0])
    assert ck.tied
    pairs = dict((m, k) for k, m in ck.stage_tensor_names(4, 6, False, True))
    assert pairs["lm_head.weight"] == "model.embed_tokens.weight"
    gpt = Checkpoint(tiny["gpt2"][0])
    assert gpt.tied and gpt.prefix == "transformer."


def test_middle_stage_holds_no_embedding_or_head(tiny):
    st = Stage(Checkpoint(tiny["gpt2"][0]), 2, 4)
    assert st.lm_head is None and st.body.wte is None
    names = [n for n, _ in st.body.named_parameters()]
    assert all(n.startswith("h.") for n in names)


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_runs(dtype, tiny):
    ck = Checkpoint(tiny["llama"][0])
    a, b = Stage(ck, 0, 3, dtype=dtype), Stage(ck, 3, 6, dtype=dtype)
    h = a.forward(torch.tensor([[1, 2, 3]]), a.new_cache(), 0)
    assert h.dtype == getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[dtype])
    out = b.forward(h, b.new_cache(), 0)
    assert out.shape == (1, 1, 1000) and torch.isfinite(out).all()


def test_bad_ranges_and_flags(tiny):
    ck = Checkpoint(tiny["llama"][0])
    with pytest.raises(RuntimeStageError, match="outside the model's 0:6"):
        Stage(ck, 4, 9)
    with pytest.raises(RuntimeStageError, match="outside"):
        Stage(ck, 3, 3)
    with pytest.raises(RuntimeStageError, match="embedding belongs"):
        Stage(ck, 2, 4, embedding=True)
    with pytest.raises(RuntimeStageError, match="must hold the head"):
        Stage(ck, 3, 6, head=False)
    with pytest.raises(RuntimeStageError, match="START:END"):
        parse_layers("3-4")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeStageError, match="CUDA is not available.*--device cpu"):
            Stage(ck, 0, 6, device="cuda")


def test_unsupported_architecture_is_one_line(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2,
                                                      "hidden_size": 8, "vocab_size": 10}))
    with pytest.raises(RuntimeStageError, match="model_type 'bert' is not supported.*llama"):
        Checkpoint(tmp_path)


def test_missing_checkpoint_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PRISMN_HOME", str(tmp_path))
    with pytest.raises(RuntimeStageError, match="prismn model prepare smollm2-135m"):
        resolve_checkpoint("smollm2-135m")
    with pytest.raises(RuntimeStageError, match="not found"):
        resolve_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "c").mkdir()
    with pytest.raises(RuntimeStageError, match="no config.json"):
        resolve_checkpoint(str(tmp_path / "c"))


def test_corrupt_safetensors_is_refused(tiny, tmp_path):
    import shutil

    d = tmp_path / "ck"
    shutil.copytree(tiny["llama"][0], d)
    st = next(d.glob("*.safetensors"))
    data = bytearray(st.read_bytes())
    st.write_bytes(bytes(data[: len(data) // 2]))  # cut in half
    with pytest.raises(RuntimeStageError, match="corrupt|inconsistent"):
        Stage(Checkpoint(d), 0, 6)


def test_sampler_is_deterministic_given_seed():
    logits = torch.randn(1, 1, 500)
    assert Sampler(0.0)(logits) == int(logits.argmax())
    a = [Sampler(0.8, 0.9, seed=7)(logits) for _ in range(3)]
    s1, s2 = Sampler(0.8, 0.9, seed=7), Sampler(0.8, 0.9, seed=7)
    seq1 = [s1(logits) for _ in range(20)]
    seq2 = [s2(logits) for _ in range(20)]
    assert seq1 == seq2 and len(set(seq1)) > 1 and a[0] == seq1[0]
    # top_p tiny keeps only the most likely token
    assert all(Sampler(1.0, 1e-6, seed=i)(logits) == int(logits.argmax()) for i in range(5))
    with pytest.raises(RuntimeStageError):
        Sampler(-1)
    with pytest.raises(RuntimeStageError):
        Sampler(1.0, 0.0)


def test_self_benchmark_reports_contract_fields(tiny):
    from prismn.runtime.selfbench import self_benchmark

    st = Stage(Checkpoint(tiny["llama"][0]), 2, 4)
    m = self_benchmark(st, tokens=4, warmup=1)
    assert {"model", "dtype", "device", "s_per_layer", "s_head", "s_embed"} <= set(m)
    assert m["dtype"] == "fp32" and m["device"] == "cpu" and m["s_per_layer"] > 0
    assert sorted(m["estimated"]) == ["s_embed", "s_head"]
    json.dumps(m)


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gpt2"])
def test_batched_decode_equals_each_session_alone(arch, tiny):
    """Decode steps of sessions with different context lengths in ONE pass (left-padded caches, masked)
    give each session the logits it gets alone, to fp32 reduction-order tolerance, and the same tokens."""
    ck = Checkpoint(tiny[arch][0])
    s1, s2 = Stage(ck, 0, 3), Stage(ck, 3, 6)
    assert s1.batchable and s2.batchable
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11, 12, 13, 14, 15, 16], [3], [20, 21, 22]]

    def run(batched: bool):
        caches = [(s1.new_cache(), s2.new_cache()) for _ in prompts]
        toks, logits = [], []
        for i, p in enumerate(prompts):
            lg = s2.forward(s1.forward(torch.tensor([p]), caches[i][0], 0), caches[i][1], 0)
            toks.append([int(lg[0, -1].argmax())])
        pos = [len(p) for p in prompts]
        for _ in range(8):
            if batched:
                x = torch.tensor([t[-1] for t in toks])
                lg = s2.decode_batch(s1.decode_batch(x, [c[0] for c in caches], pos), [c[1] for c in caches], pos)
            else:
                lg = torch.cat([s2.forward(s1.forward(torch.tensor([[t[-1]]]), c[0], q), c[1], q)[:, -1]
                                for t, c, q in zip(toks, caches, pos, strict=True)])
            logits.append(lg)
            for i in range(len(prompts)):
                toks[i].append(int(lg[i].argmax()))
            pos = [q + 1 for q in pos]
        return toks, torch.stack(logits)

    alone, la = run(False)
    together, lb = run(True)
    assert together == alone
    assert (la - lb).abs().max().item() <= 1e-5


def test_self_benchmark_measures_board_power_when_a_reader_exists(tiny):
    """On a GPU the reader is NVML (torch.cuda.power_draw); here a fake sensor that reads high only right
    after a decode step ran: the decode phase and the idle phase are told apart, settle samples dropped."""
    import time as _time

    from prismn.runtime.selfbench import measure_power, power_reader, self_benchmark
    from prismn.swarm import Measurement

    assert power_reader("cpu") is None  # off CUDA: no reading, the datasheet applies
    last = {"t": -1e9}

    def step():
        last["t"] = _time.monotonic()

    def read():
        return 250.0 if _time.monotonic() - last["t"] < 0.02 else 60.0

    assert measure_power(step, read, active_s=0.3, idle_s=0.3, settle_s=0.1) == {"active_w": 250.0, "idle_w": 60.0}
    st = Stage(Checkpoint(tiny["llama"][0]), 2, 4)
    calls = {"n": 0}

    def sensor():
        calls["n"] += 1
        return 123.0

    m = self_benchmark(st, tokens=2, warmup=1, power=sensor, power_s=0.2)
    assert calls["n"] >= 2 and m["active_w"] == 123.0 and m["idle_w"] == 123.0 and "NVML" in m["power_source"]
    parsed = Measurement.model_validate(m)  # what a join carries
    assert parsed.active_w == 123.0 and parsed.idle_w == 123.0
    assert "active_w" not in self_benchmark(st, tokens=2, warmup=1, power=False)
