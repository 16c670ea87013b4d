"""RecurrentGemma (Google's Griffin; transformers' modeling_recurrent_gemma.py: google/recurrentgemma-*): the shared
pre-norm decoder whose layers mix tokens by Griffin's recurrent block (layer type "rg_lru": models/rg_lru.py, a recurrent
mixer keeping a state per sequence, no keys; no prefix cache: docs/architecture.md) or by local attention, as
block_types says, repeated over the layers ("recurrent" or "attention"); with

- Gemma's embeddings times sqrt(hidden_size), rounded to bfloat16 whatever the model's dtype (its normalizer buffer), and
  RMSNorms scaling by (1 + w) in float32; the layer's norms temporal_pre_norm and channel_pre_norm, the final final_norm;
- multi-query attention (num_key_value_heads, all heads by default) over a window of attention_window_size tokens on
  every attention layer, its q/k/v biases where attention_bias, o_proj's always; head_dim hidden_size /
  num_attention_heads (rounded down) unless config.json gives one; rotary positions on the first half of each head by default (the rope
  settings' partial_rotary_factor, else a top-level one, else 0.5), the default rope alone;
- a GeGLU MLP (hidden_activation, by default tanh GELU) intermediate_size / 2 wide with biases, mlp_block;
- the logits tanh-soft-capped at logits_soft_cap; the head tied to the embeddings by default;
- no position limit (its attention is local, its recurrence has none): max_position_embeddings is not read.
"""

import ml_dtypes
import numpy as np

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW_SWITCH, Architecture
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.decoder import CausalLM, decoder_weight_map, renamed
from jaxllm.models.mamba import MAMBA_POSITIONS, refuse_layer_types
from jaxllm.models.rg_lru import rg_lru_specs
from jaxllm.models.weights import WeightSpec

BLOCKS = {"recurrent": "rg_lru", "attention": "sliding_attention"}


def recurrent_gemma_names(raw: dict) -> dict:
    """The common keys as RecurrentGemmaConfig reads them: the window attention_window_size (sliding_window, its
    attribute_map alias, wins where given), hidden_activation, head_dim from the widths (rounded down) where not given, half of each head rotated
    where neither the rope settings nor the top level give a factor (a top-level null: the whole head), no position
    limit."""
    raw = dict(raw, hidden_act=raw.get("hidden_activation"), max_position_embeddings=MAMBA_POSITIONS)
    raw["sliding_window"] = raw["sliding_window"] if "sliding_window" in raw else raw.get("attention_window_size")
    if "head_dim" not in raw and isinstance(raw.get("hidden_size"), int) and isinstance(raw.get("num_attention_heads"), int):
        raw["head_dim"] = raw["hidden_size"] // raw["num_attention_heads"]
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if "partial_rotary_factor" not in raw and not (isinstance(rope, dict) and rope.get("partial_rotary_factor")):
        raw["partial_rotary_factor"] = 0.5
    return raw


def _layer_types(raw: dict) -> tuple[str, ...]:
    """block_types repeated over the layers (RecurrentGemmaConfig.layers_block_type: up to 100 times)."""
    refuse_layer_types(raw, "list the blocks in block_types instead", keys=("layer_types", "layers_block_type"))
    blocks, n = raw["block_types"], raw["num_hidden_layers"]
    unknown = [b for b in blocks if b not in BLOCKS]
    if unknown:
        raise ConfigError(f"config.json block_types has '{unknown[0]}', not a block RecurrentGemma has: use recurrent or attention")
    if len(blocks) * 100 < n:
        raise ConfigError(f"config.json block_types repeats up to 100 times in transformers ({len(blocks) * 100} layers), "
                          f"fewer than num_hidden_layers={n}: list more block_types")
    return tuple(BLOCKS[b] for b in (blocks * 100)[:n])


