"""GGUF files (llama.cpp): metadata into a config.json-shaped dict, tensors into HF names and layout.

The result is a tensor source like a safetensors checkpoint, so the usual weight map, checks and
streaming fill apply unchanged. Quantized tensors are dequantized to float32 one tensor at a time:
F16, BF16 and the 32-value block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) by numpy over all blocks
at once, anything else the `gguf` package can dequantize (Q4_K, Q6_K, ...) by that package.
The header is parsed here too (milliseconds; the package's reader takes seconds over a
vocabulary's strings), once per file. Tensor bytes are decoded in jaxllm/gguf_blocks.py and the
tokenizer is built and cached on disk in jaxllm/gguf_tokenizer.py.

Quantized loads (`jaxllm.load(..., quantize=...)`) take Q8_0, Q4_0 and Q4_1 kernels without a
float detour (`GGUFCheckpoint.blocks`): int8 / int4 values in groups of 32 with the file's float16
scales (Q4_1's minimum folded into a float32 offset), so the model computes with exactly the
file's values (d * q, or d * q + m, in float32).

The architectures (ARCHITECTURES) are those jaxllm serves whose GGUF files transformers' GGUF
loader reads too, and each reads as that loader reads it (tests/test_quant.py holds the two to the
same logits). What llama.cpp changed on the way in is undone: Llama-family q/k rows permuted for its
rotary layout, Gemma's norms stored as 1 + w, GPT-2's Conv1D weights transposed, the MoE experts
stacked in one tensor, Qwen2-MoE's shared-expert gate squeezed to a vector; where that loader drops
metadata llama.cpp reads (Phi-3's LongRoPE, Gemma 27B's attention scale, the MoE experts' widths,
...), we read it as llama.cpp does.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
import struct
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np

from jaxllm.errors import CheckpointError
from jaxllm.gguf_blocks import NATIVE, TYPES, blocks, check_readable, dequantize, tensor_bytes
from jaxllm.models import quant, registry


class Family(NamedTuple):
    """How llama.cpp writes one GGUF architecture, read back as transformers' GGUF loader reads it."""

    hf: str  # the HF architecture (config.json "architectures")
    permuted: bool = False  # q/k rows permuted for llama.cpp's rotary layout (Llama, Mistral): undone
    names: dict = {}  # GGUF name -> HF name, over _NAMES and _LAYER_NAMES
    norm_shift: float = 0.0  # stored as w + this (Gemma's (1 + w) RMSNorm): subtracted, in float32
    transposed: tuple = ()  # layer weights stored [out, in] where HF keeps [in, out] (GPT-2's Conv1D): transposed
    squeezed: tuple = ()  # layer weights [1, in] in HF that converters may store as [in] (Qwen2-MoE's shared-expert gate)
    config: Callable = lambda get, raw: None  # (metadata getter, config so far): adds the family's own keys


def _gemma_config(get, raw: dict) -> None:
    """Gemma 2 and 3: llama.cpp's attention scale, 1 / sqrt(head_dim) but 1 / sqrt(hidden / heads) for
    the 27B, which it tells by its layer count (transformers' GGUF loader keeps its default 256: the
    same for the 2B-12B, wrong for the 27B); the window, soft caps where the file has them, else
    the family's defaults (transformers' loader ignores the soft caps, which equal its defaults)."""
    del raw["sliding_window"]
    for key in ("attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping"):
        if get(key) is not None:
            raw[key.removeprefix("attention.")] = _decimal(get(key))
    heads, hidden, head_dim = raw["num_attention_heads"], raw["hidden_size"], raw.get("head_dim")
    if not _positive(heads, hidden) or (head_dim is not None and not _positive(head_dim)):
        return  # nothing to derive from: the config's checks name the bad value
    is_27b = raw["num_hidden_layers"] == {"gemma2": 46, "gemma3_text": 62}[raw["model_type"]]
    raw["query_pre_attn_scalar"] = hidden // heads if is_27b else head_dim or hidden // heads


