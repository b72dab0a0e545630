"""Hugging Face config.json excerpts for scripts/build_data.py.

Values are copied from each repository's published config.json on the Hugging Face Hub (only the
fields placement needs). Keys a config.json does not contain but transformers fills with a default
(e.g. GPT-2's tie_word_embeddings / n_inner) are listed in "_defaults_filled".
"""

_LLAMA31 = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=128256,
    max_position_embeddings=131072, torch_dtype="bfloat16", rope_theta=500000.0, rms_norm_eps=1e-05,
    tie_word_embeddings=False,
)

_SMOL_135 = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=576,
    intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
    tie_word_embeddings=True, max_position_embeddings=8192, torch_dtype="bfloat16", rope_theta=100000.0,
    rms_norm_eps=1e-05,
)

_SMOL_17 = dict(
    architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=49152, hidden_size=2048,
    intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32, num_key_value_heads=32,
    tie_word_embeddings=True, max_position_embeddings=8192, torch_dtype="bfloat16", rope_theta=130000.0,
    rms_norm_eps=1e-05,
)

MODELS = {
    # https://huggingface.co/meta-llama/Llama-3.2-1B/blob/main/config.json (Llama 3.2 Community Licence)
    "meta-llama/Llama-3.2-1B": dict(
        _LLAMA31, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, tie_word_embeddings=True),
    # https://huggingface.co/meta-llama/Llama-3.2-3B/blob/main/config.json
    "meta-llama/Llama-3.2-3B": dict(
        _LLAMA31, hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
        num_key_value_heads=8, head_dim=128, tie_word_embeddings=True),
    # https://huggingface.co/meta-llama/Llama-3.1-8B/blob/main/config.json (Llama 3.1 Community Licence)
    "meta-llama/Llama-3.1-8B": dict(
        _LLAMA31, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8),
    # https://huggingface.co/meta-llama/Llama-3.1-70B/blob/main/config.json
    "meta-llama/Llama-3.1-70B": dict(
        _LLAMA31, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
        num_key_value_heads=8),
    # https://huggingface.co/meta-llama/Llama-3.1-405B/blob/main/config.json
    "meta-llama/Llama-3.1-405B": dict(
        _LLAMA31, hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128,
        num_key_value_heads=8),
    # https://huggingface.co/Qwen/Qwen2.5-7B/blob/main/config.json (Apache-2.0)
    "Qwen/Qwen2.5-7B": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, hidden_size=3584,
        intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
        tie_word_embeddings=False, max_position_embeddings=131072, torch_dtype="bfloat16",
        rope_theta=1000000.0, rms_norm_eps=1e-06),
    # https://huggingface.co/Qwen/Qwen2.5-72B/blob/main/config.json (Qwen licence)
    "Qwen/Qwen2.5-72B": dict(
        architectures=["Qwen2ForCausalLM"], model_type="qwen2", vocab_size=152064, hidden_size=8192,
        intermediate_size=29568, num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8,
        tie_word_embeddings=False, max_position_embeddings=131072, torch_dtype="bfloat16",
        rope_theta=1000000.0, rms_norm_eps=1e-05),
    # https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json (Apache-2.0)
    "mistralai/Mistral-7B-v0.1": dict(
        architectures=["MistralForCausalLM"], model_type="mistral", vocab_size=32000, hidden_size=4096,
        intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        tie_word_embeddings=False, max_position_embeddings=32768, torch_dtype="bfloat16",
        rope_theta=10000.0, rms_norm_eps=1e-05, sliding_window=4096),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-135M/blob/main/config.json (Apache-2.0)
    "HuggingFaceTB/SmolLM2-135M": dict(_SMOL_135),
    "HuggingFaceTB/SmolLM2-135M-Instruct": dict(_SMOL_135),
    # https://huggingface.co/HuggingFaceTB/SmolLM2-1.7B/blob/main/config.json (Apache-2.0)
    "HuggingFaceTB/SmolLM2-1.7B": dict(_SMOL_17),
    "HuggingFaceTB/SmolLM2-1.7B-Instruct": dict(_SMOL_17),
    # https://huggingface.co/openai-community/gpt2/blob/main/config.json (MIT)
    "openai-community/gpt2": dict(
        architectures=["GPT2LMHeadModel"], model_type="gpt2", vocab_size=50257, n_embd=768, n_layer=12,
        n_head=12, n_positions=1024, n_ctx=1024, n_inner=None, activation_function="gelu_new",
        layer_norm_epsilon=1e-05, tie_word_embeddings=True,
        _defaults_filled=["n_inner", "tie_word_embeddings"]),
}

ALIASES = {
    "gpt2": "openai-community/gpt2",
    "llama-3.2-1b": "meta-llama/Llama-3.2-1B",
    "llama-3.2-3b": "meta-llama/Llama-3.2-3B",
    "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
    "llama-3.1-405b": "meta-llama/Llama-3.1-405B",
    "meta-llama/meta-llama-3.1-8b": "meta-llama/Llama-3.1-8B",
    "meta-llama/meta-llama-3.1-70b": "meta-llama/Llama-3.1-70B",
    "meta-llama/meta-llama-3.1-405b": "meta-llama/Llama-3.1-405B",
    "qwen2.5-7b": "Qwen/Qwen2.5-7B",
    "qwen2.5-72b": "Qwen/Qwen2.5-72B",
    "mistral-7b": "mistralai/Mistral-7B-v0.1",
    "mistral-7b-v0.1": "mistralai/Mistral-7B-v0.1",
    "smollm2-135m": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "smollm2-1.7b": "HuggingFaceTB/SmolLM2-1.7B-Instruct",
}
