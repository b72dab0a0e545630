from prismn.model import catalog
from prismn.placement.hackathon_estimator import capacity, estimate, proportional_split

LLAMA_32_1B = {
    "vocab_size": 128256, "hidden_size": 2048, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64, "intermediate_size": 8192, "tie_word_embeddings": True,
}


def test_llama_32_1b_figures_from_the_seed_spec():
    est = estimate(LLAMA_32_1B, bits=16)
    assert round(est.per_layer_gb, 3) == 0.207
    assert round(est.embedding_gb, 3) == 0.489
    assert round(est.total_gb, 2) == 3.80
    assert est.per_layer_gb == 0.207039  # rounded to 6 decimals, as the seed did
    assert est.embedding_gb == 0.489258


def test_catalog_config_gives_the_same_figures():
    est = estimate(catalog()["meta-llama/Llama-3.2-1B"], bits=16)
    assert (est.per_layer_gb, est.embedding_gb, round(est.total_gb, 2)) == (0.207039, 0.489258, 3.80)


def test_untied_model_counts_the_head_in_the_embedding():
    cfg = {**LLAMA_32_1B, "tie_word_embeddings": False}
    assert estimate(cfg).embedding_gb == round(2 * 0.489258, 6) or abs(estimate(cfg).embedding_gb - 0.978516) < 1e-6


def test_capacity_with_and_without_embedding():
    est = estimate(LLAMA_32_1B)
    assert capacity(4.0, est, embedding_peer=False) == 17  # 3.6 / 0.20704 = 17.39
    assert capacity(4.0, est, embedding_peer=True) == 15  # (3.6 - 0.489258) / 0.20704 = 15.02
    assert capacity(0.4, est, embedding_peer=True) == 0


def test_proportional_split_rule():
    # caps 15, 8, 4 over 16 layers: int(16*15/27)=8, int(8*8/12)=5, last takes min(4, 3)
    assert proportional_split(["c", "a", "b"], {"c": 15, "a": 8, "b": 4}, 16) == [("c", 8), ("a", 5), ("b", 3)]
    # a peer with capacity whose share rounds to 0 is raised to 1
    assert proportional_split(["a", "b", "c"], {"a": 100, "b": 1, "c": 1}, 4) == [("a", 3), ("b", 1)]
