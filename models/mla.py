"""Multi-head latent attention (MLA, DeepSeek-V2/V3): queries through a low-rank bottleneck
(q_a_proj, an RMSNorm, q_b_proj; or one q_proj where q_lora_rank is null), keys and values
decompressed per head from a latent of kv_lora_rank per token (kv_a_proj_with_mqa, kv_a_layernorm,
kv_b_proj). Each key head is qk_nope_head_dim values without rotation, then qk_rope_head_dim
rotated values that every head shares (the rest of kv_a_proj_with_mqa's output); each value head
is v_head_dim wide.

The keys and values go to the KV backends decompressed, one per query head (num_kv_heads =
num_heads), so the engine's cache, its pages and every attention path serve them as any model's.
Key and value heads differ in width (192 and 128 for DeepSeek-V3): all three of q, k and v are
zero-padded to head_dim = max(qk_head_dim, v_head_dim), which leaves every score q . k and the
values' first v_head_dim outputs unchanged, and the attention output is sliced back to v_head_dim
before o_proj (docs/architecture.md: the cost of this choice, and the latent cache it forgoes).
"""

from __future__ import annotations

import math

import jax.numpy as jnp
from flax import nnx

from jaxllm.models.attention import UNCACHED, Attention, AttnSpec, LayerCache, output_gate, padded
from jaxllm.models.config import ModelConfig, RopeConfig
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map, dense
from jaxllm.models.layers import Dense, RMSNorm, param
from jaxllm.models.rope import Rotary, apply_rotary
from jaxllm.models.weights import WeightSpec


def mla_scale(cfg: ModelConfig) -> float:
    """The softmax scale transformers' DeepSeek attention takes: qk_head_dim ** -0.5, times
    mscale(factor, mscale_all_dim) squared where the rope is scaled (any type but default) and
    gives mscale_all_dim (`yarn_apply_mscale`)."""
    scale, rope = cfg.mla.qk_head_dim ** -0.5, cfg.rope
    if rope.type != "default" and rope.mscale_all_dim:
        m = _mscale(rope, rope.mscale_all_dim)
        scale *= m * m
    return scale


def _mscale(rope: RopeConfig, mscale: float) -> float:
    return 1.0 if rope.factor <= 1 else 0.1 * mscale * math.log(rope.factor) + 1.0


