"""What a model file declares about each architecture it serves: the module class, how
config.json reads, and how the checkpoint's tensors map onto the parameters.

Model files build these; `jaxllm.models.registry` collects them from `jaxllm.models`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from jaxllm.errors import ConfigError
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import check_config, require_fields
from jaxllm.models.config_reading import from_hf
from jaxllm.models.weights import EMBEDDING


@dataclass(frozen=True)
class Wrapper:
    """A transformers multimodal class whose checkpoints hold one of our text models, loaded as
    that text model for text generation. Its config.json nests the text model's config under
    `text_key`; its safetensors name the text model's tensors under `text_module`, as transformers
    4.x saves them (and 5.x still writes them: language_model.model.layers.0...,
    language_model.lm_head.weight) or as 5.x's classes name them (model.language_model.layers.0...,
    lm_head.weight), beside the tensors of `other_modules` (vision tower, projector), never read.

    A family declares the wrappers of its text model in its Architecture's `wrappers`
    (Gemma 3's Gemma3ForConditionalGeneration); the registry unwraps such a config.json
    (registry.unwrap) and reads the text model as the family of the text config's model_type."""

    name: str  # "Gemma3ForConditionalGeneration", as in config.json's "architectures"
    model_type: str  # the wrapper config's model_type ("gemma3")
    # the text config's model_type where it gives none ("gemma3_text"), or whatever it gives where fixed_text_type:
    # a registered family's, which reads the text config (Qwen2-VL's text model: "qwen2", Qwen2's layers)
    text_model_type: str
    # Whether the wrapper's config class builds the text config with one class whatever its model_type
    # says (Gemma3Config: Gemma3TextConfig); False: with the class of that model_type (LlavaConfig's AutoConfig)
    fixed_text_type: bool = True
    text_key: str = "text_config"
    text_module: str = "language_model"  # the wrapper's attribute holding the text model
    other_modules: tuple[str, ...] = ("vision_tower", "multi_modal_projector")
    # Keys the wrapper's transformers code reads from the top level of config.json for the text model,
    # with its config class's default for a key left out (Gemma3Config's tie_word_embeddings, true: the
    # wrapper ties its own lm_head, whatever the text config says); a null flag is off, as transformers reads it
    top_level: dict = field(default_factory=dict)
    # Flags the wrapper's config turns on where its top level says so, else the text config's value stands
    # (LlavaConfig and Qwen2VLConfig forward a true text_config.tie_word_embeddings to their own, false by default)
    top_level_or: tuple[str, ...] = ()
    # Text config keys the wrapper's modeling code never applies, set to the value that means "off"
    # (Gemma3ForConditionalGeneration's head applies no final_logit_softcapping)
    text_overrides: dict = field(default_factory=dict)
    # The text config where `text_key` is null or left out: these values (Mistral3Config's init_kwargs, model_type
    # among them) or, where flat_keys are named, those of the top level's keys (Qwen2VLConfig reads a flat
    # config.json's text keys off its top level, as Qwen2-VL's Hub checkpoints spell it)
    null_text: dict = field(default_factory=dict)
    flat_keys: tuple[str, ...] = ()
    # {text config model_type: the wrapper whose reading of a text config applies}: its text_model_type, text_defaults,
    # text_overrides and edit (GLM-4.6V's text_config is GLM-4.1V's or GLM-4.5V's, by its model_type)
    text_readings: dict = field(default_factory=dict)
    # {text model_type: the defaults of the class the wrapper builds its text config with, where the family's reading
    # has none or others}: a key the text config leaves out reads as these (Qwen2VLTextConfig's shapes and rope base
    # beside Qwen2Config's; LLaVA's text configs, saved as their difference from LlamaConfig's defaults, give no shape)
    text_defaults: dict = field(default_factory=dict)
    # The text config -> the same as the wrapper's text config class and text model read it, or a ConfigError
    # (Qwen2-VL's "mrope" rope, plain rope for text alone)
    edit: Callable[[dict], dict] = lambda text: text
    # The checkpoint's tensor source -> the same with the text model's tensors as its family's weight map names
    # them, before they are looked up under the wrapper's names (Qwen3-VL-MoE's fused experts: weights.split_experts)
    tensors: Callable = lambda source: source

    def text_config(self, raw: dict) -> dict:
        """The text model's config.json, as the wrapper's transformers classes build and run it: the
        `text_key` object (null: `null_text`, or the top level's `flat_keys`) over the `text_defaults`, the
        model_type its config class reads (a `text_readings` wrapper's reading where it names one), the wrapper's `top_level` and `top_level_or` keys, the top-level
        token ids and dtype where given (what transformers' generation and loading read first), and the
        `text_overrides`, through `edit`."""
        given = raw.get(self.text_key)
        if given is None and self.flat_keys:
            text = check_config({k: raw[k] for k in self.flat_keys if k in raw})
        else:
            text = check_config(self.null_text if given is None else given, prefix=self.text_key + ".")
        model_type = (None if self.fixed_text_type else text.get("model_type")) or self.text_model_type
        reading = self.text_readings.get(model_type, self)
        model_type = model_type if reading is self else reading.text_model_type
        out = dict(reading.text_defaults.get(model_type, {}), **{k: v for k, v in text.items() if k != "architectures"})
        out["model_type"] = model_type
        for key, default in self.top_level.items():
            value = raw.get(key, default)
            out[key] = False if value is None and isinstance(default, bool) else value
        for key in self.top_level_or:
            if raw.get(key):
                out[key] = True
        for key in ("bos_token_id", "eos_token_id", "pad_token_id", "dtype", "torch_dtype"):
            if raw.get(key) is not None:
                out[key] = raw[key]
        return reading.edit(dict(out, **reading.text_overrides))

    def ignore(self) -> tuple[str, ...]:
        """Regexes of the other modules' tensors, under either spelling (vision_tower.*, model.vision_tower.*:
        the wrapper's base model is `model` whatever its text family's prefix), a module's parameter of its own
        among them (LLaVA-NeXT's image_newline)."""
        others = "|".join(map(re.escape, self.other_modules))
        return (rf"^(?:model\.)?(?:{others})(?:\.|$)",) if others else ()


    def check_tie(self, arch: Architecture, specs) -> None:
        """A tied head: transformers ties the wrapper's lm_head to its text model's embed_tokens (_tied_weights_keys
        model.language_model.embed_tokens.weight), which a text model whose embedding is named otherwise (GPT-2's wte,
        GPT-NeoX's embed_in) does not have: transformers fails to build it, refused here in one line."""
        embed = next(s.hf_name for s in specs if s.path == EMBEDDING)
        if embed != f"{arch.base_prefix}.embed_tokens.weight":
            raise ConfigError(f"config.json ties {self.name}'s lm_head to its language model's embed_tokens, which "
                              f"{arch.hf_model_type}'s model does not have ({embed}; transformers fails to build it): "
                              "set tie_word_embeddings false, with the head's tensor in the checkpoint")


@dataclass(frozen=True)
class Architecture:
    name: str  # "LlamaForCausalLM", as in config.json's "architectures"
    module: type  # Flax NNX module class: module(cfg, dtype=..., rngs=...)
    # cfg -> [WeightSpec]: which HF tensor fills which parameter, and how (jaxllm.models.weights).
    weight_map: Callable
    hf_model_type: str  # transformers' model_type: the family of a config.json that names it (registry.architecture_of)
    # raw config.json dict -> ModelConfig fields the HF modeling code hard-wires for this family.
    config_defaults: Callable[[dict], dict] = lambda raw: {}
    # A tiny HF config (dict) for the parity tests; every registered architecture must have one.
    tiny_config: dict = field(default_factory=dict)
    # Regexes of HF tensor names that carry nothing we need (e.g. cached rotary buffers).
    ignore: tuple[str, ...] = (r".*rotary_emb\.inv_freq$",)
    # raw config.json -> the same with the common key names, for families with their own spelling
    # (GPT-2's n_embd, n_layer, ...).
    common_names: Callable[[dict], dict] = lambda raw: raw
    # What this family's transformers config class assumes for a key config.json leaves out, where
    # it differs from the generic reading (models/config_reading.py from_hf): Mistral's 4,096-token
    # window, Gemma's tied embeddings, Mixtral's rope base, num_key_value_heads where the class does
    # not take num_attention_heads for it. A key the file gives, null included, wins.
    hf_defaults: dict = field(default_factory=dict)
    # The checkpoint's output head, which a tied model does not read (GPT-NeoX: embed_out.weight).
    head_name: str = "lm_head.weight"
    # transformers' base_model_prefix: the first part of the base model's tensor names, which a
    # checkpoint saved from the base model alone leaves out (openai-community/gpt2: h.0.attn...,
    # not transformer.h.0.attn...); transformers adds it when loading such a checkpoint, and so do we.
    base_prefix: str = "model"
    # config.json keys this family's transformers code never reads, dropped before anything reads
    # them: keys another family reads (Mistral's sliding_window, Qwen's layer_types) would
    # otherwise change what we compute (NO_WINDOW: a family without sliding windows).
    ignored_keys: tuple[str, ...] = ()
    # Whether transformers' modeling code of this family rotates part of each head
    # (partial_rotary_factor: Phi-3 / Phi-4-mini, GPT-NeoX); the others ignore the key, and so do we.
    partial_rotary: bool = False
    # The config.json key of the norms' epsilon this family's transformers code reads (GPT-2's before
    # common_names); the other spellings (NORM_EPS_KEYS) are dropped, as its code never reads them.
    # A tuple: several keys the config class reads (EXAONE 3's layer_norm_epsilon, an attribute_map alias of rms_norm_eps).
    norm_eps_key: str | tuple[str, ...] = "rms_norm_eps"
    # config.json keys this family's transformers config class (strict typing) or model construction
    # refuses as null, where the generic reading would take null as absent: refused here too. rope_theta and
    # partial_rotary_factor (ROPE_OWN) only where the rope settings give none of their own (transformers then takes theirs).
    not_null: tuple[str, ...] = ()
    # Other model_types transformers builds with this very config class and model class (GPT-SW3's
    # "gpt-sw3": GPT2Config, GPT2LMHeadModel): read as this family.
    hf_aliases: tuple[str, ...] = ()
    # Multimodal classes whose checkpoints hold this family's text model (Wrapper): loaded as this model.
    wrappers: tuple[Wrapper, ...] = ()
    # cfg -> regexes of further tensors this config's model does not read, beside `ignore` (Gemma 4:
    # the k/v projections its checkpoints keep for the layers that share another's keys and values).
    ignore_for: Callable = lambda cfg: ()
    # The checkpoint's tensor source -> the same as the weight map names it (Qwen3.5-MoE's fused experts, which
    # transformers also reads: weights.split_experts); a wrapper's `tensors` apply after these
    tensors: Callable = lambda source: source

    def config(self, raw: dict) -> ModelConfig:
        """The ModelConfig of a config.json dict, validated."""
        raw = check_config(raw)
        for key in self.not_null:
            if key in raw and raw[key] is None and not (key in ROPE_OWN and _rope_value(raw, key) is not None):
                raise ConfigError(f"config.json '{key}' is null, which transformers refuses for {self.name}: give it a "
                                  "value, or leave the key out for the family's default")
        # inside the rope settings: a null base where the top-level one may not be null either, a null factor where the
        # family rotates part of each head (transformers computes with the null: a TypeError)
        for key in ("rope_theta",) * ("rope_theta" in self.not_null) + ("partial_rotary_factor",) * self.partial_rotary:
            where = _null_in_rope(raw, key)
            if where:
                raise ConfigError(f"config.json '{where}' is null, which transformers cannot run for {self.name}: give it a "
                                  "value, or leave the key out")
        raw = {k: v for k, v in raw.items()
               if k not in self.ignored_keys and (k not in NORM_EPS_KEYS or k in _keys(self.norm_eps_key))}
        if not self.partial_rotary:
            raw = _without_partial_rotary(raw)
        defaulted = tuple(k for k in self.hf_defaults if k not in raw)
        raw = self.common_names({**self.hf_defaults, **raw})
        require_fields(raw)
        return from_hf(raw, self.name, self.config_defaults(raw), defaulted)

    def ignored(self, cfg: ModelConfig) -> tuple[str, ...]:
        """Regexes of checkpoint tensors this model does not read (a tied output head among them)."""
        return self.ignore + tuple(self.ignore_for(cfg)) + ((rf"^{re.escape(self.head_name)}$",) if cfg.tie_word_embeddings else ())


# What a wrapper whose own bias-free lm_head gives the logits (LlavaForConditionalGeneration) makes of the text
# config's head settings, whichever family it names: Gemma 2's soft-capping, Cohere's logit_scale, Granite's
# logits_scaling and PhiMoE's head bias belong to those families' ForCausalLM heads, which it never builds
OWN_HEAD = dict(final_logit_softcapping=None, logit_scale=1.0, logits_scaling=1.0, lm_head_bias=False)
NO_WINDOW = ("sliding_window", "layer_types")
# Qwen's switch for its window: the families whose transformers config has no such key keep their
# window whatever a stray use_sliding_window says
NO_WINDOW_SWITCH = ("use_sliding_window",)
# Keys every family's transformers config refuses as null; RMS_NORMED: those of the rope, RMSNorm families beside them.
NOT_NULL = ("max_position_embeddings", "tie_word_embeddings")
RMS_NOT_NULL = NOT_NULL + ("rms_norm_eps", "hidden_act", "rope_theta")


def _keys(key: str | tuple[str, ...]) -> tuple[str, ...]:
    return (key,) if isinstance(key, str) else key


# Top-level keys a config class copies into its rope settings when they give none of their own: null is refused
# there alone (not_null), as the rope's own value is the one read otherwise.
ROPE_OWN = ("rope_theta", "partial_rotary_factor")


def _rope_value(raw: dict, key: str):
    """`key`'s value in config.json's flat rope settings (rope_scaling, else rope_parameters), or None."""
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    return rope.get(key) if isinstance(rope, dict) else None


def _null_in_rope(raw: dict, key: str) -> str | None:
    """Where config.json's flat rope settings (rope_parameters, rope_scaling) give `key` as null ("rope_parameters.rope_theta"),
    or None; the families reading a rope per layer type check their entries themselves (mimo_v2_flash.layer_type_ropes,
    gemma4.gemma4_rope)."""
    for name in ("rope_parameters", "rope_scaling"):
        rope = raw.get(name)
        if isinstance(rope, dict) and key in rope and rope[key] is None:
            return f"{name}.{key}"
    return None


NORM_EPS_KEYS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_epsilon", "norm_eps")


def _without_partial_rotary(raw: dict) -> dict:
    """config.json without partial_rotary_factor, top-level or in rope_parameters / rope_scaling."""
    raw = {k: v for k, v in raw.items() if k != "partial_rotary_factor"}
    for key in ("rope_parameters", "rope_scaling"):
        if isinstance(raw.get(key), dict):
            raw[key] = {k: v for k, v in raw[key].items() if k != "partial_rotary_factor"}
    return raw
