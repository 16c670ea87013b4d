"""OPT (facebook/opt-*): learned absolute positions read at position + 2 (OPTLearnedPositionalEmbedding's
offset), LayerNorms of a fixed epsilon (1e-5) before attention and MLP (do_layer_norm_before) or after
each residual sum (opt-350m: do_layer_norm_before false, the post-LN layer, no final norm), q/k/v/out and
fc1/fc2 biases as enable_bias says, an ungated ReLU MLP (activation_function), norms without weight or bias
where layer_norm_elementwise_affine is false, and a token embedding word_embed_proj_dim wide where that
differs from hidden_size (project_in after the lookup, project_out after the final norm; the tied head
that wide). Its module tree is fairseq's, shared with BioGPT and XGLM (`fairseq_layout`)."""

from flax import nnx

from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer, dense, norm_kwargs
from jaxllm.models.experts import make_mlp
from jaxllm.models.gpt2 import spelled
from jaxllm.models.layers import LayerNorm
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec


class PostNormDecoderLayer(nnx.Module):
    """x = norm1(x + attn(x)), then norm2(x + mlp(x)): the post-LN layer (OPT's do_layer_norm_before
    false). Its norms keep OPT's names: it has no input_layernorm, the attention reads x itself."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        norm = norm_kwargs(cfg, dtype, rngs, LayerNorm)
        self.self_attn = Attention(cfg, layer, dtype=dtype, rngs=rngs)
        self.self_attn_layer_norm = LayerNorm(cfg.hidden_size, cfg.norm_eps, **norm)
        self.mlp = make_mlp(cfg, layer, dtype=dtype, rngs=rngs)
        self.final_layer_norm = LayerNorm(cfg.hidden_size, cfg.norm_eps, **norm)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        attn, cache = self.self_attn(x, positions, rot, cache, kv)
        x = self.self_attn_layer_norm(x + attn)
        return self.final_layer_norm(x + self.mlp(x)), cache


def fairseq_layer(cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
    """The pre-LN LayerNorm layer, or the post-LN one where cfg.norm_after_residual."""
    cls = PostNormDecoderLayer if cfg.norm_after_residual else LayerNormDecoderLayer
    return cls(cfg, layer, dtype=dtype, rngs=rngs)


class OPTForCausalLM(CausalLM):
    layer_cls = staticmethod(fairseq_layer)
    final_norm = LayerNorm


def layer_norm(cfg: ModelConfig, hf: str, path: tuple) -> list[WeightSpec]:
    """A LayerNorm's weight and bias, none where the model's norms have neither (cfg.norm_affine)."""
    return [WeightSpec(f"{hf}.{p}", path + (p,)) for p in ("weight", "bias")] if cfg.norm_affine else []


def fairseq_layout(cfg: ModelConfig, prefix: str, final_norm: str, head: str) -> list[WeightSpec]:
    """The weight map of fairseq's decoder as transformers names it (OPT under model.decoder, BioGPT
    under biogpt, XGLM under model): `prefix`.embed_tokens and .embed_positions (learned ones), the
    final norm `prefix`.`final_norm`, the output head `head` (untied), and each layer's
    self_attn.{q,k,v,out}_proj, self_attn_layer_norm, fc1, fc2 and final_layer_norm."""
    specs = [WeightSpec(f"{prefix}.embed_tokens.weight", ("model", "embed_tokens", "embedding"))]
    if cfg.position_embedding == "learned":
        specs.append(WeightSpec(f"{prefix}.embed_positions.weight", ("model", "embed_positions", "embedding")))
    if cfg.embed_dim:
        specs += [WeightSpec(f"{prefix}.{name}.weight", ("model", name, "kernel"), Linear()) for name in ("project_in", "project_out")]
    if cfg.final_norm:
        specs += layer_norm(cfg, f"{prefix}.{final_norm}", ("model", "norm"))
    if not cfg.tie_word_embeddings:
        specs.append(WeightSpec(head, ("lm_head", "kernel"), Linear()))
    post = cfg.norm_after_residual
    norms = ("self_attn_layer_norm", "final_layer_norm") if post else ("input_layernorm", "post_attention_layernorm")
    for i in range(cfg.num_layers):
        hf, ours = f"{prefix}.layers.{i}.", ("model", "layers", i)
        specs += layer_norm(cfg, f"{hf}self_attn_layer_norm", ours + (norms[0],))
        specs += layer_norm(cfg, f"{hf}final_layer_norm", ours + (norms[1],))
        for theirs, name in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("out_proj", "o_proj")):
            out = name == "o_proj"
            specs += dense(f"{hf}self_attn.{theirs}", ours + ("self_attn", name), Linear(2 if out else 1),
                           cfg.o_bias if out else cfg.qkv_bias)
        for theirs, name in (("fc1", "up_proj"), ("fc2", "down_proj")):
            specs += dense(f"{hf}{theirs}", ours + ("mlp", name), bias=cfg.mlp_bias)
    return specs


def fairseq_names(raw: dict) -> dict:
    """fairseq's spellings (OPT, XGLM) as the common ones: the MLP ffn_dim wide, activation_function;
    XGLM's d_model, num_layers and attention_heads (its attribute_map: the common spelling wins)."""
    return spelled(raw, (("ffn_dim", "intermediate_size"), ("activation_function", "hidden_act"), ("d_model", "hidden_size"),
                         ("num_layers", "num_hidden_layers"), ("attention_heads", "num_attention_heads")))


