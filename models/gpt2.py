"""GPT-2: learned absolute positions instead of rope, LayerNorm, biased attention and GELU MLP,
tied embeddings; the decoder layer is the shared sequential one with LayerNorms (scale_attn_by_inverse_layer_idx:
`attn_scale_by_layer`). The checkpoint stores Conv1D
weights as [in, out] (our layout already) with q/k/v fused along the output columns."""

from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer, dense, model_ends
from jaxllm.models.layers import LayerNorm
from jaxllm.models.transforms import Copy, Part, Transpose
from jaxllm.models.weights import WeightSpec


class GPT2LMHeadModel(CausalLM):
    layer_cls = LayerNormDecoderLayer
    final_norm = LayerNorm


def spelled(raw: dict, spellings) -> dict:
    """`raw` with each (family's key, common key) of `spellings` read as the common one where config.json
    gives only the family's (where it gives both, the common one wins: the config classes' attribute_map
    sets the family's attribute from it after the fields)."""
    out = dict(raw)
    for theirs, ours in spellings:
        if raw.get(theirs) is not None:
            out.setdefault(ours, raw[theirs])
    return out


def gpt2_names(raw: dict) -> dict:
    """GPT-2's own spellings as the common ones; the MLP is n_inner wide, else 4 x hidden_size,
    whatever intermediate_size says (GPT2MLP never reads it)."""
    out = spelled(raw, (("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"),
                        ("n_positions", "max_position_embeddings"), ("layer_norm_epsilon", "layer_norm_eps"),
                        ("activation_function", "hidden_act")))
    e = out.get("hidden_size")
    out["intermediate_size"] = raw.get("n_inner") or (4 * e if isinstance(e, int) else None)
    return out


def gpt2_defaults(raw: dict) -> dict:
    return dict(
        position_embedding="learned", qkv_bias=True, o_bias=True, gated_mlp=False, mlp_bias=True,
        tie_word_embeddings=raw.get("tie_word_embeddings") is not False,
        attn_scale=None if raw.get("scale_attn_weights", True) else 1.0,  # scale_attn_weights=false: scores unscaled
        attn_scale_by_layer=bool(raw.get("scale_attn_by_inverse_layer_idx")),
    )


def gpt2_layout(cfg: ModelConfig, mlp_weight, attention) -> list[WeightSpec]:
    """The weight map of GPT-2's module tree, shared by GPTBigCode and GPT-Neo: embeddings, learned
    positions, ln_1 / ln_2 / ln_f, the c_fc / c_proj MLP read by `mlp_weight` (Conv1D's Transpose(1)
    or nn.Linear's Linear()), and attention(hf prefix, our path) -> each layer's attention specs."""
    specs = model_ends(cfg, "transformer.wte.weight", "transformer.ln_f")
    specs.append(WeightSpec("transformer.wpe.weight", ("model", "embed_positions", "embedding")))
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.h.{i}.", ("model", "layers", i)
        for theirs, norm in (("ln_1", "input_layernorm"), ("ln_2", "post_attention_layernorm")):
            specs += [WeightSpec(f"{hf}{theirs}.{p}", ours + (norm, p)) for p in ("weight", "bias")]
        specs += attention(hf, ours)
        specs += dense(f"{hf}mlp.c_fc", ours + ("mlp", "up_proj"), mlp_weight) + dense(f"{hf}mlp.c_proj", ours + ("mlp", "down_proj"), mlp_weight)
    return specs


def gpt2_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """HF Conv1D weights are [in, out], our Dense kernels [out, in]; q/k/v fused along c_attn's columns."""
    e = cfg.hidden_size

    def attention(hf, ours):
        specs = []
        for part, name in enumerate(("q_proj", "k_proj", "v_proj")):
            attn = ours + ("self_attn", name)
            specs.append(WeightSpec(f"{hf}attn.c_attn.weight", attn + ("kernel",), Part(part * e, 3 * e, Transpose(2), axis=1)))
            specs.append(WeightSpec(f"{hf}attn.c_attn.bias", attn + ("bias",), Part(part * e, 3 * e, Copy(flatten=True))))
        return specs + dense(f"{hf}attn.c_proj", ours + ("self_attn", "o_proj"), Transpose(1))

    return gpt2_layout(cfg, Transpose(1), attention)


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
