"""Mllama (Llama 3.2 Vision): the text model, MllamaForCausalLM, and MllamaForConditionalGeneration's text part.

Its text model is Llama's decoder with cross-attention layers (`cross_attention_layers`) between the self-attention
ones, which attend to the image states. Without image states (and none cached) transformers' MllamaTextModel skips
them entirely (`continue`: no hidden state, no attention weights, no cache entry), so for text the model is Llama over
the self-attention layers alone: our layers are those, read at their checkpoint index (`checkpoint_layers`), the
cross-attention layers' tensors left unread and given no pages. The embedding holds vocab_size + 8 rows (the image
tokens past the text vocabulary), the head vocab_size (`head_vocab_size`); a prompt holding an image token is refused
(`text_vocab_size`), as jaxllm serves text. The head is never tied (its shape differs; neither class declares a tie),
and every attention takes hidden_size / heads per head without biases.
"""

from __future__ import annotations

import re

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, NO_WINDOW_SWITCH, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_options import check_null_original, without_head_dim
from jaxllm.models.decoder import CausalLM, decoder_weight_map
from jaxllm.models.llama import NO_BIAS
from jaxllm.models.weights import WeightSpec

IMAGE_ROWS = 8  # MllamaTextModel's nn.Embedding(vocab_size + 8, ...)
CROSS_LAYERS = [3, 8, 13, 18, 23, 28, 33, 38]  # MllamaTextConfig's cross_attention_layers where null or left out


def self_layers(raw: dict) -> tuple[int, ...]:
    """The checkpoint indices of the self-attention layers (every index not in cross_attention_layers; entries outside
    the layers name none, as transformers' `idx in cross_attention_layers` reads them), or a ConfigError where none is left."""
    n, cross = raw["num_hidden_layers"], raw.get("cross_attention_layers")
    cross = set(CROSS_LAYERS if cross is None else cross)
    kept = tuple(i for i in range(n) if i not in cross)
    if not kept:
        raise ConfigError(f"config.json cross_attention_layers names every one of the {n} layers, which leaves the text no "
                          "self-attention layer (transformers skips cross-attention layers without an image): list only "
                          "the checkpoint's cross-attention layers")
    return kept


def mllama_names(raw: dict) -> dict:
    """head_dim dropped (refused unless hidden_size / heads: config_options.without_head_dim); a null
    original_max_position_embeddings under a scaled rope refused, as transformers cannot compute it."""
    check_null_original(raw, "MllamaForCausalLM")
    return without_head_dim(raw, "MllamaForCausalLM")


def mllama_defaults(raw: dict) -> dict:
    layers = self_layers(raw)
    vocab = raw["vocab_size"]
    return dict(NO_BIAS, num_layers=len(layers), layer_types=("full_attention",) * len(layers), checkpoint_layers=layers,
                vocab_size=vocab + IMAGE_ROWS, head_vocab_size=vocab, text_vocab_size=vocab, tie_word_embeddings=False)


_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


def mllama_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Llama's weight map, our layer i read from the checkpoint's layer checkpoint_layers[i]."""
    def at(name):
        return _LAYER.sub(lambda m: f"model.layers.{cfg.checkpoint_layers[int(m.group(1))]}.", name)

    return [WeightSpec(at(s.hf_name), s.path, s.transform) for s in decoder_weight_map(cfg)]


def cross_layer_tensors(cfg: ModelConfig) -> tuple[str, ...]:
    """A regex of every tensor of the layers text skips (the cross-attention layers: cross_attn, its gates, norms, MLP)."""
    kept = "|".join(map(str, cfg.checkpoint_layers))
    return (rf"^(?:.*\.)?layers\.(?!(?:{kept})\.)\d+\.",)


# meta-llama/Llama-3.2-11B-Vision(-Instruct), -90B: MllamaConfig's text_config is always a MllamaTextConfig; the wrapper's
# own lm_head (never tied) gives the logits; the vision model and its projector are not read
MLLAMA_MULTIMODAL = Wrapper(name="MllamaForConditionalGeneration", model_type="mllama", text_model_type="mllama_text_model",
                            other_modules=("vision_model", "multi_modal_projector"))

ARCHITECTURES = (Architecture(
    name="MllamaForCausalLM", module=CausalLM, weight_map=mllama_weight_map, hf_model_type="mllama_text_model",
    ignored_keys=NO_WINDOW + NO_WINDOW_SWITCH, common_names=mllama_names, config_defaults=mllama_defaults,
    ignore_for=cross_layer_tensors, wrappers=(MLLAMA_MULTIMODAL,),
    # MllamaTextConfig's defaults (its rope base 500,000): multimodal checkpoints save the text config as its difference
    hf_defaults=dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=40, num_attention_heads=32,
                     num_key_value_heads=8, rms_norm_eps=1e-5, max_position_embeddings=131072, rope_theta=500000.0,
                     tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001, pad_token_id=128004),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "vocab_size", "num_hidden_layers"),
    # cross-attention layers between and after the self-attention ones (not layer 0: transformers' cached generation
    # then takes the cache's length from that empty layer, restarting positions); llama3 rope as the Hub's
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=5, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=1024, rms_norm_eps=1e-5, cross_attention_layers=[1, 4],
                     rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8},
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
