"""GGUF files against transformers' own GGUF loader, beyond tests/test_quant.py's float and Q8_0
files: each layout of jaxllm.gguf_families.ARCHITECTURES (Mistral under llama included) with its tensors
stored as Q4_0, Q4_1, Q8_0, F16, F32 and the K-quants Q4_K, Q5_K, Q6_K mixed in one file; a Llama
written from a Hugging Face model as llama.cpp's convert_hf_to_gguf.py writes it (q/k rows
permuted, head_dim from key_length) against that model itself; and the tokenizer of a GGUF file
(a sentencepiece `llama` vocabulary and a byte-level `gpt2` one with merges) against
AutoTokenizer.from_pretrained(gguf_file=...): ids, text, special tokens and the chat template."""

import re
from pathlib import Path

import numpy as np
import pytest
import reference
import torch
import transformers
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, quants
from gguf_files import add_fields, split_copy
from transformers.convert_slow_tokenizer import bytes_to_unicode

import jaxllm
from jaxllm import gguf, gguf_blocks, gguf_families, gguf_tokenizer
from jaxllm.models import quant, weights

E, F, V = 64, 256, 96  # hidden, MLP width (a K-quant's 256-value block fits its down projection), vocabulary
KINDS = ["Q4_0", "Q4_1", "Q8_0", "F16", "F32"]  # cycled over a file's matrices
K_QUANTS = ["Q4_K", "Q6_K", "Q5_K"]  # cycled over those whose rows are whole 256-value blocks


def _attention(heads: int, kv: int, head_dim: int) -> dict:
    return dict(attn_q=(heads * head_dim, E), attn_k=(kv * head_dim, E), attn_v=(kv * head_dim, E), attn_output=(E, heads * head_dim))


_FFN = dict(ffn_gate=(F, E), ffn_up=(F, E), ffn_down=(E, F))
_MLP = dict(_FFN, attn_norm=(E,), ffn_norm=(E,))
_ROPE = {"attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 16, "rope.freq_base": 10000.0,
         "attention.layer_norm_rms_epsilon": 1e-5}
_GEMMA = {"attention.head_count": 2, "attention.head_count_kv": 1, "attention.key_length": 256, "attention.value_length": 256,
          "attention.layer_norm_rms_epsilon": 1e-6, "attention.sliding_window": 4, "rope.freq_base": 10000.0}
_GEMMA_LAYER = dict(_attention(2, 1, 256), **_MLP, post_attention_norm=(E,), post_ffw_norm=(E,))
_MINIMAX_M2 = {"attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 16, "attention.value_length": 16,
               "rope.dimension_count": 8, "rope.freq_base": 10000.0, "attention.layer_norm_rms_epsilon": 1e-6, "expert_count": 4,
               "expert_used_count": 2, "expert_feed_forward_length": F, "expert_gating_func": 2}
_LFM2_FFN = dict(ffn_gate=(F, E), ffn_up=(F, E), ffn_down=(E, F))
_MLP = dict(_FFN, attn_norm=(E,), ffn_norm=(E,))
# Qwen3.5: a gated-DeltaNet layer (2 key heads of 8 dims, 4 value heads of 16, their rows tiled as llama.cpp writes them),
# a gated full-attention one (q_proj's rows each head's query, then its gate), the multi-token-prediction block after them
_QWEN35 = {"attention.head_count": 4, "attention.head_count_kv": 2, "attention.key_length": 16, "attention.value_length": 16,
           "rope.dimension_count": 8, "rope.dimension_sections": [2, 1, 1, 0], "rope.freq_base": 10000.0,
           "attention.layer_norm_rms_epsilon": 1e-6, "full_attention_interval": 2, "ssm.conv_kernel": 4, "ssm.state_size": 8,
           "ssm.group_count": 2, "ssm.time_step_rank": 4, "ssm.inner_size": 64, "nextn_predict_layers": 1}
_QWEN35_LAYERS = [{"attn_norm": (E,), "post_attention_norm": (E,), "attn_gate": (64, E), "attn_qkv": (96, E), "ssm_alpha": (4, E),
                   "ssm_beta": (4, E), "ssm_conv1d": (96, 4), "ssm_a": (4,), "ssm_dt.bias": (4,), "ssm_norm": (16,), "ssm_out": (E, 64)},
                  {"attn_norm": (E,), "post_attention_norm": (E,), **_attention(4, 2, 16), "attn_q": (128, E), "attn_q_norm": (16,),
                   "attn_k_norm": (16,)}, {"attn_norm": (E,), "nextn.eh_proj": (E, 2 * E)}]
