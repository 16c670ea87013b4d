"""JetMoE (JetMoeForCausalLM): a mixture of experts in both halves of each layer, both routed by the top k of the
router's logits, softmaxed over those k (`cfg.router` "topk_softmax"):

- the MLP: routed experts (the shared `MoE`) whose gate and up rows share one tensor per block (input_linear
  [X, 2F, E], GraniteMoE's layout: `moe.fused_expert_specs`), plus a bias on their sum (`expert_output_bias`);
- the attention (`MixtureOfAttention`, transformers' JetMoeMoA): each token's k chosen experts each project its
  queries for num_key_value_heads heads (input_linear [X, K * D, E]), so a token has k * K query heads over the
  K key and value heads every token projects (kv_proj: keys, then values), slot j's head i reading kv head i;
  each slot's attention output goes through its expert's output projection (output_linear), weighted by its
  routing weight, the k summed, plus a bias. The dispatch is the experts' own (`experts.expert_rows`).

Our query heads are the grouped-query layout of the same heads (kv head i's k slots together); the attention
weights come back in transformers' order (slot-major). num_attention_heads is num_key_value_heads x
num_experts_per_tok, whatever the file says (JetMoeConfig sets it); head_dim is kv_channels (its
attribute_map's alias, which wins). The layers' norms take an epsilon of 1e-6 whatever rms_norm_eps says
(transformers reads it for the final norm alone): another is refused."""

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention, AttnSpec, Uncached
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import COUNT, NAME, check_fields
from jaxllm.models.decoder import CausalLM, DecoderLayer, decoder_weight_map
from jaxllm.models.experts import expert_rows
from jaxllm.models.layers import Dense, param
from jaxllm.models.moe import fused_expert_specs
from jaxllm.models.rope import Rotary, apply_rotary
from jaxllm.models.transforms import Linear, Part, Stacked, Transpose
from jaxllm.models.weights import WeightSpec