def fairseq_defaults(biases: bool = True) -> dict:
    """What fairseq's decoders hard-wire: positions added at position + 2, LayerNorms of epsilon 1e-5
    (nn.LayerNorm's; config.json's layer_norm_eps unread), an ungated MLP, biases as `biases` says."""
    return dict(position_embedding="learned", position_offset=2, norm_eps=1e-5, gated_mlp=False, qkv_bias=biases, o_bias=biases,
                mlp_bias=biases)


def opt_defaults(raw: dict) -> dict:
    before = raw["do_layer_norm_before"]
    width = raw.get("word_embed_proj_dim") or raw["hidden_size"]
    return dict(fairseq_defaults(raw["enable_bias"]), norm_after_residual=not before, norm_affine=raw["layer_norm_elementwise_affine"],
                final_norm=before and not raw.get("_remove_final_layer_norm"),
                embed_dim=width if width != raw["hidden_size"] else None)


OPT_FLAGS = ("do_layer_norm_before", "enable_bias", "layer_norm_elementwise_affine")

ARCHITECTURES = (Architecture(
    name="OPTForCausalLM", module=OPTForCausalLM, hf_model_type="opt", base_prefix="model",
    weight_map=lambda cfg: fairseq_layout(cfg, "model.decoder", "final_layer_norm", "lm_head.weight"),
    # heads of hidden_size / num_attention_heads, each with its own k/v; norms of a fixed epsilon; its activation
    # activation_function's (fairseq_names)
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "hidden_act", "intermediate_size", "layer_norm_eps"),
    not_null=NOT_NULL + OPT_FLAGS + ("ffn_dim", "activation_function", "_remove_final_layer_norm"),
    common_names=fairseq_names, config_defaults=opt_defaults,
    hf_defaults=dict(activation_function="relu", max_position_embeddings=2048, tie_word_embeddings=True, do_layer_norm_before=True,
                     enable_bias=True, layer_norm_elementwise_affine=True, pad_token_id=1, bos_token_id=2, eos_token_id=2),
    # opt-350m's form: post-LN layers and a token embedding narrower than the layers (project_in / project_out)
    tiny_config=dict(vocab_size=128, hidden_size=64, ffn_dim=96, num_hidden_layers=3, num_attention_heads=4,
                     max_position_embeddings=64, word_embed_proj_dim=48, do_layer_norm_before=False,
                     activation_function="relu", bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