_QWEN35_SHARED = {"ffn_gate_inp": (4, E), "ffn_gate_exps": (4, F, E), "ffn_up_exps": (4, F, E), "ffn_down_exps": (4, E, F),
                  "ffn_gate_inp_shexp": (E,), "ffn_gate_shexp": (F, E), "ffn_up_shexp": (F, E), "ffn_down_shexp": (E, F)}
INNER, R, S = 256, 6, 8  # Mamba's inner width (its mixers' K-quant rows), time-step rank, state
# general.architecture -> (metadata without the prefix, top-level tensors besides the embedding and final
# norm (None: a tensor the family lacks), one layer's tensors [out, in] (a list: each layer's), layers): as
# convert_hf_to_gguf.py writes them
FAMILIES = {
    "llama": (_ROPE, dict(output=(V, E)), dict(_attention(4, 2, 16), **_MLP), 2),
    "qwen2": (_ROPE, {}, dict(_attention(4, 2, 16), **_MLP, **{"attn_q.bias": (64,), "attn_k.bias": (32,), "attn_v.bias": (32,)}), 2),
    "qwen3": (dict(_ROPE, **{"attention.key_length": 128, "rope.dimension_count": 128}), dict(output=(V, E)),
              dict(_attention(4, 2, 128), **_MLP, attn_q_norm=(128,), attn_k_norm=(128,)), 2),
    "qwen3moe": (dict(_ROPE, **{"attention.key_length": 16, "expert_count": 4, "expert_used_count": 2,
                                "expert_feed_forward_length": 768}), dict(output=(V, E)),
                 dict(_attention(4, 2, 16), attn_norm=(E,), ffn_norm=(E,), attn_q_norm=(16,), attn_k_norm=(16,), ffn_gate_inp=(4, E),
                      ffn_gate_exps=(4, 768, E), ffn_up_exps=(4, 768, E), ffn_down_exps=(4, E, 768)), 2),
    # transformers reads neither expert width from the file: Qwen2MoeConfig's defaults (1408, 5632) they must be; the shared
    # expert's gate a vector, as llama.cpp's converter wrote it before it kept HF's [1, hidden] (transformers reads only that)
    "qwen2moe": (dict(_ROPE, **{"expert_count": 4, "expert_used_count": 2, "expert_feed_forward_length": 1408,
                                "expert_shared_feed_forward_length": 5632}), dict(output=(V, E)),
                 dict(_attention(4, 2, 16), attn_norm=(E,), ffn_norm=(E,), **{"attn_q.bias": (64,), "attn_k.bias": (32,), "attn_v.bias": (32,)},
                      ffn_gate_inp=(4, E), ffn_gate_exps=(4, 1408, E), ffn_up_exps=(4, 1408, E), ffn_down_exps=(4, E, 1408),
                      ffn_gate_inp_shexp=(E,), ffn_gate_shexp=(5632, E), ffn_up_shexp=(5632, E), ffn_down_shexp=(E, 5632)), 2),
    "phi3": (dict(_ROPE, **{"rope.scaling.original_context_length": 256}), dict(output=(V, E)),
             dict(attn_qkv=(128, E), attn_output=(E, E), ffn_up=(2 * F, E), ffn_down=(E, F), attn_norm=(E,), ffn_norm=(E,)), 2),
    "gemma2": (dict(_GEMMA, attn_logit_softcapping=50.0, final_logit_softcapping=30.0), {}, _GEMMA_LAYER, 2),
    "gemma3": (dict(_GEMMA, **{"rope.freq_base": 1000000.0}), {}, dict(_GEMMA_LAYER, attn_q_norm=(256,), attn_k_norm=(256,)), 6),
    "gpt2": ({"attention.head_count": 4, "attention.layer_norm_epsilon": 1e-5}, dict(position_embd=(1024, E)),
             {"attn_norm": (E,), "attn_norm.bias": (E,), "attn_qkv": (3 * E, E), "attn_qkv.bias": (3 * E,), "attn_output": (E, E),
              "attn_output.bias": (E,), "ffn_norm": (E,), "ffn_norm.bias": (E,), "ffn_up": (F, E), "ffn_up.bias": (F,),
              "ffn_down": (E, F), "ffn_down.bias": (E,)}, 2),
    # BLOOM: q | k | v rows (HF's per head, regrouped), the embeddings' LayerNorm, biases everywhere, tied
    "bloom": ({"attention.head_count": 4, "attention.layer_norm_epsilon": 1e-5},
              {"token_embd_norm": (E,), "token_embd_norm.bias": (E,), "output_norm.bias": (E,)},
              {"attn_norm": (E,), "attn_norm.bias": (E,), "attn_qkv": (3 * E, E), "attn_qkv.bias": (3 * E,), "attn_output": (E, E),
               "attn_output.bias": (E,), "ffn_norm": (E,), "ffn_norm.bias": (E,), "ffn_up": (F, E), "ffn_up.bias": (F,),
               "ffn_down": (E, F), "ffn_down.bias": (E,)}, 2),
    # Falcon-7B: one kv head's q | k | v rows, attention and MLP in parallel off one LayerNorm, no biases, tied
    "falcon": ({"attention.head_count": 4, "attention.head_count_kv": 1, "attention.layer_norm_epsilon": 1e-5, "rope.freq_base": 10000.0},
               {"output_norm.bias": (E,)}, {"attn_norm": (E,), "attn_norm.bias": (E,), "attn_qkv": (E + 2 * 16, E), "attn_output": (E, E),
                                            "ffn_up": (F, E), "ffn_down": (E, F)}, 2),
    # Nemotron: LayerNorms with biases stored as 1 + w, half of each head rotated, an ungated MLP
    "nemotron": ({"attention.head_count": 4, "attention.head_count_kv": 2, "rope.dimension_count": 8, "rope.freq_base": 10000.0,
                  "attention.layer_norm_epsilon": 1e-5}, {"output": (V, E), "output_norm.bias": (E,)},
                 dict(_attention(4, 2, 16), ffn_up=(F, E), ffn_down=(E, F), **{"attn_norm": (E,), "attn_norm.bias": (E,),
                                                                              "ffn_norm": (E,), "ffn_norm.bias": (E,)}), 2),
    # Mamba: no attention, no MLP; A stored as -exp(A_log) (bare ssm_a, ssm_d), the conv [channels, taps] with its bias
    "mamba": ({"ssm.inner_size": INNER, "ssm.state_size": S, "ssm.conv_kernel": 4, "ssm.time_step_rank": R,
               "attention.layer_norm_rms_epsilon": 1e-5}, dict(output=(V, E)),
              {"attn_norm": (E,), "ssm_in": (2 * INNER, E), "ssm_conv1d": (INNER, 4), "ssm_conv1d.bias": (INNER,),
               "ssm_x": (R + 2 * S, INNER), "ssm_dt": (INNER, R), "ssm_dt.bias": (INNER,), "ssm_a": (INNER, S), "ssm_d": (INNER,),
               "ssm_out": (E, INNER)}, 3),
    # LFM2: a short-conv layer (its conv [channels, taps]), then an attention one (head_count_kv 0 / 2 says which), per-head
    # q/k norms; the final norm token_embd_norm, the head tied
    "lfm2": ({"attention.head_count": 4, "attention.head_count_kv": [0, 2], "shortconv.l_cache": 3, "rope.freq_base": 10000.0,
              "attention.layer_norm_rms_epsilon": 1e-5}, dict(token_embd_norm=(E,), output_norm=None),
             [dict(_MLP, **{"shortconv.in_proj": (3 * E, E), "shortconv.conv": (E, 3), "shortconv.out_proj": (E, E)}),
              dict(_MLP, **_attention(4, 2, 16), attn_q_norm=(16,), attn_k_norm=(16,))], 2),
    # MiniMax-M2: routed experts in every layer under a sigmoid router with its score bias, q/k norms over the projection,
    # half of each head rotated
    "minimax-m2": (_MINIMAX_M2, dict(output=(V, E)),
                   dict(_attention(4, 2, 16), attn_norm=(E,), ffn_norm=(E,), attn_q_norm=(64,), attn_k_norm=(32,), ffn_gate_inp=(4, E),
                        ffn_gate_exps=(4, F, E), ffn_up_exps=(4, F, E), ffn_down_exps=(4, E, F), **{"exp_probs_b.bias": (4,)}), 2),
    "qwen35": (_QWEN35, dict(output=(V, E)), [dict(lay, **_FFN) for lay in _QWEN35_LAYERS[:2]] + _QWEN35_LAYERS[2:], 3),
    "qwen35moe": (dict(_QWEN35, expert_count=4, expert_used_count=2, expert_feed_forward_length=F, expert_shared_feed_forward_length=F),
                  dict(output=(V, E)), [dict(lay, **_QWEN35_SHARED) for lay in _QWEN35_LAYERS[:2]] + _QWEN35_LAYERS[2:], 3),
}
_BARE = ("ssm_a", "ssm_d")  # parameters llama.cpp names without .weight


