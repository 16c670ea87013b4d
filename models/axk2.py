"""A.X-K2 (AXK2ForCausalLM, SK Telecom): DeepSeek-V3.2's sparse decoder (models/deepseek_v32.py, the indexer in
halves as V3.2's) with three changes. The queries and an output gate come from one projection of the query latent
and its normed form side by side (q_gate_proj over [q_a_layernorm(q_a_proj(x)), q_a_proj(x)]: per head qk_head_dim
query values, then v_head_dim gate values), the attention output times the gate's sigmoid in float32 before o_proj.
Each layer's input norm, and the post-attention norm of its MoE layers, is an RMSNorm times the sigmoid of a
low-rank gate of its output (gated_norm_rank: norm.weight, mlp.fc1, mlp.fc2, SiLU between). The router groups
experts only where n_group is given (A.X-K2-Light gives none), its other groups' experts then scored 0 for the
choice. As AXK2Config reads config.json: mlp_layer_types, else from first_k_dense_replace (1) and moe_layer_freq (1)."""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, dense
from jaxllm.models.deepseek import _TINY, deepseek_v3_defaults, weight_map
from jaxllm.models.deepseek_v32 import INDEX_KEYS, indexer, v32_names
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.layers import Dense, RMSNorm
from jaxllm.models.sparse_attention import SparseLatentAttention, SparseLatentDecoderLayer, sparse_weight_map
from jaxllm.models.weights import WeightSpec


class GateMLP(nnx.Module):
    """fc2(silu(fc1(y))): the low-rank gate of a gated norm (transformers' AXK2GateMLP)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        e, r = cfg.hidden_size, cfg.gated_norm_rank
        self.fc1 = Dense((e,), (r,), ("embed", "latent"), bias=False, dtype=dtype, rngs=rngs)
        self.fc2 = Dense((r,), (e,), ("latent", "embed"), bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, y):
        return self.fc2(jax.nn.silu(self.fc1(y)))


class GatedRMSNorm(nnx.Module):
    """y = RMSNorm(x), times sigmoid(GateMLP(y)) in float32, cast back (transformers' AXK2GatedRMSNorm)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype, rngs=rngs)
        self.mlp = GateMLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        y = self.norm(x)
        return (y * jax.nn.sigmoid(self.mlp(y).astype(jnp.float32))).astype(y.dtype)


class GatedQueryAttention(SparseLatentAttention):
    """Sparse latent attention whose queries and output gate come from q_gate_proj (no q_b_proj)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        mla, r = cfg.mla, cfg.mla.q_lora_rank
        self.qk_dim, self.q_b_proj = mla.qk_head_dim, None
        self.q_gate_proj = Dense((2 * r,), (cfg.num_heads, mla.qk_head_dim + mla.v_head_dim), ("latent", "q_heads", "head_dim"),
                                 bias=False, dtype=dtype, rngs=rngs)

    def query_parts(self, x):
        compressed = self.q_a_proj(x)
        latent = self.q_a_layernorm(compressed)
        both = self.q_gate_proj(jnp.concatenate([latent, compressed], axis=-1))
        return latent, both[..., : self.qk_dim], both[..., self.qk_dim :]


class GatedNormDecoderLayer(SparseLatentDecoderLayer):
    """The sparse layer with A.X-K2's gated norms: the input norm's always, the post-attention norm's on MoE layers."""

    attn_cls = GatedQueryAttention

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.input_layernorm = GatedRMSNorm(cfg, dtype=dtype, rngs=rngs)
        if layer not in cfg.dense_layers:
            self.post_attention_layernorm = GatedRMSNorm(cfg, dtype=dtype, rngs=rngs)


class GatedNormCausalLM(CausalLM):
    layer_cls = GatedNormDecoderLayer


def axk2_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """DeepSeek-V3.2's map with q_gate_proj read from the checkpoints' q_b_proj (queries and gate fused, its input the
    latent and its norm) and the gated norms' three tensors (norm.weight, W_down, W_up: fc1, fc2) for their weights."""
    gated = {f"model.layers.{i}.{norm}.weight" for i in range(cfg.num_layers)
             for norm in ("input_layernorm",) + (() if i in cfg.dense_layers else ("post_attention_layernorm",))}
    specs = [s for s in sparse_weight_map(weight_map)(cfg) if ".q_b_proj." not in s.hf_names[0] and s.hf_names[0] not in gated]
    for name in sorted(gated):
        hf, ours = name[: -len(".weight")], ("model", "layers", int(name.split(".")[2]), name.split(".")[3])
        specs.append(WeightSpec(f"{hf}.norm.weight", ours + ("norm", "weight")))
        specs += dense(f"{hf}.W_down", ours + ("mlp", "fc1"), bias=False) + dense(f"{hf}.W_up", ours + ("mlp", "fc2"), bias=False)
    for i in range(cfg.num_layers):  # the checkpoints' fused q_b_proj (vLLM's layout), transformers' q_gate_proj
        specs += dense(f"model.layers.{i}.self_attn.q_b_proj", ("model", "layers", i, "self_attn", "q_gate_proj"), bias=False)
    return specs


def axk2_defaults(raw: dict) -> dict:
    """AXK2Config's reading: dense layers from mlp_layer_types (else first_k_dense_replace / moe_layer_freq), groups only
    where n_group is given, the indexer of V3.2."""
    groups, picked, experts = raw.get("n_group"), raw.get("topk_group"), raw["n_routed_experts"]
    if (groups is None) != (picked is None):
        raise ConfigError(f"config.json n_group={groups} with topk_group={picked}: AXK2Config takes both or neither (no "
                          "expert groups): give both, or remove both")
    if groups is not None and experts // groups < 2:
        raise ConfigError(f"config.json n_group={groups} leaves {experts // groups} expert per group, and each group is scored "
                          "by its best two: set n_group to at most n_routed_experts / 2")
    if raw.get("mlp_layer_types") is None:
        first, freq = raw.get("first_k_dense_replace", 1), raw.get("moe_layer_freq", 1)
        for key, value in (("first_k_dense_replace", first), ("moe_layer_freq", freq)):
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if key == "moe_layer_freq" else 0):
                raise ConfigError(f"config.json {key}={value!r} must be a{' positive' if key == 'moe_layer_freq' else ' non-negative'} "
                                  f"integer: correct it")
        raw = dict(raw, mlp_layer_types=["sparse" if i >= first and i % freq == 0 else "dense" for i in range(raw["num_hidden_layers"])])
    dense_layers = tuple(i for i, t in enumerate(mlp_layer_types(raw, 0)) if t == "dense")
    v3 = deepseek_v3_defaults(dict(raw, first_k_dense_replace=0, rope_interleave=True, n_group=groups or 1,
                                   topk_group=picked or 1))
    return dict(v3, dense_layers=dense_layers, indexer=indexer(raw), gated_norm_rank=raw["gated_norm_rank"],
                router_group_score="top2_zero")


