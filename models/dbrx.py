"""DBRX (databricks/dbrx-*): Llama's sequential layer with LayerNorms without bias (norm_attn_norm.norm_1,
norm_2; the final norm_f), q | k | v rows fused in Wqkv and clamped to [-clip_qkv, clip_qkv] before they
split (the shared clip_qkv), no attention biases, and routed experts in every layer: a softmax router,
the top moe_top_k, their weights divided by their sum where moe_normalize_expert_weights is 1 (none where
null), gated experts of ffn_act_fn whose w1 (gate), v1 (up) and w2 (down, [F, E] per expert) each hold
every expert's rows in one [X * F, E] tensor. Its keys: d_model, n_heads, n_layers, max_seq_len, and the
nested attn_config (kv_n_heads, clip_qkv) and ffn_config.

Rotary positions take the top-level rope settings (base 10,000 where config.json gives none), as
transformers 5 reads DBRX: attn_config's rope_theta (500,000 in databricks/dbrx-*) is never read there."""

import functools

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import EXPERTS, NON_NEGATIVE, OBJECT, POSITIVE, Field, check_fields
from jaxllm.models.decoder import normed_causal_lm
from jaxllm.models.gpt2 import spelled
from jaxllm.models.layers import LayerNorm
from jaxllm.models.transforms import Copy, Linear, Part, Stacked, Transpose
from jaxllm.models.weights import WeightSpec

DbrxForCausalLM = normed_causal_lm(functools.partial(LayerNorm, bias=False), "DbrxForCausalLM")


# The nested configs' fields transformers' DbrxAttentionConfig and DbrxFFNConfig type (ints never null)
ATTN_FIELDS = {"clip_qkv": POSITIVE, "kv_n_heads": Field(int, 1, null=False)}
FFN_FIELDS = {"ffn_hidden_size": Field(int, 1, null=False), "moe_num_experts": Field(int, 1, EXPERTS.high, null=False),
              "moe_top_k": Field(int, 1, null=False), "moe_normalize_expert_weights": NON_NEGATIVE, "ffn_act_fn": OBJECT}
ATTN_DEFAULTS, FFN_DEFAULTS = dict(kv_n_heads=1), dict(ffn_hidden_size=3584, moe_num_experts=4, moe_top_k=1, moe_normalize_expert_weights=1.0)


def dbrx_names(raw: dict) -> dict:
    """DBRX's spellings as the common ones (its attribute_map: a common key given wins), and its nested
    attn_config and ffn_config (each null or left out: its config class's defaults) read into them."""
    attn = dict(ATTN_DEFAULTS, **check_fields(raw.get("attn_config") or {}, ATTN_FIELDS, "config.json", "attn_config."))
    ffn = dict(FFN_DEFAULTS, **check_fields(raw.get("ffn_config") or {}, FFN_FIELDS, "config.json", "ffn_config."))
    out = spelled(raw, (("d_model", "hidden_size"), ("n_heads", "num_attention_heads"), ("n_layers", "num_hidden_layers"),
                        ("max_seq_len", "max_position_embeddings")))
    act = (ffn.get("ffn_act_fn") or {}).get("name", "silu")
    return dict(out, num_key_value_heads=attn["kv_n_heads"], clip_qkv=attn.get("clip_qkv"), intermediate_size=ffn["ffn_hidden_size"],
                num_experts=ffn["moe_num_experts"], num_experts_per_tok=ffn["moe_top_k"], hidden_act=act,
                moe_normalize_expert_weights=ffn["moe_normalize_expert_weights"])


def dbrx_defaults(raw: dict) -> dict:
    p = raw["moe_normalize_expert_weights"]
    if p not in (None, 1):
        raise ConfigError(f"config.json ffn_config.moe_normalize_expert_weights={p}: jaxllm divides the chosen experts' weights "
                          "by their sum (1, DBRX's) or leaves them (null); other p-norms are not supported")
    if raw["tie_word_embeddings"]:
        raise ConfigError("config.json tie_word_embeddings=true, which transformers refuses for DBRX: set it to false")
    clip = raw.get("clip_qkv")
    return dict(norm_eps=1e-5, num_experts=raw["num_experts"], experts_per_token=raw["num_experts_per_tok"], router="softmax_topk",
                norm_topk_prob=p == 1, clip_qkv=None if clip is None else float(clip), mlp_bias=False, qkv_bias=False, o_bias=False)


def dbrx_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = [WeightSpec("transformer.wte.weight", ("model", "embed_tokens", "embedding")),
             WeightSpec("transformer.norm_f.weight", ("model", "norm", "weight")),
             WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear())]
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    for i in range(cfg.num_layers):
        hf, ours = f"transformer.blocks.{i}.", ("model", "layers", i)
        block = hf + "norm_attn_norm."
        specs += [WeightSpec(f"{block}norm_1.weight", ours + ("input_layernorm", "weight")),
                  WeightSpec(f"{block}norm_2.weight", ours + ("post_attention_layernorm", "weight")),
                  WeightSpec(f"{block}attn.out_proj.weight", ours + ("self_attn", "o_proj", "kernel"), Linear(2))]
        for name, offset, rows in (("q_proj", 0, q), ("k_proj", q, kv), ("v_proj", q + kv, kv)):
            specs.append(WeightSpec(f"{block}attn.Wqkv.weight", ours + ("self_attn", name, "kernel"), Part(offset, q + 2 * kv, Linear())))
        specs.append(WeightSpec(f"{hf}ffn.router.layer.weight", ours + ("mlp", "gate", "kernel"), Linear()))
        for theirs, name, inner in (("w1", "gate_proj", Transpose(1)), ("v1", "up_proj", Transpose(1)), ("w2", "down_proj", Copy())):
            specs.append(WeightSpec(f"{hf}ffn.experts.mlp.{theirs}", ours + ("mlp", name), Stacked(inner, flat=True)))
    return specs


ARCHITECTURES = (Architecture(
    name="DbrxForCausalLM", module=DbrxForCausalLM, weight_map=dbrx_weight_map, hf_model_type="dbrx", base_prefix="transformer",
    # its heads, experts and activation are its own keys' (dbrx_names); no norm epsilon key (nn.LayerNorm's 1e-5); attn_config's
    # rope_theta unread (see above)
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "hidden_act", "intermediate_size", "num_experts", "num_local_experts",
                              "num_experts_per_tok", "clip_qkv", "layer_norm_eps", "rms_norm_eps", "attention_bias", "mlp_bias",
                              "partial_rotary_factor"),
    # null where DbrxConfig takes null but cannot build the model (d_model, n_heads, n_layers; attn_config: its default has no
    # rope_theta, which the attention reads), and a null context length, which transformers leaves unbounded
    not_null=("tie_word_embeddings", "vocab_size", "d_model", "n_heads", "n_layers", "max_seq_len", "max_position_embeddings",
              "attn_config", "rope_theta"),
    common_names=dbrx_names, config_defaults=dbrx_defaults,
    hf_defaults=dict(d_model=2048, n_heads=16, n_layers=24, max_seq_len=2048, tie_word_embeddings=False),
    # GQA, a clamp that bites (the seeded q/k/v reach past it), top 2 of 4 experts
    tiny_config=dict(vocab_size=128, d_model=64, n_heads=4, n_layers=3, max_seq_len=64, tie_word_embeddings=False,
                     attn_config=dict(kv_n_heads=2, clip_qkv=1.0, rope_theta=500000.0),  # the Hub's attn_config (its rope_theta unread)
                     ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2, ffn_act_fn={"name": "silu"}),
                     bos_token_id=1, eos_token_id=2),
),)
