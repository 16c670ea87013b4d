"""GPT-2: learned absolute positions instead of rope, LayerNorm, biased attention and GELU MLP,
tied embeddings; the decoder layer is the shared sequential one with LayerNorms (scale_attn_by_inverse_layer_idx:
`attn_scale_by_layer`). The checkpoint stores Conv1D
weights as [in, out] (our layout already) with q/k/v fused along the output columns."""

from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer
from jaxllm.models.layers import LayerNorm
from jaxllm.models.weights import Copy, Linear, Part, Transpose, WeightSpec


class GPT2LMHeadModel(CausalLM):
    layer_cls = LayerNormDecoderLayer
    final_norm = LayerNorm


def gpt2_names(raw: dict) -> dict:
    """GPT-2's own spellings as the common ones. Where config.json gives both, the common one wins
    (GPT2Config's attribute_map sets hidden_size, ... onto n_embd, ... after the fields); the MLP is
    n_inner wide, else 4 x hidden_size, whatever intermediate_size says (GPT2MLP never reads it)."""
    out = dict(raw)
    for theirs, ours in (("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"),
                         ("n_positions", "max_position_embeddings"), ("layer_norm_epsilon", "layer_norm_eps"),
                         ("activation_function", "hidden_act")):
        if raw.get(theirs) is not None:
            out.setdefault(ours, raw[theirs])
    e = out.get("hidden_size")
    out["intermediate_size"] = raw.get("n_inner") or (4 * e if isinstance(e, int) else None)
    return out


def gpt2_defaults(raw: dict) -> dict:
    return dict(
        position_embedding="learned", qkv_bias=True, o_bias=True, gated_mlp=False, mlp_bias=True, tie_word_embeddings=raw.get("tie_word_embeddings") is not False,
        attn_scale=None if raw.get("scale_attn_weights", True) else 1.0,  # scale_attn_weights=false: scores unscaled
        attn_scale_by_layer=bool(raw.get("scale_attn_by_inverse_layer_idx")),
    )


def gpt2_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    e = cfg.hidden_size
    specs = [
        WeightSpec("transformer.wte.weight", ("model", "embed_tokens", "embedding")),
        WeightSpec("transformer.wpe.weight", ("model", "embed_positions", "embedding")),
        WeightSpec("transformer.ln_f.weight", ("model", "norm", "weight")),
        WeightSpec("transformer.ln_f.bias", ("model", "norm", "bias")),
    ]
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}.", ("model", "layers", i)
        for theirs, norm in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            specs += [WeightSpec(f"{hf}{theirs}.{p}", ours + (norm, p)) for p in ("weight", "bias")]
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            attn = ours + ("self_attn", name)
            specs.append(WeightSpec(f"{hf}attn.c_attn.weight", attn + ("kernel",), Part(part * e, 3 * e, Transpose(2), axis=1)))
            specs.append(WeightSpec(f"{hf}attn.c_attn.bias", attn + ("bias",), Part(part * e, 3 * e, Copy(flatten=True))))
        # HF Conv1D weights are [in, out]; our Dense kernels [out, in] (one output dim for these three)
        for theirs, path in (("attn.c_proj", ("self_attn", "o_proj")), ("mlp.c_fc", ("mlp", "up_proj")),
                             ("mlp.c_proj", ("mlp", "down_proj"))):
            specs.append(WeightSpec(f"{hf}{theirs}.weight", ours + path + ("kernel",), Transpose(1)))
            specs.append(WeightSpec(f"{hf}{theirs}.bias", ours + path + ("bias",)))
    if not cfg.tie_word_embeddings:
        specs.append(WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear()))
    return specs


ARCHITECTURES = (Architecture(
    name="GPT2LMHeadModel", module=GPT2LMHeadModel, weight_map=gpt2_weight_map, hf_model_type="gpt2", hf_aliases=("gpt-sw3",),
    # heads of n_embd / n_head, each with its own k/v; the activation is activation_function's (gpt2_names)
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "hidden_act"),
    not_null=("max_position_embeddings", "tie_word_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "layer_norm_epsilon",
              "activation_function", "scale_attn_by_inverse_layer_idx"),
    common_names=gpt2_names, config_defaults=gpt2_defaults, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    hf_defaults=dict(activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=True, n_positions=1024),
    # Old checkpoints keep the causal-mask buffers of each attention block; we build masks ourselves.
    ignore=(r".*\.attn\.bias$", r".*\.attn\.masked_bias$"),
    tiny_config=dict(vocab_size=128, n_embd=64, n_layer=3, n_head=4, n_positions=64, activation_function="gelu_new",
                     bos_token_id=1, eos_token_id=2, layer_norm_epsilon=1e-5),
),)
