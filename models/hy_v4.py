"""HY V4 (HYV4ForCausalLM, Tencent's Hy4): GLM-5's decoder (models/glm_moe_dsa.py: latent attention made sparse by
a lightning indexer whose selection "shared" layers reuse; GLM-4.7-Flash's dense and routed layers) between
hyper-connections (models/hyper_connections.py: hc_mult streams of the hidden state, each block's input a gated mix
of them and its output injected into each, collapsed by a head before the final norm). The rest are options:

- attention: rope on interleaved pairs whatever config.json's rope_interleave says (transformers >= 5.25; 5.24 and
  before rotated halves), learned sinks (`attn_sinks`, learnable_sink_param), the output times
  sigmoid(gate_proj(x)) per head and value before o_proj (linear_gate); every head its own kv head (num_key_value_heads
  is overwritten, as HYV4Config does);
- indexer: its rotated part the last qk_rope_head_dim values of each head (`IndexerConfig.rope_last`), in interleaved
  pairs (transformers >= 5.25), its key norm's
  epsilon rms_norm_eps; indexer_types "full" on layer 0 and every fourth from layer 1 where left out;
- experts: fused gate_up_proj / down_proj, SiLU of the gate clamped above at swiglu_limit times the up clamped to
  [-limit, limit] (`swiglu_shift` 0); DeepSeek-V3's sigmoid router with its score bias and n_group groups;
- the output head float32 whatever the model's dtype (transformers keeps it so).

Its checkpoints spell several names their own way (transformers' conversion mapping): the sinks learnable_sink_param,
the gates linear_gate (transformers saves every gate_proj so, the MLPs' too), the hyper-connections
hc_pre.hc_attn_layer.hc_fn / hc_pre.hc_mlp_layer.hc_* / hc_pre.hc_head.hc_head_*; `hy_v4_tensors` reads transformers'
own names and the Hub's as the names it saves. The multi-token-prediction layers (model.mtp_layers.*) are not read."""

from __future__ import annotations

import dataclasses
import re

import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import COUNT, Field, _given, check_fields
from jaxllm.models.decoder import CausalLM
from jaxllm.models.deepseek import _NOT_NULL, _TINY, deepseek_v3_defaults, weight_map
from jaxllm.models.deepseek_v32 import INDEX_KEYS, indexer, v32_names
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.glm_moe_dsa import INDEXER_TYPES
from jaxllm.models.hyper_connections import HyperModel, HyperSparseLayer
from jaxllm.models.layers import Dense
from jaxllm.models.sparse_attention import SparseLatentAttention, sparse_weight_map
from jaxllm.models.transforms import Linear, Part, Stacked, Transpose
from jaxllm.models.weights import Renamed, WeightSpec

OWN_FIELDS = {"hc_mult": _given(COUNT), "hc_magnitude": _given(Field(float)), "hc_eps": _given(Field(float, 0)),
              "indexer_types": Field(str, many="list")}


class HyV4Attention(SparseLatentAttention):
    """Sparse latent attention with an output gate per head and value (the shared output gate, attention.output_gate:
    gate_proj of x, no bias), which the sparse path applies (its query_parts' third part)."""

    def query_parts(self, x):
        return self.q_latent(x), None, self.gate_proj(x)


class HyV4Layer(HyperSparseLayer):
    attn_cls = HyV4Attention


class HyV4ForCausalLM(CausalLM):
    layer_cls = HyV4Layer
    model_cls = HyperModel

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        if not cfg.tie_word_embeddings:  # float32, its input cast up (transformers' _keep_in_fp32_modules_strict)
            self.lm_head = Dense((cfg.hidden_size,), (cfg.output_vocab,), ("embed", "vocab_out"), bias=False, dtype=jnp.float32,
                                 rngs=rngs, table=True)

    def head(self, hidden):
        return super().head(hidden if self.cfg.tie_word_embeddings else hidden.astype(jnp.float32))


