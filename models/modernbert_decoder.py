"""ModernBERT-decoder (ModernBertDecoderForCausalLM: jhu-clsp's Ettin decoders): the shared pre-norm layer with
LayerNorms (a bias where norm_bias), every layer's attention multi-head (hidden_size / heads per head, q/k/v and Wo
biased where attention_bias), the MLP's Wi fused [input | gate] (act(input) * gate: our gate_proj | up_proj rows).

Differences from the shared decoder, each from transformers' modeling_modernbert_decoder.py:
- the embeddings LayerNormed before the first layer (embeddings.norm: `embed_norm`), and the first layer's attention
  reading its input as it is (its attn_norm is nn.Identity);
- alternating local / global attention: layer_types, else every global_attn_every_n_layers-th layer from layer 0
  full, the others sliding over local_attention // 2 tokens; the full layers' rope of global_rope_theta, the sliding
  ones' of local_rope_theta (`local_rope`), rope_scaling merged into both, q/k rotated in float32 by tables in the
  model's dtype (`rope_float32_rotation`);
- a prediction head before the output: LayerNorm(act(dense(x))) (classifier_bias, classifier_activation), then the
  decoder, tied to the embeddings by default, with a bias where decoder_bias (`head_bias`).
"""

from __future__ import annotations

import functools

from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.config_options import without_head_dim
from jaxllm.models.decoder import CausalLM, DecoderLayer, dense
from jaxllm.models.layers import ACTIVATIONS, Dense, LayerNorm, activation
from jaxllm.models.transforms import Copy, Linear, Part
from jaxllm.models.weights import WeightSpec

THETAS = {"full_attention": ("global_rope_theta", 160_000.0), "sliding_attention": ("local_rope_theta", 10_000.0)}


def modernbert_names(raw: dict) -> dict:
    """config.json as ModernBertDecoderConfig reads it: norm_eps as the common layer_norm_eps, its layer types, and its
    rope per layer type (rope_parameters' entries, rope_scaling merged into both, an entry's rope_theta where it gives
    none from global_rope_theta / local_rope_theta); head_dim dropped (config_options.without_head_dim)."""
    raw = without_head_dim(raw, "ModernBertDecoderForCausalLM")
    given = raw.get("rope_parameters")
    if given is not None and not all(isinstance(v, dict) for v in given.values()):
        raise ConfigError("config.json rope_parameters must hold one entry per layer type (full_attention, sliding_attention), "
                          "which ModernBertDecoderConfig reads (transformers refuses a flat one): give it per layer type")
    ropes = {}
    for kind, (key, theta) in THETAS.items():
        ropes[kind] = dict((given or {}).get(kind) or {"rope_type": "default"}, **(raw.get("rope_scaling") or {}))
        ropes[kind].setdefault("rope_theta", raw.get(key, theta))
    every, n = raw.get("global_attn_every_n_layers", 3), raw.get("num_hidden_layers") or 0  # a null count: refused after
    types = raw.get("layer_types") or ["sliding_attention" if i % every else "full_attention" for i in range(n)]
    return dict({k: v for k, v in raw.items() if k != "norm_eps"}, layer_norm_eps=raw.get("norm_eps"), rope_parameters=ropes,
                rope_scaling=None, layer_types=types, hidden_act=raw.get("hidden_activation"))


def modernbert_defaults(raw: dict) -> dict:
    types, local = tuple(raw["layer_types"]), raw.get("local_attention")
    other = sorted(set(types) - set(THETAS))
    if other:
        raise ConfigError(f"config.json layer type '{other[0]}' is not one ModernBERT-decoder runs (transformers has a mask for "
                          "full_attention and sliding_attention alone): use those")
    if "sliding_attention" in types and (local is None or local < 2):
        raise ConfigError(f"config.json local_attention={local} leaves the sliding_attention layers a window of no token "
                          "(local_attention // 2; transformers fails): give the window's width, at least 2")
    act = raw.get("classifier_activation")
    if act not in ACTIVATIONS:
        raise ConfigError(f"config.json classifier_activation '{act}' is not supported; supported: {', '.join(ACTIVATIONS)}")
    return dict(num_kv_heads=raw["num_attention_heads"], layer_types=types, sliding_window=local // 2 if local else None,
                rope=parse_rope(raw), local_rope=parse_rope(raw, "sliding_attention"), rope_float32_rotation=True,
                embed_norm=True, norm_bias=bool(raw["norm_bias"]), head_bias=bool(raw["decoder_bias"]),
                prediction_head_bias=bool(raw["classifier_bias"]), prediction_head_act=act)