class MixtureOfAttention(Attention):
    """JetMoE's attention with transformers' parameter names under self_attention (experts.router.layer,
    experts.input_linear, experts.output_linear, experts.bias; kv_proj as our k_proj and v_proj)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):  # not Attention's: that builds q/k/v_proj
        e, kv, d, x = cfg.hidden_size, cfg.num_kv_heads, cfg.head_dim, cfg.num_experts
        self.top_k, self.kv_heads, self.head_dim = cfg.experts_per_token, kv, d
        self.spec = AttnSpec(d**-0.5, cfg.layer_window(layer))
        self.rope_interleaved, self.sinks, self.reads_shared_kv = False, None, False
        dense = dict(dtype=dtype, rngs=rngs, bias=False)
        self.router = Dense((e,), (x,), ("embed", "router"), quantizable=False, **dense)
        self.input_linear = param((x, e, kv * d), ("expert", "embed", "mlp"), dtype)
        self.output_linear = param((x, kv * d, e), ("expert", "mlp", "embed"), dtype)
        self.bias = param((e,), ("embed",), dtype)
        self.k_proj = Dense((e,), (kv, d), ("embed", "kv_heads", "head_dim"), **dense)
        self.v_proj = Dense((e,), (kv, d), ("embed", "kv_heads", "head_dim"), **dense)

    def route(self, x):
        """x [N, E] -> (weights [N, k] in x's dtype, expert ids [N, k]): the top k logits, softmaxed in float32."""
        top, ids = jax.lax.top_k(self.router(x).astype(jnp.float32), self.top_k)
        return jax.nn.softmax(top, axis=-1).astype(x.dtype), ids

    def _heads(self, rows, b, t):
        """[B * T * k, K * D] rows (token-major, then slot) -> [B, T, K * k, D] query heads, kv head i's slots together."""
        return rows.reshape(b, t, self.top_k, self.kv_heads, self.head_dim).transpose(0, 1, 3, 2, 4).reshape(b, t, -1, self.head_dim)

    def _routed_project(self, x, rot: Rotary | None):
        b, t, e = x.shape
        flat = x.reshape(-1, e)
        weights, ids = self.route(flat)
        q = self._heads(expert_rows(jnp.repeat(flat, self.top_k, axis=0), ids.reshape(-1), self.input_linear[...]), b, t)
        k, v = self.k_proj(x), self.v_proj(x)
        if rot is not None:
            q, k = apply_rotary(q, rot), apply_rotary(k, rot)
        return q, k, v, weights, ids

    def project(self, x, positions, rot: Rotary | None):
        return self._routed_project(x, rot)[:3]

    def __call__(self, x, positions, rot: Rotary | None, cache, kv=UNCACHED):
        b, t, e = x.shape
        q, k, v, weights, ids = self._routed_project(x, rot)
        out, new = kv(q, k, v, cache, positions, self.spec)  # [B, T, K * k, D]
        rows = out.reshape(b, t, self.kv_heads, self.top_k, self.head_dim).transpose(0, 1, 3, 2, 4).reshape(b * t * self.top_k, -1)
        y = expert_rows(rows, ids.reshape(-1), self.output_linear[...]).reshape(b * t, self.top_k, e)
        return jnp.sum(y * weights[..., None], axis=1).reshape(b, t, e) + self.bias[...], new

    def weights(self, x, positions, rot: Rotary | None, kv: Uncached = UNCACHED, keys=None):
        """`Attention.weights` with the heads in transformers' order (slot j's kv head i at j * K + i)."""
        probs = super().weights(x, positions, rot, kv, keys)
        b, h, t, s = probs.shape
        return probs.reshape(b, self.kv_heads, self.top_k, t, s).transpose(0, 2, 1, 3, 4).reshape(b, h, t, s)


class JetMoeDecoderLayer(DecoderLayer):
    attn_cls = MixtureOfAttention


class JetMoeForCausalLM(CausalLM):
    layer_cls = JetMoeDecoderLayer


def jetmoe_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Embeddings, norms and head as Llama's; each layer's attention experts and kv_proj (keys' rows, then values'),
    its MLP experts (GraniteMoE's fused input_linear) and their biases."""
    specs = [s for s in decoder_weight_map(cfg) if ".self_attn." not in s.hf_names[0] and ".mlp." not in s.hf_names[0]]
    width = cfg.num_kv_heads * cfg.head_dim
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        attn, experts = ours + ("self_attn",), hf + "self_attention.experts."
        specs += [WeightSpec(experts + "router.layer.weight", attn + ("router", "kernel"), Linear()),
                  WeightSpec(experts + "input_linear.weight", attn + ("input_linear",), Stacked(Transpose(1))),
                  WeightSpec(experts + "output_linear.weight", attn + ("output_linear",), Stacked(Transpose(1))),
                  WeightSpec(experts + "bias", attn + ("bias",)),
                  WeightSpec(hf + "self_attention.kv_proj.weight", attn + ("k_proj", "kernel"), Part(0, 2 * width, Linear())),
                  WeightSpec(hf + "self_attention.kv_proj.weight", attn + ("v_proj", "kernel"), Part(width, 2 * width, Linear())),
                  WeightSpec(hf + "mlp.router.layer.weight", ours + ("mlp", "gate", "kernel"), Linear()),
                  WeightSpec(hf + "mlp.bias", ours + ("mlp", "bias"))]
        specs += fused_expert_specs(hf + "mlp.input_linear.weight", hf + "mlp.output_linear.weight", ours + ("mlp",),
                                    cfg.intermediate_size)
    return specs


def jetmoe_names(raw: dict) -> dict:
    """config.json as JetMoeConfig reads it: head_dim (its attribute_map's alias) for kv_channels, the activation
    under activation_function, num_attention_heads = num_key_value_heads x num_experts_per_tok."""
    check_fields(raw, {"kv_channels": COUNT, "activation_function": NAME}, "config.json")
    raw = dict(raw, kv_channels=raw["head_dim"]) if raw.get("head_dim") is not None else raw
    raw = dict(raw, head_dim=raw["kv_channels"], hidden_act=raw["activation_function"])
    if raw.get("num_key_value_heads") is not None and raw.get("num_experts_per_tok") is not None:
        raw["num_attention_heads"] = raw["num_key_value_heads"] * raw["num_experts_per_tok"]
    return raw


def jetmoe_defaults(raw: dict) -> dict:
    if float(raw["rms_norm_eps"]) != 1e-6:
        raise ConfigError(f"config.json rms_norm_eps={raw['rms_norm_eps']} applies to JetMoE's final norm alone in transformers "
                          "(its layers' norms take 1e-6), which jaxllm does not run: set rms_norm_eps to 1e-6")
    experts, k = raw["num_local_experts"], raw["num_experts_per_tok"]
    if k > experts:
        raise ConfigError(f"config.json num_experts_per_tok={k} is more than num_local_experts={experts}, which JetMoeConfig "
                          "refuses: lower num_experts_per_tok")
    return dict(num_experts=experts, experts_per_token=k, router="topk_softmax", expert_output_bias=True, mlp_bias=False,
                qkv_bias=False, o_bias=False)


ARCHITECTURES = (Architecture(
    name="JetMoeForCausalLM", module=JetMoeForCausalLM, weight_map=jetmoe_weight_map, hf_model_type="jetmoe",
    config_defaults=jetmoe_defaults, common_names=jetmoe_names, norm_eps_key="rms_norm_eps",
    ignored_keys=NO_WINDOW + ("num_attention_heads", "hidden_act", "attention_bias", "mlp_bias"),
    # JetMoeConfig's field defaults (JetMoE-8B's shapes)
    hf_defaults=dict(vocab_size=32000, hidden_size=2048, num_hidden_layers=12, num_key_value_heads=16, kv_channels=128,
                     intermediate_size=5632, max_position_embeddings=4096, activation_function="silu", num_local_experts=8,
                     num_experts_per_tok=2, bos_token_id=1, eos_token_id=2, tie_word_embeddings=True, rms_norm_eps=1e-6),
    not_null=NOT_NULL + ("rms_norm_eps", "activation_function", "num_key_value_heads", "kv_channels", "head_dim",
                         "num_local_experts", "num_experts_per_tok", "rope_theta"),
    # 6 experts, top 2, in both halves of every layer: 2 kv heads, so 4 query heads; untied
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_key_value_heads=2,
                     kv_channels=16, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                     tie_word_embeddings=False, num_local_experts=6, num_experts_per_tok=2, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