def hy_v4_names(raw: dict) -> dict:
    """config.json as HYV4Config reads it: n_routed_experts (or num_local_experts), a kv head per head whatever
    num_key_value_heads says, head_dim the cached heads' width (models/mla.py)."""
    check_fields(raw, OWN_FIELDS, "config.json")
    return v32_names({k: v for k, v in raw.items() if k != "num_key_value_heads"})


def indexer_types(raw: dict) -> list[str]:
    n, given = raw["num_hidden_layers"], raw.get("indexer_types")
    if given is None:
        return ["full" if i == 0 or (i - 1) % 4 == 0 else "shared" for i in range(n)]
    if len(given) != n or any(t not in INDEXER_TYPES for t in given) or given[0] != "full":
        raise ConfigError(f"config.json indexer_types {given!r:.80} must give full or shared for each of the {n} layers, the "
                          "first full (a shared layer reuses the selection of a full one before it; transformers fails "
                          "otherwise): correct it")
    return list(given)


def hy_v4_defaults(raw: dict) -> dict:
    dense = tuple(i for i, t in enumerate(mlp_layer_types(raw, 1)) if t == "dense")
    shared = tuple(i for i, t in enumerate(indexer_types(raw)) if t == "shared")
    v3 = deepseek_v3_defaults(dict(raw, first_k_dense_replace=0, rope_interleave=True))
    ix = dataclasses.replace(indexer(raw, shared=shared), rope_last=True, interleaved=True, norm_eps=float(raw["rms_norm_eps"]))
    return dict(v3, dense_layers=dense, indexer=ix, attn_sinks=True, attn_output_gate=True, attn_gate_bias=False, router_norm_eps=1e-20, swiglu_limit=float(raw["swiglu_limit"]),
                swiglu_alpha=1.0, swiglu_shift=0.0, hc_streams=raw["hc_mult"], hc_magnitude=float(raw["hc_magnitude"]),
                hc_eps=float(raw["hc_eps"]))


# transformers' names -> the ones it saves (its conversion mapping reversed): the weight map reads these
SAVED = ((r"\.attn_hc\.(fn|base|scale)$", r".hc_pre.hc_attn_layer.hc_\1"), (r"\.ffn_hc\.(fn|base|scale)$", r".hc_pre.hc_mlp_layer.hc_\1"),
         (r"^model\.hc_head\.hc_(fn|base|scale)$", r"model.hc_pre.hc_head.hc_head_\1"), (r"\.sinks$", ".learnable_sink_param"),
         (r"\.gate_proj\.", ".linear_gate."))
# the Hub's names -> transformers' (HYV4's conversion mapping, as it loads them)
LOADED = ((r"\.hc_pre\.hc_", ".hc_"), (r"\.learnable_sink_param", ".sinks"), (r"\.linear_gate", ".gate_proj"),
          (r"\.hc_attn_layer\.hc_", ".attn_hc."), (r"\.hc_mlp_layer\.hc_", ".ffn_hc."), (r"\.hc_head_(fn|base|scale)", r".hc_\1"))


def _apply(rules, name: str) -> str:
    for pattern, repl in rules:
        name = re.sub(pattern, repl, name)
    return name


def hy_v4_tensors(source):
    """The checkpoint's tensors under the names transformers saves, whichever spelling the file has (transformers' own
    names, the Hub's, or the saved ones)."""
    renamed = {}
    for name in source.names():
        saved = _apply(SAVED, _apply(LOADED, name))
        if saved != name:
            renamed[saved] = name
    return Renamed(source, renamed) if renamed else source