def _tensor(name: str) -> str:
    return name if name.endswith((".weight", ".bias")) or name.split(".")[-1] in _BARE else f"{name}.weight"


def _k_quant(shape: tuple, kind: str, rng) -> np.ndarray:
    """Bytes of a K-quant tensor (gguf.quants cannot quantize to these): random quants and sub-block
    scales under small float16 super-block scales, so the values stay those of a real model."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind]]
    n = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, (n, size), dtype=np.uint8)
    scale = np.full(n, 1e-3, np.float16).view(np.uint8).reshape(n, 2)
    if kind == "Q6_K":  # d last
        raw[:, -2:] = scale
    else:  # d, dmin first
        raw[:, 0:2] = raw[:, 2:4] = scale
    return raw.reshape(*shape[:-1], shape[-1] // block * size)


def write_family(path: Path, arch: str, name: str | None = None, shapes: dict | None = None) -> None:
    """A tiny GGUF of `arch`: 1-D tensors F32, the matrices (embedding included) cycling through KINDS
    and the K-quants (those whose rows hold whole 256-value blocks). `shapes`: layer tensors stored
    in another shape of the same values, type and bytes ({name in FAMILIES: shape})."""
    own, top, layer, layers = FAMILIES[arch]
    shapes = shapes or {}
    rng = np.random.default_rng(11)
    w = GGUFWriter(str(path), arch)
    if name:
        w.add_string("general.name", name)
    base = dict(embedding_length=E, block_count=layers, feed_forward_length=F, context_length=1024, vocab_size=V)
    for key, value in {**base, **own}.items():
        (w.add_array if isinstance(value, list) else w.add_float32 if isinstance(value, float) else w.add_uint32)(f"{arch}.{key}", value)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(V)])  # transformers' GPT-2 vocabulary size: its length
    for key, value in dict(padding_token_id=0, bos_token_id=1, eos_token_id=2).items():
        w.add_uint32(f"tokenizer.ggml.{key}", value)
    tensors = {"token_embd.weight": (V, E), "output_norm.weight": (E,), **{_tensor(n): s for n, s in top.items()}}
    if arch == "gpt2":
        tensors["output_norm.bias"] = (E,)
    stored = {}  # tensor -> the shape it is written in, where `shapes` sets one
    for i in range(layers):
        tensors.update({f"blk.{i}.{_tensor(n)}": s for n, s in (layer[i] if isinstance(layer, list) else layer).items()})
        stored.update({f"blk.{i}.{_tensor(n)}": s for n, s in shapes.items()})
    counts, kinds = [0, 0], {}  # matrices of KINDS, of K_QUANTS so far; each tensor's type
    for tensor, shape in tensors.items():
        if shape is None:
            continue
        norm = len(shape) == 1 and tensor.endswith("norm.weight")
        x = ((1.0 if norm else 0.0) + rng.standard_normal(shape) * (0.1 if norm else 0.15)).astype(np.float32)
        if tensor.endswith("ssm_a"):  # as llama.cpp writes Mamba's A_log: -exp
            x = -np.exp(x)
        kind = "F32"  # also a matrix whose rows are no whole blocks (Mamba's conv and time step, as llama.cpp keeps them)
        if tensor.replace("ffn_up_exps", "ffn_gate_exps") in kinds:  # typed as its gate, as llama.cpp's quantize does (and
            kind = kinds[tensor.replace("ffn_up_exps", "ffn_gate_exps")]  # transformers' fused gate_up needs: Qwen3.5-MoE)
        elif len(shape) > 1 and shape[-1] % 32 == 0:
            k = shape[-1] % 256 == 0
            kind = (K_QUANTS if k else KINDS)[counts[k] % len(K_QUANTS if k else KINDS)]
            counts[k] += 1
        kinds[tensor] = kind
        if kind in K_QUANTS:
            data = _k_quant(shape, kind, rng)
        elif kind.startswith("Q"):
            data = quants.quantize(x, GGMLQuantizationType[kind])
        else:
            data = x if kind == "F32" else x.astype(np.float16)
        if tensor in stored:
            data = data.reshape(*stored[tensor][:-1], -1)  # the rows' bytes (a block type's) as they are
        w.add_tensor(tensor, data, raw_dtype=GGMLQuantizationType[kind] if kind.startswith("Q") else None)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def transformers_gguf(path: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32,
                                                             attn_implementation="eager").eval()


TOKENS = np.random.default_rng(2).integers(0, V, (2, 12))  # longer than the Gemmas' window (4)
# the families whose tensors are laid out differently (q/k rows permuted, Gemma's shifted norms, Phi-3's fused rows,
# GPT-2's transposed Conv1D weights, the MoE expert stacks split by their bytes, Qwen2-MoE's shared expert and its gate
# stored as a vector, BLOOM's q/k/v rows regrouped per head, Falcon's names, Nemotron's shifted norms with biases, Mamba's
# A stored as -exp and its squeezed conv, LFM2's conv and attention layers told apart by their kv heads, MiniMax-M2's
# expert stacks and score bias, Qwen3.5's value heads tiled, its shifted norms but one and its multi-token-prediction
# block), and Mistral, which llama.cpp files under llama; Qwen2 / Qwen3 / Gemma 3 lay theirs out as
# Llama / Gemma 2 do (test_quant.py holds every family's F16 and Q8_0 file to transformers, all but Qwen2-MoE, Mamba, LFM2,
# MiniMax-M2 and Qwen3.5, held here only)
CASES = [(arch, None) for arch in ("llama", "qwen3moe", "qwen2moe", "phi3", "gemma2", "gpt2", "bloom", "falcon", "nemotron", "mamba",
                                   "lfm2", "minimax-m2", "qwen35", "qwen35moe")] + [("llama", "Mistral 7B Instruct v0.3")]


# loaded with quantize="gguf": {family: kernels that take the file's Q8_0 / Q4_0 / Q4_1 blocks}: Mamba's mixer's own (not
# the decoder's Dense), Qwen3.5's in_proj_z with its value heads' rows reordered
BLOCKS = {"mamba": [("model", "layers", 0, "mixer", "in_proj", "kernel")],
          "qwen35": [("model", "layers", 0, "linear_attn", "in_proj_z", "kernel"), ("model", "layers", 1, "self_attn", "k_proj", "kernel")]}


@pytest.mark.parametrize("arch, name", CASES, ids=[a if n is None else "mistral" for a, n in CASES])
def test_every_tensor_type_matches_transformers(tmp_path, arch, name):
    """Each family, its tensors Q4_0 / Q4_1 / Q8_0 / F16 / F32 and Q4_K / Q6_K / Q5_K (dequantized by
    jaxllm's numpy and the gguf package, by transformers' torch code): float32 logits within 1e-4.
    A BLOCKS family loads with quantize="gguf": its kernels named there quantized parameters, the
    file's blocks, computing with the file's values (d * q in float32) all the same."""
    path = tmp_path / "tiny.gguf"
    write_family(path, arch, name)
    header = gguf.read_header(path)
    kinds = {GGMLQuantizationType(t[2]).name for t in header.tensors}
    assert set(KINDS) <= kinds and kinds & set(K_QUANTS), kinds
    ours = jaxllm.load(path, tokenizer=False, quantize="gguf" if arch in BLOCKS else None)
    params = weights.flat_params(ours.params)
    assert all(quant.is_quantized(params[p].dtype) for p in BLOCKS.get(arch, ())), [params[p].dtype for p in BLOCKS[arch]]
    assert ours.config.architecture == ("MistralForCausalLM" if name else gguf_families.ARCHITECTURES[arch].hf)
    err = reference.max_rel_diff(ours.logits(TOKENS), reference.torch_logits(transformers_gguf(path), TOKENS))
    assert err <= 1e-4, err


@pytest.mark.parametrize("arch, quantize", [("llama", "gguf"), ("qwen3moe", None), ("gpt2", None)])
def test_a_split_model_is_its_whole_file(tmp_path, arch, quantize):
    """A model split as llama.cpp's gguf-split writes it (model-00001-of-00003.gguf ..., the metadata
    in the first part), given its first part, is the model of the file it was split from (held to
    transformers above): every tensor the same bytes, the same logits; its q/k rows unpermuted, its
    expert stacks split, its Conv1D weights transposed, a quantized load's blocks taken from each part.
    transformers' GGUF loader reads one file only."""
    write_family(tmp_path / "whole.gguf", arch)
    parts = split_copy(tmp_path / "whole.gguf", tmp_path / "model.gguf", 4)
    assert [p.name for p in parts] == [f"model-{i:05d}-of-{len(parts):05d}.gguf" for i in range(1, len(parts) + 1)] and len(parts) > 2
    whole, split = (jaxllm.load(tmp_path / name, tokenizer=False, quantize=quantize) for name in ("whole.gguf", parts[0].name))
    assert split.config == whole.config
    ours, want = weights.flat_params(split.params), weights.flat_params(whole.params)
    assert ours.keys() == want.keys() and all(np.array_equal(np.asarray(ours[k]), np.asarray(want[k])) for k in want)
    assert np.array_equal(split.logits(TOKENS), whole.logits(TOKENS))


