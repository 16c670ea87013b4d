"""Dory (DoryForCausalLM, NVIDIA Nemotron-Labs Dory): a looped normalized transformer (nGPT). Its layers are Gemma 2's
sandwich layer (models/gemma.py) on the unit sphere:

- every norm a weightless unit-sphere norm, x / sqrt(sum(x^2) + 1e-6) in float32 (`RMSNorm(unit=True)`: the layers',
  the final one, each q and k head's (`qk_norm` "unit"), the attention output's over every head before o_proj and the
  MLP's product before down_proj);
- the residual an interpolation towards the normed update, h + |lambda * s| (update - h), h the layer's normed input;
- queries times (sqk * sqrt(head_dim) / initializer_range)^2 per head and dim after rope; the output gate (AFMoE's
  gate_proj, no bias) of sigmoid(gate * (s_gate * hidden^0.25 / initializer_range)^2); the MLP's gate and up times
  suv_gate, suv_up * sqrt(hidden); the logits times logit_scale / initializer_range per token, in float32;
- a rope per layer type (rope_parameters keyed by full_attention / sliding_attention: `local_rope`; 1e4 and 1e7 where
  left out), every head's dims turned.

The loop: the checkpoint's n_input_layers run once, then its n_recurrent_layers n_recurrent_loops times, then its
n_output_layers once. We run the loop unrolled (ModelConfig.loop): each run of a recurrent layer is a layer of ours,
with its own cache and the first run's modules (nnx shared references, read once at the first run's path). Each loop
starts from unit(x) + unit(the input layers' output): the first run's first layer computes that and hands it on
(`carries`). recurrent_kv_cache_mode "per_loop" gives each run its own pages; "last_loop" one page pool per recurrent
layer, which the earlier loops write and attend over and the last overwrites (ModelConfig.kv_pools), as transformers'
earlier loops attend the last loop's cached past and their own new tokens.

config.json as transformers saves it lists each layer's attention and MLP as two entries of layer_types (each pair
one layer: ["sliding_attention", "mlp", ...]), its layer counts doubled; DoryConfig halves them, and so do we. Refused
in one line: counts that do not add up, a loop of no layers (or none at all), a rope other than a default one per
layer type, initializer_range 0 (every scale divides by it)."""

from __future__ import annotations

import functools
import re

import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import INDEX, NAME, POSITIVE, Field, _given, check_fields, check_layer_count
from jaxllm.models.decoder import CausalLM, DecoderModel, decoder_weight_map
from jaxllm.models.gemma import SandwichLayer
from jaxllm.models.layers import GatedMLP, RMSNorm, param
from jaxllm.models.mimo_v2_flash import layer_type_ropes
from jaxllm.models.transforms import Copy, Linear
from jaxllm.models.weights import Renamed, WeightSpec

OWN_FIELDS = {"n_input_layers": _given(INDEX), "n_recurrent_layers": INDEX, "n_output_layers": _given(INDEX),
              "n_recurrent_loops": _given(Field(int, 1)), "ngpt_alpha_init": _given(Field(float)),
              "initializer_range": _given(POSITIVE), "recurrent_kv_cache_mode": _given(NAME)}
MODES = ("per_loop", "last_loop")
# nGPT's norms: weightless, onto the unit sphere (DoryL2Norm's epsilon, 1e-6, whatever config.json says)
UnitNorm = functools.partial(RMSNorm, weight=False, unit=True)