class LatentAttention(Attention):
    """DeepSeek's attention with transformers' parameter names (self_attn.q_a_proj, ...). It shares
    `Attention`'s spec, research weights and calling convention; only the projections differ
    (`project`), and the output is sliced to v_head_dim before o_proj. The rotary part is rotated
    in interleaved pairs where the config says (rope_interleaved: DeepSeek-V3's rope_interleave,
    always for V2): transformers' V3 writes the rotated pairs back de-interleaved, in both q and k,
    which permutes the same dims of both and leaves every score as it is."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):  # not Attention's: that builds q/k/v_proj
        mla, e, h = cfg.mla, cfg.hidden_size, cfg.num_heads
        self.head_dim, self.nope, self.v_dim, self.kv_rank = cfg.head_dim, mla.qk_nope_head_dim, mla.v_head_dim, mla.kv_lora_rank
        self.spec = AttnSpec(mla_scale(cfg), cfg.layer_window(layer), cfg.attn_softcap)
        self.rope_interleaved, self.scales = cfg.rope_interleaved, (mla.q_scale, mla.kv_scale)
        self.sinks = param((h,), ("q_heads",), dtype) if cfg.attn_sinks else None  # HY V4's (AttnSpec.sinks)
        heads = ("q_heads", "head_dim")
        dense = dict(dtype=dtype, rngs=rngs)
        norm = dict(dtype=dtype, rngs=rngs, axes=("latent",))
        r = mla.q_lora_rank
        self.q_proj = Dense((e,), (h, mla.qk_head_dim), ("embed",) + heads, bias=False, **dense) if r is None else None
        self.q_a_proj = None if r is None else Dense((e,), (r,), ("embed", "latent"), bias=cfg.qkv_bias, **dense)
        self.q_a_layernorm = None if r is None else RMSNorm(r, mla.norm_eps, **norm)
        self.q_b_proj = None if r is None else Dense((r,), (h, mla.qk_head_dim), ("latent",) + heads, bias=False, **dense)
        self.kv_a_proj_with_mqa = Dense((e,), (self.kv_rank + mla.qk_rope_head_dim,), ("embed", "latent"), bias=cfg.qkv_bias,
                                        **dense)
        self.kv_a_layernorm = RMSNorm(self.kv_rank, mla.norm_eps, **norm)
        self.kv_b_proj = Dense((self.kv_rank,), (h, self.nope + self.v_dim), ("latent",) + heads, bias=False, **dense)
        self.o_proj = Dense((h, self.v_dim), (e,), heads + ("embed",), bias=cfg.o_bias, **dense)
        # an output gate where the model has one (Bailing-Hybrid's g_proj, one per head), as the shared attention's
        self.gate_proj, self.gate_act, self.gate_per_head = output_gate(cfg, h, self.v_dim, e, dtype, rngs)
        self.attn_sub_norm = None

    def __call__(self, x, positions, rot: Rotary | None, cache: LayerCache | None, kv=UNCACHED):
        q, k, v = self.project(x, positions, rot)
        out, new = kv(q, k, v, cache, positions, self.call_spec())
        return self.output(out, x), new

    def project(self, x, positions, rot: Rotary | None):
        """Queries, keys and values [B, T, H, head_dim] of x [B, T, E] (at `positions`, unused): decompressed, the rotary
        parts rotated, each zero-padded to head_dim."""
        return self.project_latent(x, self.q_latent(x), rot)

    def q_latent(self, x):
        """The queries' low-rank latent q_a_layernorm(q_a_proj(x)) [B, T, q_lora_rank], or None (one q_proj)."""
        return None if self.q_proj is not None else self.q_a_layernorm(self.q_a_proj(x))

    def project_latent(self, x, q_latent, rot: Rotary | None, q=None):
        """`project` of x whose queries' latent is `q_latent` (None: one q_proj), or whose queries are `q` [B, T, H,
        qk_head_dim] before their rotation (A.X-K2's, from a projection of its own)."""
        if q is None:
            q = self.q_proj(x) if q_latent is None else self.q_b_proj(q_latent)
        latent = self.kv_a_proj_with_mqa(x)
        kv_latent = self.kv_a_layernorm(latent[..., : self.kv_rank])
        if self.scales != (1.0, 1.0):  # LongCat's LoRA scales
            q, kv_latent = q * self.scales[0], kv_latent * self.scales[1]
        kv = self.kv_b_proj(kv_latent)  # [B, T, H, nope + v]
        q_rot, k_rot = q[..., self.nope :], latent[..., None, self.kv_rank :]  # k_rot [B, T, 1, rope]: every head's
        if rot is not None:
            q_rot, k_rot = apply_rotary(q_rot, rot, self.rope_interleaved), apply_rotary(k_rot, rot, self.rope_interleaved)
        k_rot = jnp.broadcast_to(k_rot, kv.shape[:-1] + k_rot.shape[-1:])
        q = jnp.concatenate([q[..., : self.nope], q_rot], axis=-1)
        k = jnp.concatenate([kv[..., : self.nope], k_rot], axis=-1)
        return padded(q, self.head_dim), padded(k, self.head_dim), padded(kv[..., self.nope :], self.head_dim)


class LatentDecoderLayer(DecoderLayer):
    attn_cls = LatentAttention


class LatentCausalLM(CausalLM):
    """The shared decoder with latent attention in every layer."""

    layer_cls = LatentDecoderLayer


def mla_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """decoder_weight_map with each layer's q/k/v projections replaced by MLA's (o_proj stays)."""
    specs = [s for s in decoder_weight_map(cfg) if s.hf_names[0].split(".")[-2] not in ("q_proj", "k_proj", "v_proj")]
    names = ["kv_a_proj_with_mqa", "kv_b_proj"] + (["q_proj"] if cfg.mla.q_lora_rank is None else ["q_a_proj", "q_b_proj"])
    biased = ("q_a_proj", "kv_a_proj_with_mqa") if cfg.qkv_bias else ()
    for i in filter(cfg.layer_is_attention, range(cfg.num_layers)):  # (Kimi-Linear's others: recurrent)
        hf, ours = f"model.layers.{i}.self_attn.", ("model", "layers", i, "self_attn")
        for name in names:
            specs += dense(f"{hf}{name}", ours + (name,), bias=name in biased)
        for name in ("kv_a_layernorm",) + (() if cfg.mla.q_lora_rank is None else ("q_a_layernorm",)):
            specs.append(WeightSpec(f"{hf}{name}.weight", ours + (name, "weight")))
    return specs