def _positive(*values) -> bool:
    """Whether every value is a positive whole number (metadata read as it is: any type)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)


def _phi3_config(get, raw: dict) -> None:
    """Phi-3 / Phi-4: a rotary part of the head (Phi-4-mini's 3/4), which transformers' GGUF loader
    drops. Its window: none, as llama.cpp (which disabled it) and transformers' GGUF loader read it."""
    hidden, heads, rotary = raw["hidden_size"], raw["num_attention_heads"], get("rope.dimension_count")
    if rotary is not None and (not isinstance(rotary, int) or isinstance(rotary, bool) or rotary < 1):
        raise CheckpointError(f"GGUF phi3.rope.dimension_count is {rotary!r}, not a positive whole number: the file is "
                              "damaged: re-convert it with llama.cpp's convert_hf_to_gguf.py")
    head_dim = raw.get("head_dim")
    if not _positive(hidden, heads, rotary) or (head_dim is None and hidden % heads) or not _positive(head_dim or 1):
        return  # nothing to derive from: the config's checks name the bad value
    head_dim = head_dim or hidden // heads
    if rotary != head_dim:
        raw["partial_rotary_factor"] = rotary / head_dim


def _moe_config(get, raw: dict) -> None:
    """The routed experts of Qwen3-MoE and Qwen2-MoE, every layer routed (llama.cpp reads no dense
    layers for either): their count, top k and width from the file (transformers' GGUF loader keeps
    its config's default width: Qwen3-30B-A3B's 768, Qwen1.5-MoE-A2.7B's 1408 and 5632 shared)."""
    prefix, name = {"qwen3_moe": ("qwen3moe", "Qwen3-MoE"), "qwen2_moe": ("qwen2moe", "Qwen2-MoE")}[raw["model_type"]]
    experts = get("expert_count")
    if not isinstance(experts, int) or isinstance(experts, bool) or experts < 1:
        raise CheckpointError(f"GGUF {prefix}.expert_count is {experts!r}: a {name} file has at least one expert; the file "
                              "is damaged: re-convert it with llama.cpp's convert_hf_to_gguf.py")
    raw.update(num_experts=experts, num_experts_per_tok=get("expert_used_count"),
               moe_intermediate_size=get("expert_feed_forward_length"))


def _qwen3_moe_config(get, raw: dict) -> None:
    """Qwen3-MoE: the top-k weights renormalised, as llama.cpp does (and transformers' GGUF loader)."""
    _moe_config(get, raw)
    raw["norm_topk_prob"] = True


def _qwen2_moe_config(get, raw: dict) -> None:
    """Qwen2-MoE: the top-k weights as the router gives them (llama.cpp, and Qwen2MoeConfig's default);
    a shared expert in every layer. Widths the file leaves out are llama.cpp's: the experts'
    feed_forward_length / expert_used_count (the files written before expert_feed_forward_length
    existed: Qwen1.5-MoE's 5632 / 4 = 1408), the shared expert's feed_forward_length (0 too, as llama.cpp)."""
    _moe_config(get, raw)
    used, ffn = raw["num_experts_per_tok"], raw["intermediate_size"]
    if raw["moe_intermediate_size"] in (None, 0) and _positive(used, ffn):  # else the config's checks name the bad value
        raw["moe_intermediate_size"] = ffn // used
    raw["norm_topk_prob"] = False
    shared = get("expert_shared_feed_forward_length")
    raw["shared_expert_intermediate_size"] = ffn if shared in (None, 0) else shared


def _gpt2_config(get, raw: dict) -> None:
    """GPT-2: LayerNorm's epsilon; learned positions, no rope."""
    del raw["rms_norm_eps"], raw["rope_theta"]
    raw["layer_norm_epsilon"] = _decimal(get("attention.layer_norm_epsilon", 1e-5))
    raw["n_inner"] = raw["intermediate_size"]  # GPT2Config's name for it (a config.json written back; it ignores ours)


_GEMMA_NAMES = {"ffn_norm": "pre_feedforward_layernorm", "post_attention_norm": "post_attention_layernorm",
                "post_ffw_norm": "post_feedforward_layernorm"}
# Qwen2-MoE's shared expert and its gate (one score a token), beside the routed experts
_QWEN2_MOE_NAMES = {"ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
                    "ffn_down_shexp": "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}
_GPT2_NAMES = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe", "output_norm": "transformer.ln_f",
               "blk": "transformer.h", "attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
               "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}

# general.architecture -> how its tensors and metadata read (the families transformers' GGUF loader reads too)
ARCHITECTURES = {
    "llama": Family("LlamaForCausalLM", permuted=True),
    "mistral": Family("MistralForCausalLM", permuted=True),
    "qwen2": Family("Qwen2ForCausalLM"),
    "qwen3": Family("Qwen3ForCausalLM"),
    "qwen3moe": Family("Qwen3MoeForCausalLM", config=_qwen3_moe_config),
    "qwen2moe": Family("Qwen2MoeForCausalLM", names=_QWEN2_MOE_NAMES, squeezed=("ffn_gate_inp_shexp",),
                       config=_qwen2_moe_config),
    "phi3": Family("Phi3ForCausalLM", names={"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
                   config=_phi3_config),
    "gemma2": Family("Gemma2ForCausalLM", names=_GEMMA_NAMES, norm_shift=1.0, config=_gemma_config),
    "gemma3": Family("Gemma3ForCausalLM", names=_GEMMA_NAMES, norm_shift=1.0, config=_gemma_config),
    "gpt2": Family("GPT2LMHeadModel", names=_GPT2_NAMES, transposed=("attn_qkv", "attn_output", "ffn_up", "ffn_down"),
                   config=_gpt2_config),
}
# the keys each family cannot do without, besides the shared ones (config_from_metadata)
_REQUIRED = {"qwen3moe": ("expert_count", "expert_used_count", "expert_feed_forward_length"),
             "qwen2moe": ("expert_count", "expert_used_count")}

_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head", "blk": "model.layers"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    # MoE: the router, and the experts stacked on a leading axis, split into HF's one tensor per expert ({})
    "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.experts.{}.gate_proj", "ffn_up_exps": "mlp.experts.{}.up_proj",
    "ffn_down_exps": "mlp.experts.{}.down_proj",
}
_TENSOR = re.compile(r"^(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)$")
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9  # GGUF metadata value types
_MAX_DIMS, _MAX_NESTING = 4, 8  # a tensor's dimensions (GGML_MAX_DIMS); arrays within arrays


class Header:
    """A GGUF file's metadata ({key: value}) and tensor table, parsed straight from its bytes (the
    gguf package's reader takes seconds over a vocabulary's strings; this takes milliseconds).
    Every length and count is checked against the bytes left before anything is read or copied,
    so a damaged header costs no more memory than the file."""

    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                self._buf, self._pos = buf, 0
                self._parse()
                del self._buf
        except (OSError, ValueError) as err:  # ValueError: also bad UTF-8 and an empty file
            raise CheckpointError(f"{path} is not a readable GGUF file ({type(err).__name__}: {str(err)[:150]}): "
                                  "download it again, or check the path") from None

    def _parse(self) -> None:
        magic, version = self._take("<4sI")
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"magic {magic!r}, version {version}: not a little-endian GGUF v2/v3 file")
        n_tensors, n_fields = self._take("<QQ")
        # the least a tensor's entry (name length, dims count, type, offset) and a metadata entry (key length, type) take
        if n_tensors * 24 + n_fields * 12 > self._left():
            raise ValueError(f"the header counts {n_tensors} tensors and {n_fields} metadata entries, more than the "
                             f"file's {len(self._buf)} bytes can hold (truncated download?)")
        self.fields = {}
        for _ in range(n_fields):
            key = self._string()
            if key in self.fields:  # which value is meant is unknown (llama.cpp refuses the file too)
                raise ValueError(f"metadata key {key[:100]!r} appears twice")
            self.fields[key] = self._value(self._take("<I")[0], key[:100])
        self.tensors = []  # (name, dims innermost first, GGML type id, offset from the data start)
        names = set()
        for _ in range(n_tensors):
            name = self._string()
            if name in names:  # which tensor is the model's is unknown (gguf's reader and llama.cpp refuse the file too)
                raise ValueError(f"tensor {name[:100]!r} appears twice")
            names.add(name)
            (n_dims,) = self._take("<I")
            if n_dims > _MAX_DIMS:  # llama.cpp refuses these too (GGML_MAX_DIMS)
                raise ValueError(f"tensor {name[:100]!r} has {n_dims} dimensions; GGUF allows at most {_MAX_DIMS}")
            dims = self._take(f"<{n_dims}Q")
            self.tensors.append((name, dims, *self._take("<IQ")))
        align = self.fields.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise ValueError(f"general.alignment {align!r} is not a power of two")
        for name, _, _, offset in self.tensors:  # llama.cpp refuses these too: the table is damaged
            if offset % align:
                raise ValueError(f"tensor {name[:100]!r} starts at data offset {offset}, not a multiple of the file's "
                                 f"alignment ({align})")
        self.data_start = self._pos + (-self._pos % align)

    def _left(self) -> int:
        return len(self._buf) - self._pos

    def _take(self, fmt: str) -> tuple:
        size = struct.calcsize(fmt)
        if size > self._left():
            raise ValueError(f"the file ends at byte {len(self._buf)}, inside its header (truncated download?)")
        out = struct.unpack_from(fmt, self._buf, self._pos)
        self._pos += size
        return out

    def _bytes(self, n: int) -> bytes:
        if n > self._left():  # before slicing: a slice would copy the rest of the file first
            raise ValueError(f"a string of {n} bytes at byte {self._pos}, beyond the end of the file (byte {len(self._buf)})"
                             if n > len(self._buf) else
                             f"the file ends at byte {len(self._buf)}, inside its header (truncated download?)")
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def _string(self) -> str:
        return self._bytes(self._take("<Q")[0]).decode("utf-8")

    def _value(self, kind: int, key: str, depth: int = 0):
        if kind == _STRING:
            return self._string()
        if kind != _ARRAY:
            if kind not in _SCALARS:
                raise ValueError(f"metadata {key!r} has value type {kind}, which GGUF does not define")
            return self._take(_SCALARS[kind])[0]
        if depth == _MAX_NESTING:  # llama.cpp reads no arrays of arrays at all
            raise ValueError(f"metadata {key!r} nests arrays more than {_MAX_NESTING} deep")
        item, n = self._take("<IQ")
        least = struct.calcsize(_SCALARS[item]) if item in _SCALARS else {_STRING: 8, _ARRAY: 12}.get(item)
        if least is None:
            raise ValueError(f"metadata {key!r} has value type {item}, which GGUF does not define")
        if n * least > self._left():
            raise ValueError(f"metadata {key!r} is an array of {n} values, more than the {self._left()} bytes after it hold")
        if item in _SCALARS:  # numbers in one go
            dtype = np.dtype(_SCALARS[item])
            return np.frombuffer(self._bytes(n * dtype.itemsize), dtype).tolist()
        if item == _STRING:
            return self._strings(n)
        return [self._value(item, key, depth + 1) for _ in range(n)]

    def _strings(self, n: int) -> list[str]:
        """n strings in one tight loop (a vocabulary's tokens and merges: 100,000 of them)."""
        buf, pos, size, out = self._buf, self._pos, len(self._buf), []
        length = struct.Struct("<Q").unpack_from
        for _ in range(n):
            if pos + 8 > size:
                raise ValueError(f"the file ends at byte {size}, inside its header (truncated download?)")
            k = length(buf, pos)[0]
            pos += 8
            if pos + k > size:
                self._pos = pos
                return [self._bytes(k)]  # raises, naming the length
            out.append(buf[pos : pos + k].decode("utf-8"))
            pos += k
        self._pos = pos
        return out


@functools.lru_cache(maxsize=1)
def _header(path: Path, size: int, mtime_ns: int) -> Header:
    return Header(path)


def read_header(path: Path) -> Header:
    """The file's Header, parsed once while the file is unchanged (the model and its tokenizer share it)."""
    try:
        st = os.stat(path)
    except OSError as err:
        raise CheckpointError(f"cannot read {path}: {err.strerror}") from None
    return _header(Path(path).resolve(), st.st_size, st.st_mtime_ns)


def hf_name(name: str, family: Family = ARCHITECTURES["llama"]) -> str | None:
    """The HF name of a GGUF tensor of `family` (a "{}" in it stands for the expert), or None."""
    m = _TENSOR.match(name)
    if not m:
        return None
    layer, part, kind = m.groups()
    names = {**(_NAMES if layer is None else _LAYER_NAMES), **family.names}
    if part not in names:
        return None
    prefix = "" if layer is None else f"{family.names.get('blk', _NAMES['blk'])}.{layer}."
    return f"{prefix}{names[part]}.{kind}"


def _family(fields: dict) -> tuple[str, str]:
    """(the ARCHITECTURES key, the metadata key prefix) of a file, or a CheckpointError."""
    prefix = arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise CheckpointError(f"GGUF general.architecture must be a string, got {str(arch)[:60]}: "
                              "the file is damaged or not a language model")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"GGUF architecture '{arch}' is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    if arch == "llama" and fields.get("llama.expert_count"):  # transformers reads it as a dense Llama, experts dropped
        raise CheckpointError(f"GGUF llama file with {fields['llama.expert_count']} experts (Mixtral): not supported "
                              "from GGUF; load the model's Hugging Face checkpoint instead")
    name = str(fields.get("general.name", "") or "").lower()
    if arch == "llama" and "mistral" in name:  # llama.cpp files Mistral under llama
        arch = "mistral"
    return arch, prefix


def config_from_metadata(header: Header) -> dict:
    fields = header.fields
    arch, prefix = _family(fields)
    family = ARCHITECTURES[arch]

    def get(key, default=None):
        return fields.get(f"{prefix}.{key}", default)

    heads = get("attention.head_count")
    tensor_names = {t[0] for t in header.tensors}
    embedding = next((dims for name, dims, _, _ in header.tensors if name == "token_embd.weight"), None)
    tokens = fields.get("tokenizer.ggml.tokens", [])
    if not isinstance(tokens, list):
        raise CheckpointError(f"GGUF tokenizer.ggml.tokens is {type(tokens).__name__}, not a list of tokens: the file is "
                              "damaged; re-convert it with llama.cpp's convert_hf_to_gguf.py")
    vocab = (get("vocab_size") or len(tokens)
             or (int(embedding[1]) if embedding is not None and len(embedding) == 2 else None))  # its rows (dims innermost first)
    raw = {
        "architectures": [family.hf],
        "model_type": registry.get(family.hf).hf_model_type,  # config.json written back needs it
        "vocab_size": vocab,
        "hidden_size": get("embedding_length"),
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": get("block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "max_position_embeddings": get("context_length", 2048),
        "rms_norm_eps": _decimal(get("attention.layer_norm_rms_epsilon", 1e-6)),  # float32 in the file: its shortest
        "rope_theta": _decimal(get("rope.freq_base", 10000.0)),  # decimal (1e-05, not 9.999999747378752e-06)
        "tie_word_embeddings": "output.weight" not in tensor_names,
        "bos_token_id": fields.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": fields.get("tokenizer.ggml.eos_token_id"),
        "pad_token_id": fields.get("tokenizer.ggml.padding_token_id"),
        "attention_bias": "blk.0.attn_output.bias" in tensor_names,
        "sliding_window": None,  # llama.cpp attends over the whole context: no family default window (Mistral's 4,096)
    }
    key_length = get("attention.key_length")
    if key_length:
        raw["head_dim"] = key_length
    scaling = get("rope.scaling.type")
    if scaling and scaling != "none":
        raw["rope_scaling"] = {"rope_type": scaling, "factor": _decimal(get("rope.scaling.factor", 1.0))}
        if get("rope.scaling.original_context_length"):
            raw["rope_scaling"]["original_max_position_embeddings"] = get("rope.scaling.original_context_length")
    _check_required(get, prefix)
    family.config(get, raw)
    return raw


def _check_required(get, prefix: str) -> None:
    """A CheckpointError naming every metadata key the file lacks that its architecture needs."""
    keys = ("embedding_length", "feed_forward_length", "block_count", "attention.head_count", *_REQUIRED.get(prefix, ()))
    missing = [f"{prefix}.{key}" for key in keys if get(key) is None]
    if missing:
        raise CheckpointError(f"GGUF metadata lacks {', '.join(missing)}: the file is incomplete or not a language model; "
                              "re-convert it with llama.cpp's convert_hf_to_gguf.py")


def _decimal(value):
    """A float32 metadata value as the shortest decimal that reads back as the same float32 (what
    the writer most likely stored: 1e-05 for 9.999999747378752e-06); anything else unchanged, for
    the config's checks to judge."""
    if isinstance(value, float) and math.isfinite(value):
        return float(str(np.float32(value)))
    return value


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k row permutation: rows (head, pair, half) -> (head, half, pair)."""
    dim = w.shape[0] // heads // 2
    return w.reshape(heads, dim, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class GGUFCheckpoint:
    """Tensors of a GGUF file under their HF names, in HF layout, dequantized on demand."""

    def __init__(self, header: Header, raw: dict, family: Family = Family("")):
        with open(header.path, "rb") as f:
            data = np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
        self.tensors = {}  # HF name -> (shape in the file's order, GGML type id, raw bytes)
        self.shifted, self.transposed = {}, set()  # HF names whose values llama.cpp changed: {name: shift}, [out, in]
        spans = []  # (start, end, GGUF name) of each tensor's bytes
        for name, dims, type_id, offset in header.tensors:
            start = header.data_start + offset
            shape = tuple(int(d) for d in reversed(dims))  # GGUF lists dims innermost first
            if len(shape) == 1 and name.endswith(".weight") and name.split(".")[-2] in family.squeezed:
                shape = (1, *shape)  # HF's [1, in]: the same bytes
            try:
                nbytes = tensor_bytes(type_id, shape)
                check_readable(type_id)
            except CheckpointError as err:
                raise CheckpointError(f"{header.path}: tensor {name}: {err}") from None
            if start + nbytes > len(data):
                raise CheckpointError(f"{header.path} ends before tensor {name} (truncated download?): re-download it")
            spans.append((offset, offset + nbytes, name))
            hf = hf_name(name, family) or name
            if "{}" in hf and (len(shape) != 3 or not shape[0]):
                raise CheckpointError(f"{header.path}: tensor {name} has shape {list(shape)}: an expert stack is [experts, rows, "
                                      "columns] of at least one expert; the file is damaged: re-convert it with llama.cpp's "
                                      "convert_hf_to_gguf.py")
            self.tensors.update(_split_experts(hf, shape, type_id, data[start : start + nbytes]))
            if family.norm_shift and name.endswith("norm.weight"):  # every norm, as transformers' Gemma2TensorProcessor
                self.shifted[hf] = family.norm_shift
            if name.endswith(".weight") and name.split(".")[-2] in family.transposed:
                self.transposed.add(hf)
        _check_disjoint(spans, header.path)
        self.heads = {"q_proj": raw["num_attention_heads"], "k_proj": raw["num_key_value_heads"]} if family.permuted else {}

    def names(self):
        return self.tensors.keys()

    def shape(self, name):
        shape = self.tensors[name][0]
        return shape[::-1] if name in self.transposed else shape

    def get(self, name) -> np.ndarray:
        """The tensor in HF layout and values, float32: rows unpermuted, a norm's shift taken off (in
        float32, as transformers does), a Conv1D weight transposed back."""
        shape, type_id, raw = self.tensors[name]
        data = self._unpermuted(name, dequantize(raw, type_id).reshape(shape))
        if name in self.shifted:
            data = data - np.float32(self.shifted[name])
        return np.ascontiguousarray(data.T) if name in self.transposed else data

    def _unpermuted(self, name: str, data: np.ndarray) -> np.ndarray:
        proj = name.split(".")[-2] if name.endswith(".weight") or name.endswith(".bias") else ""
        return _unpermute(data, self.heads[proj]) if proj in self.heads else data

    def type_name(self, name) -> str:
        type_id = self.tensors[name][1]
        return TYPES[type_id][0] if type_id in TYPES else str(type_id)

    def block_scheme(self, name) -> quant.Scheme | None:
        """The quant.Scheme a 2-D tensor's blocks load as natively, or None (absent, other type,
        values llama.cpp changed beyond a row order). The blocks run along the stored rows, [out,
        in] (for a `transposed` tensor the reverse of HF's layout)."""
        if name not in self.tensors or len(self.tensors[name][0]) != 2 or name in self.shifted:
            return None
        return NATIVE.get(self.type_name(name))

    def blocks(self, name):
        """(values, scales, offsets or None) of a Q8_0 / Q4_0 / Q4_1 tensor as stored, [out, in]
        (`blocks`), rows unpermuted as `get` does."""
        shape, type_id, raw = self.tensors[name]
        return tuple(None if a is None else self._unpermuted(name, a) for a in blocks(raw, type_id, shape))


def _check_disjoint(spans: list[tuple[int, int, str]], path: Path) -> None:
    """A CheckpointError where two tensors' bytes overlap (one tensor's values read as another's:
    a damaged tensor table; llama.cpp refuses such files too)."""
    spans = sorted(s for s in spans if s[1] > s[0])  # a tensor of no values takes no bytes
    for (start, end, name), (next_start, next_end, next_name) in zip(spans, spans[1:]):
        if next_start < end:
            raise CheckpointError(f"{path}: tensors {name} and {next_name} share bytes (data offsets {start}-{end} and "
                                  f"{next_start}-{next_end}): the file is damaged; download it again or re-convert it")


def _split_experts(name: str, shape: tuple, type_id: int, raw: np.ndarray) -> dict:
    """{HF name: (shape, type, bytes)} of a tensor: an expert stack ("{}" in its name) as HF's
    one tensor per expert (each a run of the stack's bytes), anything else as it is."""
    if "{}" not in name:
        return {name: (shape, type_id, raw)}
    n = len(raw) // shape[0]
    return {name.format(j): (shape[1:], type_id, raw[j * n : (j + 1) * n]) for j in range(shape[0])}


def open_checkpoint(path: Path):
    """(tensors under HF names, config.json-shaped dict) of a .gguf file."""
    header = read_header(path)
    raw = config_from_metadata(header)
    tensors = GGUFCheckpoint(header, raw, ARCHITECTURES[_family(header.fields)[0]])
    if "rope_freqs.weight" in tensors.tensors:
        _rope_freqs(tensors, raw, header.path)
    if {"rope_factors_long.weight", "rope_factors_short.weight"} & tensors.tensors.keys():
        _longrope(tensors, raw, header)
    return tensors, raw


def _rope_freqs(tensors: GGUFCheckpoint, raw: dict, path: Path) -> None:
    """llama.cpp stores Llama 3.1's rope scaling (and any fixed per-frequency scaling) as a tensor,
    rope_freqs.weight [head_dim / 2], by which it divides each rotary frequency; no metadata key
    says so. That is LongRoPE with equal short and long factors and no attention scaling, which
    is how it is read here (transformers' GGUF loader drops the tensor and the scaling with it)."""
    values = _factors(tensors, "rope_freqs.weight", raw, path)
    raw["rope_scaling"] = {"rope_type": "longrope", "short_factor": values, "long_factor": values, "factor": 1.0,
                           "attention_factor": 1.0, "original_max_position_embeddings": raw["max_position_embeddings"]}


def _longrope(tensors: GGUFCheckpoint, raw: dict, header: Header) -> None:
    """Phi-3's LongRoPE (the 128k Phi-3s, Phi-3.5, Phi-4-mini): llama.cpp keeps its factors as tensors,
    rope_factors_long / _short.weight, and the original context and attention factor as metadata:
    config.json's longrope again (transformers' GGUF loader drops them all for plain rope, so its
    logits differ at every position). Long or short factors go by the sequence's length, as in
    transformers (llama.cpp picks them once, by its context size)."""
    prefix = header.fields["general.architecture"]
    long, short = (_factors(tensors, f"rope_factors_{kind}.weight", raw, header.path) for kind in ("long", "short"))
    original = header.fields.get(f"{prefix}.rope.scaling.original_context_length")
    if not original:
        raise CheckpointError(f"GGUF metadata lacks {prefix}.rope.scaling.original_context_length (the file has rope "
                              "factors): the file is incomplete; re-convert it with llama.cpp's convert_hf_to_gguf.py")
    raw["rope_scaling"] = {"rope_type": "longrope", "short_factor": short, "long_factor": long,
                           "original_max_position_embeddings": original}
    raw["original_max_position_embeddings"] = original  # where Phi3Config reads it (a config.json written back)
    attention = header.fields.get(f"{prefix}.rope.scaling.attn_factor")
    if attention is not None:  # else transformers' own, from the two contexts (the converter's formula too)
        raw["rope_scaling"]["attention_factor"] = _decimal(attention)


def _factors(tensors: GGUFCheckpoint, name: str, raw: dict, path: Path) -> list[float]:
    """The values of a rope factor tensor, taken out of the tensors (no parameter takes it)."""
    if name not in tensors.tensors:
        raise CheckpointError(f"{path} lacks {name} (it has the other rope factors): the file is incomplete; "
                              "re-convert it with llama.cpp's convert_hf_to_gguf.py")
    shape, type_id, data = tensors.tensors.pop(name)
    factors = dequantize(data, type_id)
    if raw.get("rope_scaling") or len(shape) != 1 or not np.all(np.isfinite(factors)) or np.any(factors <= 0):
        raise CheckpointError(f"{path}: {name} {list(shape)} comes with rope scaling metadata or holds "
                              "non-positive factors: the file is damaged or written by an unknown converter")
    return [float(f) for f in factors]