def test_qwen2moe_blocks_and_a_shared_gate_of_one_row(tmp_path):
    """Qwen2-MoE's file with the shared expert's gate [1, hidden], as llama.cpp's converter writes it
    since it stopped squeezing tensors (transformers' loader reads only the squeezed vector; it makes
    the row [1, 1, hidden] and refuses the file), loaded with quantize="gguf": its Q8_0 / Q4_0 / Q4_1
    expert stacks and shared-expert kernels taken as their blocks, and transformers' logits of the
    squeezed file within 1e-4."""
    write_family(tmp_path / "vector.gguf", "qwen2moe")
    write_family(tmp_path / "row.gguf", "qwen2moe", shapes={"ffn_gate_inp_shexp": (1, E)})
    ours = jaxllm.load(tmp_path / "row.gguf", tokenizer=False, quantize="gguf")
    params, native = weights.flat_params(ours.params), []
    for name, _, kind, _ in gguf.read_header(tmp_path / "row.gguf").tensors:
        m = re.fullmatch(r"blk\.(\d+)\.ffn_(gate|up|down)_(exps|shexp)\.weight", name)
        if m is None or GGMLQuantizationType(kind).name not in gguf_blocks.NATIVE:
            continue
        layer, part, proj = m.groups()
        path = ("model", "layers", int(layer), "mlp", *(("shared_expert", f"{part}_proj", "kernel") if proj == "shexp" else (f"{part}_proj",)))
        native.append(quant.is_quantized(params[path].dtype))
    assert len(native) >= 4 and all(native), native
    want = reference.torch_logits(transformers_gguf(tmp_path / "vector.gguf"), TOKENS)
    assert reference.max_rel_diff(ours.logits(TOKENS), want) <= 1e-4