ARCHITECTURES = (Architecture(
    name="AXK2ForCausalLM", module=GatedNormCausalLM, weight_map=axk2_weight_map, hf_model_type="axk2",
    config_defaults=axk2_defaults, common_names=v32_names,
    ignored_keys=NO_WINDOW + ("mlp_bias", "topk_method", "head_dim", "rope_interleave", "scoring_func"),
    ignore=(r".*rotary_emb\.inv_freq$",),
    # AXK2Config's field defaults (A.X-K2-Light's shapes), DeepseekV32Config's where it has none of its own
    hf_defaults=dict(vocab_size=163840, hidden_size=2048, intermediate_size=5120, moe_intermediate_size=512,
                     num_hidden_layers=48, num_attention_heads=32, num_key_value_heads=32, n_shared_experts=1,
                     routed_scaling_factor=2.5, kv_lora_rank=128, q_lora_rank=384, qk_rope_head_dim=32, v_head_dim=64,
                     qk_nope_head_dim=64, num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=131072,
                     rms_norm_eps=1e-6, bos_token_id=163691, eos_token_id=163691, attention_bias=False, index_topk=2048,
                     index_head_dim=128, index_n_heads=16, gated_norm_rank=16, n_routed_experts=128),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "attention_bias", "kv_lora_rank", "qk_nope_head_dim",
                             "qk_rope_head_dim", "v_head_dim", "n_routed_experts", "n_shared_experts", "routed_scaling_factor",
                             "moe_intermediate_size", "num_experts_per_tok", "q_lora_rank", "norm_topk_prob",
                             "gated_norm_rank") + INDEX_KEYS,
    # a dense layer, then two MoE layers of 8 experts without groups beside a shared one; gated norms of rank 4; the
    # indexer of DeepSeek-V3.2's tiny config (5 keys kept)
    tiny_config=dict({k: v for k, v in _TINY.items() if k != "first_k_dense_replace"}, q_lora_rank=24, n_routed_experts=8,
                     n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True, attention_bias=True, index_topk=5,
                     index_head_dim=16, index_n_heads=8, gated_norm_rank=4, mlp_layer_types=["dense", "sparse", "sparse"]),
),)