def recurrent_gemma_defaults(raw: dict) -> dict:
    heads, hidden = raw["num_attention_heads"], raw["hidden_size"]
    lru = raw.get("lru_width") or hidden
    if not raw["head_dim"]:
        raise ConfigError(f"config.json hidden_size={hidden} is less than num_attention_heads={heads}, which leaves heads of "
                          "0 values (RecurrentGemma's head_dim is hidden_size / num_attention_heads, rounded down): raise hidden_size or give "
                          "head_dim")
    if lru % heads:
        raise ConfigError(f"config.json lru_width={lru} is not a multiple of num_attention_heads={heads}, the RG-LRU's gate "
                          "blocks (transformers fails): set lru_width to a multiple of it")
    if raw["intermediate_size"] < 2:
        raise ConfigError(f"config.json intermediate_size={raw['intermediate_size']} leaves RecurrentGemma's MLP (half of it "
                          "wide) no width: raise it")
    rope = parse_rope(raw)
    if rope.type != "default":
        raise ConfigError(f"config.json rope type '{rope.type}' is not supported by RecurrentGemma (transformers refuses "
                          "every rope but the default): remove the rope scaling")
    scale = float(ml_dtypes.bfloat16(np.float32(hidden**0.5)))  # the normalizer buffer
    return dict(embed_scale=scale, norm_offset=1.0, mlp_bias=True, o_bias=True, intermediate_size=raw["intermediate_size"] // 2,
                final_softcap=float(raw["logits_soft_cap"]), layer_types=_layer_types(raw), recurrent_kinds=("rg_lru",),
                lru_width=lru, linear_conv_kernel=raw["conv1d_width"], conv_bias=True)


# our names -> RecurrentGemma's
_NAMES = {"input_layernorm": "temporal_pre_norm", "post_attention_layernorm": "channel_pre_norm", "self_attn": "temporal_block",
          "mlp": "mlp_block", "norm": "final_norm"}


def recurrent_gemma_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    return renamed(decoder_weight_map(cfg), _NAMES) + rg_lru_specs(cfg)


# RecurrentGemmaConfig's field defaults (recurrentgemma-2b's shapes)
_DEFAULTS = dict(num_hidden_layers=26, vocab_size=256000, hidden_size=2560, intermediate_size=3 * 2560, num_attention_heads=10,
                 attention_window_size=2048, conv1d_width=4, logits_soft_cap=30.0, rms_norm_eps=1e-6, pad_token_id=0,
                 eos_token_id=1, bos_token_id=2, hidden_activation="gelu_pytorch_tanh", rope_theta=10000.0,
                 block_types=["recurrent", "recurrent", "attention"], attention_bias=False, tie_word_embeddings=True)

ARCHITECTURES = (Architecture(
    name="RecurrentGemmaForCausalLM", module=CausalLM, weight_map=recurrent_gemma_weight_map, hf_model_type="recurrent_gemma",
    config_defaults=recurrent_gemma_defaults, common_names=recurrent_gemma_names, hf_defaults=_DEFAULTS, partial_rotary=True,
    # keys RecurrentGemmaConfig never reads (hidden_act: hidden_activation is its key)
    ignored_keys=("hidden_act", "max_position_embeddings", "mlp_bias") + NO_WINDOW_SWITCH,
    ignore=(r".*rotary_emb\.(original_)?inv_freq$", r"^model\.normalizer$"),
    not_null=("head_dim", "tie_word_embeddings", "rms_norm_eps", "rope_theta", "hidden_activation", "attention_bias", "block_types",
              "attention_window_size", "sliding_window", "conv1d_width", "logits_soft_cap"),
    # recurrent, recurrent, attention, recurrent: GQA (2 kv heads of 4), a window of 8, q/k/v biases, a quarter of each
    # head rotated, an RG-LRU 96 wide (blocks of 24), a conv of 3 taps, a soft cap that bites
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=2, lru_width=96, attention_window_size=8, conv1d_width=3, logits_soft_cap=5.0,
                     rms_norm_eps=1e-6, tie_word_embeddings=True, attention_bias=True, hidden_activation="gelu_pytorch_tanh",
                     block_types=["recurrent", "recurrent", "attention"], bos_token_id=2, eos_token_id=1, pad_token_id=0,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}),
),)