@pytest.mark.parametrize("widths", [{}, {"expert_feed_forward_length": 0, "expert_shared_feed_forward_length": 0}])
def test_qwen2moe_widths_the_file_leaves_out_are_llama_cpps(tmp_path, widths):
    """A Qwen2-MoE file without its experts' widths (written before the keys existed), or with them 0:
    llama.cpp's, feed_forward_length / expert_used_count and feed_forward_length (Qwen1.5-MoE-A2.7B:
    5632 / 4 = 1408 and 5632, its own widths), not Qwen2MoeConfig's defaults, which fit that model alone."""
    w = GGUFWriter(str(tmp_path / "w.gguf"), "qwen2moe")
    add_fields(w, "qwen2moe", dict(embedding_length=2048, feed_forward_length=5632, block_count=24, expert_count=60,
                                   expert_used_count=4, **{"attention.head_count": 16}, **widths))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    raw = gguf.config_from_metadata(gguf.read_header(tmp_path / "w.gguf"))
    assert (raw["moe_intermediate_size"], raw["shared_expert_intermediate_size"], raw["norm_topk_prob"]) == (1408, 5632, False)


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
    """convert_hf_to_gguf.py's LlamaModel.permute: each head's rotary halves interleaved."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


_LLAMA_NAMES = {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm", "self_attn.q_proj": "attn_q",
                "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
                "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down"}


def test_a_converted_llama_is_its_hugging_face_model(tmp_path):
    """A Hugging Face Llama (head_dim 32, not hidden / heads: Mistral Nemo's kind) written as
    convert_hf_to_gguf.py writes it, float32: jaxllm's logits are the PyTorch model's, not only
    transformers' GGUF loader's (which undoes the permutation the same way)."""
    model = reference.build("LlamaForCausalLM", tmp_path / "hf", seed=4, head_dim=32)
    cfg, state = model.config, {k: v.numpy() for k, v in model.state_dict().items()}
    w = GGUFWriter(str(tmp_path / "llama.gguf"), "llama")
    for key, value in dict(embedding_length=cfg.hidden_size, block_count=cfg.num_hidden_layers, context_length=64,
                           feed_forward_length=cfg.intermediate_size, vocab_size=cfg.vocab_size, **{
                               "attention.head_count": cfg.num_attention_heads, "attention.head_count_kv": cfg.num_key_value_heads,
                               "attention.key_length": 32, "attention.value_length": 32, "rope.dimension_count": 32}).items():
        w.add_uint32(f"llama.{key}", value)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", cfg.rms_norm_eps)
    w.add_float32("llama.rope.freq_base", 10000.0)
    top = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight", "lm_head.weight": "output.weight"}
    for hf, value in state.items():
        if hf in top:
            w.add_tensor(top[hf], value)
            continue
        _, _, layer, *part, kind = hf.split(".")
        part = ".".join(part)
        if part == "self_attn.q_proj":
            value = _permute(value, cfg.num_attention_heads)
        elif part == "self_attn.k_proj":
            value = _permute(value, cfg.num_key_value_heads)
        w.add_tensor(f"blk.{layer}.{_LLAMA_NAMES[part]}.{kind}", np.ascontiguousarray(value))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tokens = np.random.default_rng(3).integers(0, cfg.vocab_size, (2, 12))
    want = reference.torch_logits(model, tokens)
    ours = jaxllm.load(tmp_path / "llama.gguf", tokenizer=False)
    assert ours.config.head_dim == 32
    assert reference.max_rel_diff(ours.logits(tokens), want) <= 1e-5
    assert reference.max_rel_diff(reference.torch_logits(transformers_gguf(tmp_path / "llama.gguf"), tokens), want) <= 1e-5


# -- the tokenizer --------------------------------------------------------------------------------

TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<|im_start|>", "<|im_end|>", "<mask>"]  # <mask>: GemmaTokenizer adds it where a vocabulary lacks it


def _sentencepiece() -> dict:
    """A llama.cpp `llama` vocabulary: <unk> <s> </s>, the 256 byte tokens, pieces with scores."""
    pieces = ["\u2581", "e", "l", "o", "h", "\u2581h", "he", "ll", "\u2581he", "llo", "\u2581hello", "w", "r", "d", "\u2581w", "or",
              "\u2581wor", "ld", "\u2581world", "a", "b", "\u2581a", "é", "東", "!", "\u2581\u2581"]
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256)), *pieces, *SPECIALS]
    types = [2, 3, 3, *[6] * 256, *[1] * len(pieces), *[3] * len(SPECIALS)]
    scores = [0.0] * 259 + [-float(i) for i in range(len(pieces))] + [0.0] * len(SPECIALS)
    return {"model": "llama", "tokens": tokens, "scores": scores, "token_type": types, "bos_token_id": 1, "eos_token_id": 2,
            "unknown_token_id": 0}


def _byte_level(pre: str) -> dict:
    """A llama.cpp `gpt2` vocabulary: the 256 byte-level characters, merges, control tokens."""
    spell = bytes_to_unicode()
    merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d", "Ġ h", "Ġh e", "Ã ©"]
    tokens = [spell[b] for b in range(256)] + [m.replace(" ", "") for m in merges] + ["<|endoftext|>", *SPECIALS]
    n = len(tokens)
    return {"model": "gpt2", "pre": pre, "tokens": tokens, "merges": merges, "token_type": [1] * (n - 4) + [3] * 4,
            "bos_token_id": n - 4, "eos_token_id": n - 2, "padding_token_id": n - 4}


def write_tokenizer(path: Path, arch: str, vocab: dict) -> None:
    w = GGUFWriter(str(path), arch)
    w.add_uint32(f"{arch}.block_count", 1)
    add_fields(w, "tokenizer.ggml", vocab)
    w.add_string("tokenizer.chat_template", TEMPLATE)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TEXTS = ["hello world", " hello  world ", "héllo 東京 wörld! 🙂", "<|im_start|>user\nhello<|im_end|>", "", "   ", "a\n\nb\tc",
         "hello</s>world<s><mask>"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "  hello  world é 🙂"}]
TOKENIZERS = [("llama", "spm"), ("llama", "llama-bpe"), ("qwen2", "qwen2"), ("qwen3", "spm"), ("phi3", "spm"),
              ("gemma2", "spm"), ("gpt2", None)]


@pytest.mark.parametrize("arch, kind", TOKENIZERS, ids=[f"{a}-{k}" for a, k in TOKENIZERS])
def test_tokenizer_matches_transformers_gguf_tokenizer(tmp_path, monkeypatch, arch, kind):
    """jaxllm's tokenizer of a GGUF file (built from the header we parse, served without
    transformers) against AutoTokenizer.from_pretrained(gguf_file=...): the family's builder
    (Phi-3's normalizer, Gemma's merges from token order, the pre-tokenizer's split), special and
    control tokens, unicode and runs of spaces; ids with and without special tokens, decoding with
    and without them, and the chat template's text and ids."""
    monkeypatch.setenv("JAXLLM_TOKENIZER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tok.gguf"
    write_tokenizer(path, arch, _sentencepiece() if kind == "spm" else _byte_level(kind or "gpt-2"))
    ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
    for ours in (gguf_tokenizer.load_tokenizer(path), gguf_tokenizer.load_tokenizer(path)):  # built, then from the cache
        assert ours.chat_template == ref.chat_template
        # transformers' GemmaTokenizer names <mask> its mask_token (our tokenizer, transformers' generic one, does not):
        # a special id more, which encodes and decodes alike (the file marks it a control token for both)
        mask = [ref.convert_tokens_to_ids("<mask>")] if arch.startswith("gemma") else []
        assert ours.all_special_ids + mask == ref.all_special_ids
        for text in TEXTS:
            for special in (True, False):
                ids = ours(text, add_special_tokens=special)["input_ids"]
                assert ids == ref(text, add_special_tokens=special)["input_ids"], (text, special)
                for skip in (True, False):
                    assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), (text, skip)
        for prompt in (True, False):
            text = ours.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=prompt)
            assert text == ref.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=prompt)
            assert ours(text, add_special_tokens=False)["input_ids"] == ref(text, add_special_tokens=False)["input_ids"]
        assert ours.decode(list(range(len(ref)))) == ref.decode(list(range(len(ref))))


