"""GPT-Neo: GPT-2's model (learned positions, LayerNorms, tied embeddings) with nn.Linear weights,
unbiased q/k/v, a biased out_proj, scores not scaled by head_dim ** -0.5, and layers of global
(causal) or local attention (a window of window_size keys) as attention_types lists them: pairs
[[types, repeat], ...], each types list repeated (24 layers alternating global and local by default)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import dense
from jaxllm.models.gpt2 import GPT2LMHeadModel, gpt2_layout, spelled
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec

LAYER_TYPES = {"global": "full_attention", "local": "sliding_attention"}


def neo_layer_types(raw: dict) -> list[str]:
    """attention_types expanded as GPTNeoConfig expands it, one type per layer, or a one-line error."""
    types = raw.get("attention_types") or [[["global", "local"], 12]]
    try:
        layers = [kind for kinds, repeat in types for _ in range(repeat) for kind in kinds]
    except (TypeError, ValueError):
        layers = None
    if layers is None or any(kind not in LAYER_TYPES for kind in layers):
        raise ConfigError(f"config.json attention_types {str(types)[:60]} must be pairs [[\"global\" or \"local\", ...], repeat]: "
                          "correct it")
    n = raw.get("num_hidden_layers")
    if len(layers) != n:
        raise ConfigError(f"config.json attention_types give {len(layers)} layers for num_layers={n}: transformers refuses that; "
                          "make them agree")
    return [LAYER_TYPES[kind] for kind in layers]


def neo_names(raw: dict) -> dict:
    """GPT-Neo's own spellings as the common ones; its MLP intermediate_size wide, else 4 x hidden_size;
    attention_types and window_size as layer_types and sliding_window."""
    out = spelled(raw, (("num_layers", "num_hidden_layers"), ("num_heads", "num_attention_heads"),
                        ("layer_norm_epsilon", "layer_norm_eps"), ("activation_function", "hidden_act")))
    e = out.get("hidden_size")
    out["intermediate_size"] = raw.get("intermediate_size") or (4 * e if isinstance(e, int) else None)
    if isinstance(out.get("num_hidden_layers"), int):
        out["layer_types"] = neo_layer_types(out)
        out["sliding_window"] = raw.get("window_size")
    return out


def neo_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    def attention(hf, ours):
        specs = [s for name in ("q_proj", "k_proj", "v_proj") for s in dense(f"{hf}attn.attention.{name}", ours + ("self_attn", name),
                                                                           bias=False)]
        return specs + dense(f"{hf}attn.attention.out_proj", ours + ("self_attn", "o_proj"), Linear(2))

    return gpt2_layout(cfg, Linear(), attention)


ARCHITECTURES = (Architecture(
    name="GPTNeoForCausalLM", module=GPT2LMHeadModel, weight_map=neo_weight_map, hf_model_type="gpt_neo",
    # heads of hidden_size / num_heads, each with its own k/v; its windows attention_types' and window_size's
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "hidden_act", "use_sliding_window"),
    not_null=("max_position_embeddings", "tie_word_embeddings", "num_layers", "num_heads", "layer_norm_epsilon",
              "activation_function", "window_size"),
    common_names=neo_names, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    config_defaults=lambda raw: dict(position_embedding="learned", qkv_bias=False, o_bias=True, gated_mlp=False, mlp_bias=True,
                                     attn_scale=1.0),
    hf_defaults=dict(activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True, max_position_embeddings=2048,
                     window_size=256),
    # GPT-Neo 125M's old checkpoints keep each attention's causal-mask buffers (transformers ignores them)
    ignore=(r".*\.attn\.attention\.bias$", r".*\.attn\.attention\.masked_bias$"),
    # global and local layers, a window shorter than the test sequences
    tiny_config=dict(vocab_size=128, hidden_size=64, num_layers=3, num_heads=4, intermediate_size=96, max_position_embeddings=64,
                     attention_types=[[["global", "local"], 1], [["local"], 1]], window_size=8, activation_function="gelu_new",
                     layer_norm_epsilon=1e-5, bos_token_id=1, eos_token_id=2),
),)