def hy_v4_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """GLM-5's map (sinks included: attn_sinks) with fused experts, each attention's gate and the hyper-connections,
    under the names transformers saves (SAVED)."""
    specs = [s for s in sparse_weight_map(weight_map)(cfg) if ".experts." not in s.hf_names[0]]
    f = cfg.moe_intermediate_size
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs.append(WeightSpec(hf + "self_attn.gate_proj.weight", ours + ("self_attn", "gate_proj", "kernel"), Linear()))
        specs += [WeightSpec(f"{hf}{hc}.{p}", ours + (hc, p)) for hc in ("attn_hc", "ffn_hc") for p in ("fn", "base", "scale")]
        if cfg.layer_is_moe(i):
            experts = hf + "mlp.experts."
            specs += [WeightSpec(experts + "gate_up_proj", ours + ("mlp", "gate_proj"), Stacked(Part(0, 2 * f, Transpose(1)))),
                      WeightSpec(experts + "gate_up_proj", ours + ("mlp", "up_proj"), Stacked(Part(f, 2 * f, Transpose(1)))),
                      WeightSpec(experts + "down_proj", ours + ("mlp", "down_proj"), Stacked(Transpose(1)))]
    specs += [WeightSpec(f"model.hc_head.{p}", ("model", "hc_head", p)) for p in ("hc_fn", "hc_base", "hc_scale")]
    return [WeightSpec(_apply(SAVED, s.hf_name), s.path, s.transform) for s in specs]


ARCHITECTURES = (Architecture(
    name="HYV4ForCausalLM", module=HyV4ForCausalLM, weight_map=hy_v4_weight_map, hf_model_type="hy_v4",
    config_defaults=hy_v4_defaults, common_names=hy_v4_names, tensors=hy_v4_tensors,
    ignored_keys=NO_WINDOW + ("head_dim", "mlp_bias", "first_k_dense_replace", "rope_interleave", "learnable_sink_init"),
    ignore=(r".*rotary_emb\.inv_freq$", r"^model\.mtp_layers\."),
    # HYV4Config's field defaults (Hy4-preview's shapes)
    hf_defaults=dict(vocab_size=120832, hidden_size=2816, intermediate_size=6912, moe_intermediate_size=768, num_hidden_layers=34,
                     num_attention_heads=32, hidden_act="silu", max_position_embeddings=262144, rms_norm_eps=1e-5,
                     tie_word_embeddings=False, attention_bias=False, n_routed_experts=256, n_shared_experts=1,
                     num_experts_per_tok=8, routed_scaling_factor=2.827, norm_topk_prob=True, n_group=1, topk_group=1,
                     q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=192, qk_rope_head_dim=64, v_head_dim=256,
                     index_topk=2048, index_head_dim=128, index_n_heads=16, hc_mult=4, hc_magnitude=2.0, hc_eps=1e-6,
                     swiglu_limit=10.0, rope_theta=10000.0, bos_token_id=120000, eos_token_id=120025, pad_token_id=120002),
    not_null=tuple(k for k in _NOT_NULL if k != "first_k_dense_replace") + (
        "n_group", "topk_group", "num_experts_per_tok", "q_lora_rank", "norm_topk_prob", "swiglu_limit", "num_key_value_heads",
        "head_dim") + INDEX_KEYS,
    # three streams; a dense layer, then three routed ones (8 experts in 2 groups, the best 1 of them, top 2, beside a
    # shared one, the SwiGLU clamped at 1); indexers of 8 heads (fewer leave relu-zeroed scores tied, whose order torch
    # leaves open) on layers 0 and 1, shared on 2 and 3, keeping 5 keys; q_a / kv_a / o
    # biases
    tiny_config=dict({k: v for k, v in _TINY.items() if k not in ("first_k_dense_replace", "rope_theta")}, num_hidden_layers=4,
                     q_lora_rank=24, n_routed_experts=8, n_shared_experts=1, n_group=2, topk_group=1, routed_scaling_factor=2.5,
                     norm_topk_prob=True, attention_bias=True, index_topk=5, index_head_dim=16, index_n_heads=8, hc_mult=3,
                     hc_magnitude=2.0, hc_eps=1e-6, swiglu_limit=1.0, rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
),)