def _without(vocab: dict, *keys: str, **values) -> dict:
    return {**{k: v for k, v in vocab.items() if k not in keys}, **values}


VOCABULARIES = [  # (id, arch, vocabulary, refusal or None: transformers' tokenizer it must match)
    ("spm-no-scores", "llama", _without(_sentencepiece(), "scores"), r"the file's 'llama' tokenizer has no tokenizer\.ggml\.scores array"),
    ("spm-no-tokens", "llama", _without(_sentencepiece(), "tokens"), r"the file's 'llama' tokenizer has no tokenizer\.ggml\.tokens array"),
    ("bpe-no-merges", "gpt2", _without(_byte_level("gpt-2"), "merges"),
     r"the file's 'gpt2' tokenizer has no tokenizer\.ggml\.merges or tokenizer\.ggml\.scores array, which it is built from"),
    ("bpe-merges-not-array", "qwen2", _without(_byte_level("qwen2"), merges="h e"), r"has no tokenizer\.ggml\.merges or"),
    ("bos-beyond-vocabulary", "llama", _without(_sentencepiece(), bos_token_id=10**6),
     r"GGUF tokenizer\.ggml\.bos_token_id is 1000000, not one of the file's \d+ token ids: the file is damaged"),
    ("eos-not-a-number", "gpt2", _without(_byte_level("gpt-2"), eos_token_id="2"), r"tokenizer\.ggml\.eos_token_id is 2, not one of"),
    # read as transformers reads them
    ("bpe-merges-from-scores", "gpt2", _without(_byte_level("gpt-2"), "merges", scores=[-float(i) for i in range(len(_byte_level("")["tokens"]))]),
     None),
    ("no-token-types", "llama", _without(_sentencepiece(), "token_type"), None),
]


@pytest.mark.parametrize("arch, vocab, message", [c[1:] for c in VOCABULARIES], ids=[c[0] for c in VOCABULARIES])
def test_a_vocabulary_short_of_what_it_is_built_from(tmp_path, monkeypatch, arch, vocab, message):
    """A vocabulary without the arrays its kind is built from (a sentencepiece one's scores, a byte-level
    one's merges and scores), or a special token id outside it: one line naming the key (it was
    transformers' bare KeyError 'scores' / IndexError); what transformers reads (merges rebuilt
    from scores, no token types) reads as it does."""
    monkeypatch.setenv("JAXLLM_TOKENIZER_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tok.gguf"
    write_tokenizer(path, arch, vocab)
    if message is None:
        ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path), gguf_file=path.name)
        ours = gguf_tokenizer.load_tokenizer(path)
        assert [ours(t)["input_ids"] for t in TEXTS] == [ref(t)["input_ids"] for t in TEXTS]
        return
    with pytest.raises(jaxllm.errors.CheckpointError, match=rf"^tok\.gguf: .*{message}.*load with tokenizer=False and pass token ids$") as info:
        gguf_tokenizer.load_tokenizer(path)
    assert "\n" not in str(info.value)
