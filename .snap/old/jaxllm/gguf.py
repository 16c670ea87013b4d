"""GGUF files (llama.cpp): metadata into a config.json-shaped dict, tensors into HF names and layout.

The result is a tensor source like a safetensors checkpoint, so the usual weight map, checks and
streaming fill apply unchanged. Quantized tensors (Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, ... anything the
`gguf` package can dequantize) are dequantized to float32 one tensor at a time.

llama.cpp stores Llama-family q/k projections with rows permuted for its rotary layout; we undo it
so the weights are transformers' again.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from jaxllm.errors import CheckpointError

# general.architecture -> (HF architecture, whether llama.cpp permuted q/k rows)
ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", True),
    "mistral": ("MistralForCausalLM", True),
    "qwen2": ("Qwen2ForCausalLM", False),
    "qwen3": ("Qwen3ForCausalLM", False),
}

_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
}
_LAYER = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")


def _reader(path: Path):
    try:
        from gguf import GGUFReader
    except ImportError:
        raise CheckpointError("reading .gguf files needs the gguf package: pip install 'jaxllm[gguf]'") from None
    try:
        return GGUFReader(str(path))
    except Exception as err:
        raise CheckpointError(f"{path} is not a readable GGUF file ({type(err).__name__}: {str(err)[:150]})") from None


def _field(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.contents()


def hf_name(name: str) -> str | None:
    if name in _NAMES:
        return _NAMES[name]
    m = _LAYER.match(name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"model.layers.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def config_from_metadata(reader) -> dict:
    prefix = arch = _field(reader, "general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"GGUF architecture '{arch}' is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    name = str(_field(reader, "general.name", "") or "").lower()
    if arch == "llama" and "mistral" in name:  # llama.cpp files Mistral under llama
        arch = "mistral"

    def get(key, default=None):
        return _field(reader, f"{prefix}.{key}", default)

    heads = get("attention.head_count")
    hidden = get("embedding_length")
    tensor_names = {t.name for t in reader.tensors}
    vocab = get("vocab_size") or len(_field(reader, "tokenizer.ggml.tokens", []))
    raw = {
        "architectures": [ARCHITECTURES[arch][0]],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "max_position_embeddings": get("context_length", 2048),
        "rms_norm_eps": get("attention.layer_norm_rms_epsilon", 1e-6),
        "rope_theta": get("rope.freq_base", 10000.0),
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "pad_token_id": _field(reader, "tokenizer.ggml.padding_token_id"),
        "attention_bias": "blk.0.attn_output.bias" in tensor_names,
    }
    key_length = get("attention.key_length")
    if key_length:
        raw["head_dim"] = key_length
    scaling = get("rope.scaling.type")
    if scaling and scaling != "none":
        raw["rope_scaling"] = {"rope_type": scaling, "factor": get("rope.scaling.factor", 1.0)}
        if get("rope.scaling.original_context_length"):
            raw["rope_scaling"]["original_max_position_embeddings"] = get("rope.scaling.original_context_length")
    missing = [k for k, v in raw.items() if v is None and k in ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size")]
    if missing:
        raise CheckpointError(f"GGUF metadata lacks {', '.join(missing)}: the file is incomplete or not a language model")
    return raw


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows (head, pair, half) -> (head, half, pair)."""
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """Tensors of a GGUF file under their HF names, in HF layout, dequantized on demand."""

    def __init__(self, reader, raw: dict, permuted: bool):
        self.reader = reader
        self.tensors = {}
        for t in reader.tensors:
            name = hf_name(t.name) or t.name
            self.tensors[name] = t
        self.heads = {"q_proj": raw["num_attention_heads"], "k_proj": raw["num_key_value_heads"]} if permuted else {}

    def names(self):
        return self.tensors.keys()

    def shape(self, name):
        return tuple(int(d) for d in reversed(self.tensors[name].shape))  # GGUF lists dims innermost first

    def get(self, name) -> np.ndarray:
        from gguf import dequantize

        t = self.tensors[name]
        data = dequantize(t.data, t.tensor_type).reshape(self.shape(name))
        proj = name.split(".")[-2] if name.endswith(".weight") or name.endswith(".bias") else ""
        if proj in self.heads:
            data = _unpermute(data, self.heads[proj])
        return data


def open_checkpoint(path: Path):
    """(tensors under HF names, config.json-shaped dict) of a .gguf file."""
    reader = _reader(path)
    raw = config_from_metadata(reader)
    permuted = ARCHITECTURES[_field(reader, "general.architecture")][1]
    return GGUFCheckpoint(reader, raw, permuted), raw


def load_tokenizer(path: Path):
    """transformers' tokenizer for a GGUF file, built by its `convert_gguf_tokenizer` from metadata
    we read with `gguf`: transformers reads that metadata itself only through a module that imports
    torch, and the runtime must not need torch."""
    from transformers import PreTrainedTokenizerFast

    try:
        from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    except ImportError:  # transformers before the gguf package split
        from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    architecture, tokenizer_dict, config = _tokenizer_parts(path, GGUF_TOKENIZER_MAPPING)
    backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **config, **extra)


def _tokenizer_parts(path: Path, mapping: dict) -> tuple[str, dict, dict]:
    """(architecture, tokenizer dict, tokenizer config) from a GGUF's metadata, named as `mapping`
    (transformers' GGUF_TOKENIZER_MAPPING) says."""
    reader = _reader(path)
    groups = {group: {} for group in mapping}
    for group, renames in mapping.items():
        for key, name in renames.items():
            value = _field(reader, f"tokenizer.{key}")
            if value is not None:
                groups[group][name] = value
    tokenizer, config = groups["tokenizer"], groups["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":  # llama.cpp adds BOS to sentencepiece vocabularies
        config.setdefault("add_bos_token", True)
    for name in ("bos", "eos", "unk", "pad"):
        token_id = tokenizer.get(f"{name}_token_id")
        config[f"{name}_token"] = tokenizer["tokens"][token_id] if token_id is not None else None
    return _field(reader, "general.architecture"), tokenizer, config