class FirstUnnormedLayer(DecoderLayer):
    """The shared layer whose first instance's attention reads its input unnormed (ModernBERT's attn_norm is
    nn.Identity on layer 0, the embeddings already normed)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        if layer == 0:
            self.input_layernorm = None


class PredictionHead(nnx.Module, pytree=False):
    """LayerNorm(act(dense(x))), before the output head (transformers' lm_head: ModernBertDecoderPredictionHead)."""

    def __init__(self, cfg: ModelConfig, norm_cls, *, dtype, rngs: nnx.Rngs):
        e = cfg.hidden_size
        self.dense = Dense((e,), (e,), ("embed", "word_embed"), bias=cfg.prediction_head_bias, dtype=dtype, rngs=rngs)
        self.act = activation(cfg.prediction_head_act)
        self.norm = norm_cls(e, cfg.norm_eps, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.norm(self.act(self.dense(x)))


class ModernBertCausalLM(CausalLM):
    def __init__(self, cfg: ModelConfig, *, dtype, rngs: nnx.Rngs):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        self.prediction_head = PredictionHead(cfg, self.final_norm, dtype=dtype, rngs=rngs)

    def head(self, hidden):
        return super().head(self.prediction_head(hidden))


def _with_norms(bias: bool) -> type[CausalLM]:
    norm = functools.partial(LayerNorm, bias=bias)
    layer = type("ModernBertDecoderLayer", (FirstUnnormedLayer,), {"norm_cls": norm})
    return type("ModernBertDecoderForCausalLM", (ModernBertCausalLM,), {"layer_cls": layer, "final_norm": norm})


MODULES = {bias: _with_norms(bias) for bias in (False, True)}


def modernbert_module(cfg: ModelConfig, **kwargs):
    return MODULES[cfg.norm_bias](cfg, **kwargs)


def modernbert_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    norms = ("weight", "bias") if cfg.norm_bias else ("weight",)

    def norm(hf: str, path: tuple) -> list[WeightSpec]:
        return [WeightSpec(f"{hf}.{p}", path + (p,)) for p in norms]

    specs = [WeightSpec("model.embeddings.tok_embeddings.weight", ("model", "embed_tokens", "embedding"))]
    specs += norm("model.embeddings.norm", ("model", "embed_norm")) + norm("model.final_norm", ("model", "norm"))
    specs += dense("lm_head.dense", ("prediction_head", "dense"), bias=cfg.prediction_head_bias)
    specs += norm("lm_head.norm", ("prediction_head", "norm"))
    specs += [] if cfg.tie_word_embeddings else [WeightSpec("decoder.weight", ("lm_head", "kernel"), Linear())]
    specs += [WeightSpec("decoder.bias", ("lm_head", "bias"))] if cfg.head_bias else []
    f = cfg.intermediate_size
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs += norm(hf + "attn_norm", ours + ("input_layernorm",)) if i else []
        specs += norm(hf + "mlp_norm", ours + ("post_attention_layernorm",))
        for theirs, name in (("q_proj", "q_proj"), ("k_proj", "k_proj"), ("v_proj", "v_proj"), ("Wo", "o_proj")):
            specs += dense(f"{hf}attn.{theirs}", ours + ("self_attn", name), Linear(2 if name == "o_proj" else 1), cfg.qkv_bias)
        for offset, name in ((0, "gate_proj"), (f, "up_proj")):  # Wi's rows: the activated input, then the gate
            specs.append(WeightSpec(f"{hf}mlp.Wi.weight", ours + ("mlp", name, "kernel"), Part(offset, 2 * f, Linear())))
            if cfg.mlp_bias:
                specs.append(WeightSpec(f"{hf}mlp.Wi.bias", ours + ("mlp", name, "bias"), Part(offset, 2 * f, Copy())))
        specs += dense(f"{hf}mlp.Wo", ours + ("mlp", "down_proj"), bias=cfg.mlp_bias)
    return specs


ARCHITECTURES = (Architecture(
    name="ModernBertDecoderForCausalLM", module=modernbert_module, weight_map=modernbert_weight_map,
    hf_model_type="modernbert-decoder", head_name="decoder.weight", norm_eps_key="norm_eps", common_names=modernbert_names,
    config_defaults=modernbert_defaults,
    # read by another family, not by ModernBertDecoderConfig (its window is local_attention's, its heads all kv heads)
    ignored_keys=("sliding_window", "use_sliding_window", "num_key_value_heads", "hidden_act", "rope_theta"),
    # ModernBertDecoderConfig's defaults
    hf_defaults=dict(vocab_size=50368, hidden_size=768, intermediate_size=1152, num_hidden_layers=22, num_attention_heads=12,
                     hidden_activation="gelu", max_position_embeddings=8192, norm_eps=1e-5, norm_bias=False,
                     attention_bias=False, mlp_bias=False, decoder_bias=True, classifier_bias=False,
                     classifier_activation="gelu", local_attention=128, tie_word_embeddings=True,
                     pad_token_id=50283, eos_token_id=50282, bos_token_id=50281),
    not_null=NOT_NULL + ("vocab_size", "norm_eps", "hidden_activation", "attention_bias", "mlp_bias", "norm_bias",
                         "decoder_bias", "classifier_bias", "classifier_activation"),
    # biases everywhere (norms, attention, MLP, the prediction head), the head untied; the window 8 tokens (16 // 2), a
    # global layer every 2 from layer 0, each layer type's rope base its own
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     max_position_embeddings=256, norm_eps=1e-5, norm_bias=True, attention_bias=True, mlp_bias=True,
                     classifier_bias=True, decoder_bias=True, hidden_activation="gelu", classifier_activation="gelu",
                     local_attention=16, global_attn_every_n_layers=2, global_rope_theta=160000.0, local_rope_theta=10000.0,
                     tie_word_embeddings=False, pad_token_id=0, bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2),
),)
