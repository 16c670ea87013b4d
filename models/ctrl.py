"""CTRL (Salesforce/ctrl): the pre-LN LayerNorm layer with biased q/k/v/o projections (Wq, Wk, Wv, dense) and an
ungated ReLU MLP (ffn.0, ffn.2) dff wide, the embeddings times sqrt(n_embd) plus the original Transformer's sinusoids
(`position_embedding` "sinusoidal_vaswani"), its layers' norms of a fixed epsilon (1e-6) and its final one of
layer_norm_epsilon (`final_norm_eps`), its output head tied to the embeddings by default and always biased."""

from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import dense, model_ends
from jaxllm.models.gpt2 import GPT2LMHeadModel, spelled
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec


def ctrl_names(raw: dict) -> dict:
    """CTRL's spellings as the common ones; the MLP is dff wide, whatever intermediate_size says (its code reads dff)."""
    out = spelled(raw, (("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"),
                        ("n_positions", "max_position_embeddings"), ("layer_norm_epsilon", "layer_norm_eps")))
    return dict(out, intermediate_size=raw["dff"])


def ctrl_defaults(raw: dict) -> dict:
    return dict(position_embedding="sinusoidal_vaswani", embed_scale=float(raw["hidden_size"]) ** 0.5, embed_scale_exact=True,
                qkv_bias=True, o_bias=True, gated_mlp=False, mlp_bias=True, hidden_act="relu", head_bias=True, norm_eps=1e-6,
                final_norm_eps=float(raw["layer_norm_eps"]))


def ctrl_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = model_ends(cfg, "transformer.w.weight", "transformer.layernorm")
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}.", ("model", "layers", i)
        for theirs, norm in (("layernorm1", "input_layernorm"), ("layernorm2", "post_attention_layernorm")):
            specs += [WeightSpec(f"{hf}{theirs}.{p}", ours + (norm, p)) for p in ("weight", "bias")]
        for theirs, name in (("Wq", "q_proj"), ("Wk", "k_proj"), ("Wv", "v_proj"), ("dense", "o_proj")):
            specs += dense(f"{hf}multi_head_attention.{theirs}", ours + ("self_attn", name), Linear(2 if name == "o_proj" else 1))
        specs += dense(f"{hf}ffn.0", ours + ("mlp", "up_proj")) + dense(f"{hf}ffn.2", ours + ("mlp", "down_proj"))
    return specs


ARCHITECTURES = (Architecture(
    name="CTRLLMHeadModel", module=GPT2LMHeadModel, weight_map=ctrl_weight_map, hf_model_type="ctrl",
    # heads of n_embd / n_head, each with its own k/v; the MLP dff wide, ReLU whatever hidden_act says
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "hidden_act", "intermediate_size"),
    not_null=("max_position_embeddings", "tie_word_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "layer_norm_epsilon", "dff"),
    common_names=ctrl_names, config_defaults=ctrl_defaults, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    hf_defaults=dict(dff=8192, layer_norm_epsilon=1e-6, tie_word_embeddings=True, n_positions=256),
    # the final norm's epsilon apart from the layers' 1e-6; tied, the head's bias its own
    tiny_config=dict(vocab_size=128, n_embd=64, dff=96, n_layer=3, n_head=4, n_positions=64, layer_norm_epsilon=1e-3,
                     bos_token_id=1, eos_token_id=2),
),)
