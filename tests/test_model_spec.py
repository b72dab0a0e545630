import json

import pytest

from prismn.errors import ModelSpecError
from prismn.model import GIB, load_model_spec

REQUIRED = ["meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B",
            "meta-llama/Llama-3.1-70B", "meta-llama/Llama-3.1-405B", "Qwen/Qwen2.5-7B", "Qwen/Qwen2.5-72B",
            "mistralai/Mistral-7B-v0.1", "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-1.7B",
            "openai-community/gpt2"]


@pytest.mark.parametrize("mid", REQUIRED)
def test_catalog_models_resolve(mid):
    s = load_model_spec(mid)
    assert s.n_layers > 0 and s.layer_bytes > 0


@pytest.mark.parametrize("mid,params_b", [("meta-llama/Llama-3.1-8B", 8.03), ("meta-llama/Llama-3.1-70B", 70.6),
                                          ("Qwen/Qwen2.5-7B", 7.62), ("mistralai/Mistral-7B-v0.1", 7.24),
                                          ("HuggingFaceTB/SmolLM2-135M", 0.1345), ("meta-llama/Llama-3.2-1B", 1.236),
                                          ("openai-community/gpt2", 0.1244)])
def test_parameter_counts_match_published_sizes(mid, params_b):
    s = load_model_spec(mid, "fp32")
    assert s.total_weight_bytes / 4 / 1e9 == pytest.approx(params_b, rel=0.01)


def test_gqa_kv_bytes_and_activation_bytes():
    s = load_model_spec("meta-llama/Llama-3.1-8B", "bf16")
    assert s.kv_bytes_per_token_per_layer() == 2 * 8 * 128 * 2  # K and V, 8 kv heads of 128, bf16
    assert s.activation_bytes_per_token == 4096 * 2
    assert s.layer_flops_per_token(0) == 2 * s.layer_params
    assert s.layer_flops_per_token(1000) > s.layer_flops_per_token(0)


def test_dtypes_scale_bytes():
    b16 = load_model_spec("meta-llama/Llama-3.1-8B", "bf16").layer_bytes
    assert load_model_spec("meta-llama/Llama-3.1-8B", "fp32").layer_bytes == 2 * b16
    assert load_model_spec("meta-llama/Llama-3.1-8B", "int8").layer_bytes == b16 / 2
    assert load_model_spec("meta-llama/Llama-3.1-8B", "int4").layer_bytes == b16 / 4
    q4 = load_model_spec("meta-llama/Llama-3.1-8B", "int4")
    assert q4.act_bytes == 2.0  # activations and KV stay fp16


def test_tied_and_untied_heads():
    tied = load_model_spec("meta-llama/Llama-3.2-1B", "bf16")
    untied = load_model_spec("meta-llama/Llama-3.1-8B", "bf16")
    assert tied.tied and not untied.tied
    assert tied.total_weight_bytes < tied.n_layers * tied.layer_bytes + tied.embed_bytes + tied.head_bytes


def test_aliases_case_and_config_paths(tmp_path):
    assert load_model_spec("gpt2").name == "openai-community/gpt2"
    assert load_model_spec("META-LLAMA/llama-3.1-8b").n_layers == 32
    cfg = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
           "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert load_model_spec(str(tmp_path)).n_layers == 3
    assert load_model_spec(str(tmp_path / "config.json")).qkv_bias


def test_errors_are_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError, match="offline"):
        load_model_spec("someorg/unknown-model")
    with pytest.raises(ModelSpecError, match="not in the embedded catalog"):
        load_model_spec("nonsense")
    with pytest.raises(ModelSpecError, match="no config.json"):
        load_model_spec(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "bert", "vocab_size": 1}')
    with pytest.raises(ModelSpecError, match="not supported"):
        load_model_spec(str(tmp_path))
    with pytest.raises(ModelSpecError, match="unknown dtype"):
        load_model_spec("gpt2", "fp8")


def test_llama_8b_sizes():
    s = load_model_spec("meta-llama/Llama-3.1-8B", "bf16")
    assert s.layer_bytes / GIB == pytest.approx(0.406, abs=0.002)
    assert s.embed_bytes / GIB == pytest.approx(0.978, abs=0.002)