class DoryAttention(Attention):
    """The shared attention (unit q/k norms, AFMoE's output gate) with nGPT's learned scales: the queries times sqk's
    square after rope, the gate's pre-activations times s_gate's, the output onto the unit sphere before o_proj."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        h, d, init = cfg.layer_heads(layer), cfg.head_dim, cfg.ngpt_init
        self.sqk, self.s_gate = (param((h, d), ("q_heads", "head_dim"), dtype) for _ in range(2))
        self.sqk_scale, self.s_gate_scale = d**0.5 / init, cfg.hidden_size**0.25 / init
        self.attn_sub_norm = nnx.data(UnitNorm((h, d), cfg.norm_eps, dtype=dtype, rngs=rngs, axes=("q_heads", "head_dim")))

    def project(self, x, positions, rot):
        q, k, v = super().project(x, positions, rot)
        return q * jnp.square(self.sqk[...] * self.sqk_scale), k, v

    def gate_logits(self, x):
        return self.gate_proj(x) * jnp.square(self.s_gate[...] * self.s_gate_scale)


class DoryMLP(GatedMLP):
    """down(unit(act(gate(x) suv_gate s) * up(x) suv_up s)), s = sqrt(hidden_size)."""

    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        self.suv_gate, self.suv_up = (param((cfg.intermediate_size,), ("mlp",), dtype) for _ in range(2))
        self.suv_scale = cfg.hidden_size**0.5
        self.ffn_sub_norm = nnx.data(UnitNorm(cfg.intermediate_size, cfg.norm_eps, dtype=dtype, rngs=rngs, axes=("mlp",)))

    def __call__(self, x):
        gate = self.gate_proj(x) * (self.suv_gate[...] * self.suv_scale)
        return self.down_proj(self.ffn_sub_norm(self.act(gate) * (self.up_proj(x) * (self.suv_up[...] * self.suv_scale))))


class DoryLayer(SandwichLayer):
    """h = unit(x); h + |lambda_1 s| (unit(attn(h)) - h), then the same around the MLP (s = ngpt_alpha_init /
    initializer_range). A loop's first layer starts from unit(x) + the loop's input, which the first loop's first
    layer makes (unit(x): the input layers' output) and every layer hands on. `shared`: each checkpoint layer's first
    run so far, whose modules a later run holds."""

    norm_cls = UnitNorm
    attn_cls = DoryAttention
    carries = True
    shares_modules = True

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs, shared: dict):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        e, made = cfg.hidden_size, dict(dtype=dtype, rngs=rngs)
        self.pre_feedforward_layernorm, self.post_feedforward_layernorm = (UnitNorm(e, cfg.norm_eps, **made) for _ in range(2))
        self.mlp = DoryMLP(cfg, **made)
        self.lambda_1, self.lambda_2 = (param((e,), ("norm",), dtype) for _ in range(2))
        self.lambda_scale = cfg.ngpt_alpha / cfg.ngpt_init
        first, count, loops = cfg.loop
        run, at = divmod(layer - first, count)
        self.loop_start = None if at or not 0 <= run < loops else "first" if run == 0 else "next"
        same = shared.setdefault(cfg.checkpoint_layer(layer), self)
        if same is not self:  # a later run: the first run's modules (built abstractly above, then replaced)
            self.self_attn, self.mlp, self.lambda_1, self.lambda_2 = same.self_attn, same.mlp, same.lambda_1, same.lambda_2

    def start(self, x, carry):
        """(the layer's input, the loop's input) of x and the loop input handed on so far (None before the loop)."""
        if self.loop_start is None:
            return x, carry
        u = self.input_layernorm(x)  # DoryModel's norm: the same weightless unit norm
        carry = u if self.loop_start == "first" else carry
        return u + carry, carry

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, carry=None):
        x, carry = self.start(x, carry)
        h = self.input_layernorm(x)
        attn, cache = self.mix(h, positions, rot, cache, kv)
        h = h + jnp.abs(self.lambda_1[...] * self.lambda_scale) * (self.post_attention_layernorm(attn) - h)
        h = self.pre_feedforward_layernorm(h)
        out = self.post_feedforward_layernorm(self.mlp(h))
        return h + jnp.abs(self.lambda_2[...] * self.lambda_scale) * (out - h), cache, carry


class DoryModel(DecoderModel):
    """The shared decoder whose looped layers share their first run's modules (built as the layers are)."""

    def attention_input(self, i, trace, tokens, positions):
        """A loop's first layer attends its norm of unit(x) + the loop's input (unit of the first loop's input)."""
        layer, first = self.layers[i], self.cfg.loop[0]
        if layer.loop_start is None:
            return super().attention_input(i, trace, tokens, positions)
        return layer.input_layernorm(layer.start(trace[i], self.layers[first].start(trace[first], None)[1])[0])


class DoryForCausalLM(CausalLM):
    layer_cls = DoryLayer
    model_cls = DoryModel
    final_norm = UnitNorm

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        self.logit_scale = param((cfg.vocab_size,), ("vocab_out",), dtype)

    def logits(self, hidden):
        return super().logits(hidden) * (self.logit_scale[...].astype(jnp.float32) * (1 / self.cfg.ngpt_init))


def dory_names(raw: dict) -> dict:
    """config.json as DoryConfig reads it, its loop unrolled: layer_types and the layer counts halved where layer_types
    lists each layer's attention and MLP apart; num_hidden_layers and layer_types counting every run of a looped layer
    (the checkpoint's counts kept under dory_layers)."""
    check_fields(raw, OWN_FIELDS, "config.json")
    if "rope_scaling" in raw and raw["rope_scaling"] is None:  # DoryConfig keeps its rope_parameters (another replaces them)
        raw = {k: v for k, v in raw.items() if k != "rope_scaling"}
    if raw.get("num_hidden_layers") is None:  # require_fields refuses it
        return raw
    counts = {k: raw.get(k) for k in ("num_hidden_layers", "n_input_layers", "n_recurrent_layers", "n_output_layers")}
    types = raw.get("layer_types")
    if types is not None and "mlp" in types:  # DoryConfig.to_dict's layout: each layer (attention type, "mlp")
        if len(types) % 2 or any(t != "mlp" for t in types[1::2]) or "mlp" in types[::2]:
            raise ConfigError("config.json layer_types lists 'mlp' blocks, but not as each layer's attention type followed by "
                              "'mlp' (DoryConfig keeps every other entry): give (attention type, 'mlp') pairs, or no 'mlp' at all")
        types, counts = types[::2], {k: v if v is None else v // 2 for k, v in counts.items()}
    n, first, count, last = counts.values()
    if types is None:
        types = ["full_attention" if (i + 1) % 4 == 0 else "sliding_attention" for i in range(n)]
    if len(types) != n:
        raise ConfigError(f"config.json has {len(types)} layer_types for {n} layers (DoryConfig's counts, halved where "
                          "layer_types lists 'mlp' blocks): give one per layer")
    count = n - first - last if count is None else count
    if first + count + last != n or count < 1:
        raise ConfigError(f"config.json n_input_layers {first} + n_recurrent_layers {count} + n_output_layers {last} must make "
                          f"num_hidden_layers {n} (DoryConfig refuses other sums; counts halved where layer_types lists 'mlp' blocks), "
                          "with at least one recurrent layer (jaxllm runs the loop in them): correct the layer counts")
    if raw["recurrent_kv_cache_mode"] not in MODES:
        raise ConfigError(f"config.json recurrent_kv_cache_mode {str(raw['recurrent_kv_cache_mode'])[:40]!r} is not one Dory "
                          f"runs: use {' or '.join(MODES)}")
    loops = raw["n_recurrent_loops"]
    check_layer_count(first + count * loops + last, f"n_input_layers {first} + n_recurrent_layers {count} x n_recurrent_loops "
                      f"{loops} + n_output_layers {last}")
    unrolled = list(types[:first]) + list(types[first:first + count]) * loops + list(types[first + count:])
    return dict(raw, num_hidden_layers=len(unrolled), layer_types=unrolled, dory_layers=(first, count, loops))


def dory_defaults(raw: dict) -> dict:
    first, count, loops = raw["dory_layers"]
    pools = ()
    if raw["recurrent_kv_cache_mode"] == "last_loop" and loops > 1:  # each run writes the first run's pages
        pools = tuple(first + (i - first) % count if first <= i < first + count * loops else i for i in range(raw["num_hidden_layers"]))
    ropes = raw.get("rope_parameters")
    if isinstance(ropes, dict):  # Dory's default rope turns every dim, whatever partial_rotary_factor says
        ropes = {k: {n: v for n, v in e.items() if n != "partial_rotary_factor"} if isinstance(e, dict) else e for k, e in ropes.items()}
    defaults = {"sliding_attention": {"rope_type": "default", "rope_theta": 1e4}, "full_attention": {"rope_type": "default", "rope_theta": 1e7}}
    rope = layer_type_ropes(dict(raw, rope_parameters=ropes), raw["layer_types"], 1.0, defaults)
    runs = tuple(first + (i - first) % count if first <= i < first + count * loops else i - count * (loops - 1) if i >= first
                 else i for i in range(raw["num_hidden_layers"]))
    return dict(rope, qk_norm="unit", attn_output_gate=True, attn_gate_bias=False, norm_eps=1e-6, loop=(first, count, loops),
                kv_pools=pools, checkpoint_layers=runs, ngpt_init=float(raw["initializer_range"]), ngpt_alpha=float(raw["ngpt_alpha_init"]))


def dory_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """decoder_weight_map's tensors less the norms' (weightless), with the output gate and nGPT's scales (the attention's
    sqk and s_gate, the MLP's suv_gate and suv_up, each layer's lambda_1 and lambda_2, the head's logit_scale); each
    checkpoint layer's under the first run of it, a looped layer's later runs holding the first's."""
    first, count, loops = cfg.loop
    later = range(first + count, first + count * loops)
    specs = [WeightSpec("lm_head.logit_scale", ("logit_scale",))]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs += [WeightSpec(hf + "self_attn.gate_proj.weight", ours + ("self_attn", "gate_proj", "kernel"), Linear())]
        specs += [WeightSpec(f"{hf}self_attn.{n}", ours + ("self_attn", n), Copy(flatten=True)) for n in ("sqk", "s_gate")]
        specs += [WeightSpec(f"{hf}mlp.{n}", ours + ("mlp", n)) for n in ("suv_gate", "suv_up")]
        specs += [WeightSpec(f"{hf}{n}", ours + (n,)) for n in ("lambda_1", "lambda_2")]
    out = []
    for spec in decoder_weight_map(cfg) + specs:
        parts = spec.hf_name.split(".")
        if spec.hf_name.endswith("norm.weight") or (parts[:2] == ["model", "layers"] and int(parts[2]) in later):
            continue
        if parts[:2] == ["model", "layers"]:
            parts[2] = str(cfg.checkpoint_layer(int(parts[2])))
        name = ".".join(["backbone" if parts[0] == "model" else parts[0]] + parts[1:])
        out.append(WeightSpec(name.replace(".embed_tokens.", ".embeddings.").replace(".self_attn.gate_proj.", ".self_attn.g_proj."),
                              spec.path, spec.transform))
    return out


_PAIRED = re.compile(r"^backbone\.layers\.(\d+)\.(mixer|attn_alpha|mlp_alpha)(?=\.|$)")


def dory_tensors(source):
    """A checkpoint's tensors under the names transformers saves (backbone.*, embeddings, the attention's g_proj), which
    the weight map reads: a file in transformers' own names (model.*, embed_tokens, gate_proj) renamed so, and the
    released layout (each layer an attention block layers.{2i}.mixer and an MLP block layers.{2i+1}.mixer, the residual
    rates attn_alpha and mlp_alpha) read as one layer each, as transformers' LayerPairCollapse loads it."""
    renamed = {}
    for name in source.names():
        ours = re.sub(r"^model\.", "backbone.", name).replace(".embed_tokens.", ".embeddings.").replace(".self_attn.gate_proj.", ".self_attn.g_proj.")
        if (m := _PAIRED.match(ours)) is not None:
            index, kind = int(m[1]), m[2]
            block = {"attn_alpha": "lambda_1", "mlp_alpha": "lambda_2"}.get(kind, ("self_attn", "mlp")[index % 2])
            ours = f"backbone.layers.{index // 2}.{block}" + ours[m.end():]
            ours = ours.replace(".self_attn.gate_proj.", ".self_attn.g_proj.")
        if ours != name:
            renamed[ours] = name
    return Renamed(source, renamed) if renamed else source


ARCHITECTURES = (Architecture(
    name="DoryForCausalLM", module=DoryForCausalLM, hf_model_type="dory", weight_map=dory_weight_map,
    config_defaults=dory_defaults, common_names=dory_names, norm_eps_key=(), tensors=dory_tensors,
    head_name="lm_head.weight",
    # DoryConfig's field defaults (Dory 1.0 4B's shapes, its counts as __post_init__ reads them)
    hf_defaults=dict(vocab_size=131072, hidden_size=2560, intermediate_size=7168, num_hidden_layers=36, num_attention_heads=16,
                     num_key_value_heads=4, head_dim=256, hidden_act="silu", max_position_embeddings=8192, initializer_range=0.0177,
                     tie_word_embeddings=False, attention_bias=False, mlp_bias=False, sliding_window=1024, ngpt_alpha_init=0.05,
                     n_input_layers=8, n_output_layers=8, n_recurrent_loops=2, recurrent_kv_cache_mode="per_loop"),
    not_null=NOT_NULL + ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "num_key_value_heads", "head_dim", "hidden_act", "sliding_window", "attention_bias", "mlp_bias"),
    # 1 input layer, 2 recurrent ones looped 3 times, 1 output layer (as transformers saves them: attention and mlp
    # entries, counts doubled); sliding (window 8) and full layers with ropes of their own; GQA; scales near 1
    # (initializer_range 1: transformers' stored scales are divided by it)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=16, max_position_embeddings=256, sliding_window=8,
                     layer_types=["sliding_attention", "mlp", "full_attention", "mlp", "sliding_attention", "mlp", "full_attention", "mlp"],
                     n_input_layers=2, n_output_layers=2, n_recurrent_loops=3, initializer_range=1.0, ngpt_alpha_init=2.0,
                     rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                      "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
                     tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
