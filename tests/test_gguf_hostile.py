"""Hostile GGUF files: truncated anywhere, wrong magic or version, absurd counts and lengths,
unknown or nested value types, tensors outside the file, overlapping or off their alignment,
expert stacks of no experts, metadata of the wrong type. Each is refused with one CheckpointError
line (no struct/numpy traceback) without allocating more than the file's size."""

import hashlib
import re
import resource
import struct
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter, quants
from gguf_files import add_fields, split_copy, write_random
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxllm
from jaxllm import gguf, loader
from jaxllm.errors import CheckpointError, JaxllmError

STRING, ARRAY, U32 = 8, 9, 4


def string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def field(key: str, kind: int, payload: bytes) -> bytes:
    return string(key) + struct.pack("<I", kind) + payload


def gguf_bytes(fields: list[bytes], infos: list[bytes] = (), counts: tuple[int, int] | None = None, magic=b"GGUF",
               version: int = 3) -> bytes:
    """A GGUF header of raw `fields` and tensor `infos` (counts: (tensors, fields) as the header states them)."""
    n_tensors, n_fields = counts or (len(infos), len(fields))
    return magic + struct.pack("<IQQ", version, n_tensors, n_fields) + b"".join(fields) + b"".join(infos)


ARCH = field("general.architecture", STRING, string("llama"))
LAYER = ("llama.block_count", 1)


def tiny_llama(path: Path, shapes: dict | None = None, arch: str = "llama") -> bytes:
    """A one-layer Llama (or Qwen3-MoE) GGUF of random float32 weights; `shapes` overrides tensors'
    shapes [out, in]. Returns its bytes."""
    w = GGUFWriter(str(path), arch)
    meta = dict(embedding_length=16, feed_forward_length=24, block_count=1, context_length=64, vocab_size=32,
                **{"attention.head_count": 4, "attention.head_count_kv": 2})
    if arch == "qwen3moe":
        meta.update(expert_count=2, expert_used_count=1, expert_feed_forward_length=32)
    for key, value in meta.items():
        w.add_uint32(f"{arch}.{key}", value)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    tensors = {"token_embd.weight": (32, 16), "output_norm.weight": (16,), "output.weight": (32, 16),
               "blk.0.attn_norm.weight": (16,), "blk.0.ffn_norm.weight": (16,), "blk.0.attn_q.weight": (16, 16),
               "blk.0.attn_k.weight": (8, 16), "blk.0.attn_v.weight": (8, 16), "blk.0.attn_output.weight": (16, 16)}
    if arch == "qwen3moe":
        tensors.update({"blk.0.attn_q_norm.weight": (4,), "blk.0.attn_k_norm.weight": (4,), "blk.0.ffn_gate_inp.weight": (2, 16),
                        "blk.0.ffn_gate_exps.weight": (2, 32, 16), "blk.0.ffn_up_exps.weight": (2, 32, 16),
                        "blk.0.ffn_down_exps.weight": (2, 16, 32)})
    else:
        tensors.update({"blk.0.ffn_gate.weight": (24, 16), "blk.0.ffn_up.weight": (24, 16), "blk.0.ffn_down.weight": (16, 24)})
    tensors.update(shapes or {})
    write_random(w, tensors)
    return path.read_bytes()


def with_offset(blob: bytes, name: str, offset) -> bytes:
    """The file with tensor `name`'s data offset replaced by offset(old)."""
    key = string(name)
    at = blob.index(key) + len(key)
    (n_dims,) = struct.unpack_from("<I", blob, at)
    at += 4 + 8 * n_dims + 4
    (old,) = struct.unpack_from("<Q", blob, at)
    return blob[:at] + struct.pack("<Q", offset(old)) + blob[at + 8 :]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> bytes:
    return tiny_llama(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


def refused(path: Path, blob: bytes, match: str, error=CheckpointError) -> None:
    path.write_bytes(blob)
    with pytest.raises(error, match=match) as info:
        jaxllm.load(path, tokenizer=False)
    assert "\n" not in str(info.value)


NOT_GGUF = r"is not a readable GGUF file \("
HEADER_CASES = [
    # formats other than GGUF v2/v3 little-endian: each named, with its own fix
    ("wrong-magic", b"GGML" + bytes(20), r"bad\.gguf: not a GGUF file \(it starts with b'GGML', not b'GGUF'\): download it again"),
    ("legacy-ggml", b"lmgg" + bytes(20), r"bad\.gguf: a GGML file \(llama\.cpp's format before GGUF\), not GGUF: convert it with "
                                        r"llama\.cpp's convert_llama_ggml_to_gguf\.py"),
    ("legacy-ggjt", b"tjgg" + struct.pack("<I", 3) + bytes(16), r"a GGJT file \(llama\.cpp's format before GGUF\)"),
    ("version-1", gguf_bytes([], version=1), r"bad\.gguf: GGUF version 1 \(llama\.cpp before August 2023\), which jaxllm does not "
                                             r"read: convert the model again with a current llama\.cpp's convert_hf_to_gguf\.py$"),
    ("version-4", gguf_bytes([ARCH], version=4), r"bad\.gguf: GGUF version 4, which jaxllm does not read \(it reads versions 2 and 3\)"),
    ("big-endian-v3", b"GGUF" + struct.pack(">IQQ", 3, 0, 0), r"a big-endian GGUF file \(written for s390x\), which jaxllm does "
                                                              r"not read: convert it with the gguf package's gguf-convert-endian"),
    ("big-endian-v2", b"GGUF" + struct.pack(">IQQ", 2, 1, 0), r"a big-endian GGUF file"),
    ("empty", b"", NOT_GGUF + r"ValueError: cannot mmap an empty file\)"),
    ("magic-only", b"GGUF", NOT_GGUF + r"ValueError: the file ends at byte 4, inside its header \(truncated download\?\)"),
    ("cut-in-counts", gguf_bytes([])[:14], r"ends at byte 14, inside its header \(truncated download\?\)"),
    ("cut-in-key", gguf_bytes([ARCH])[:30], r"counts 0 tensors and 1 metadata entries, more than the file's 30 bytes can "
                                            r"hold \(truncated download\?\)"),
    ("cut-in-value", gguf_bytes([ARCH])[:-3], r"ends at byte 66, inside its header \(truncated download\?\)"),
    ("cut-in-tensor-info", gguf_bytes([ARCH], [string("output_norm.weight") + struct.pack("<IQ", 1, 16)]),
     r"ends at byte 107, inside its header \(truncated download\?\)"),
    # counts and lengths far beyond the file: refused before reading (or copying) the rest of it
    ("absurd-field-count", gguf_bytes([ARCH], counts=(0, 2**63)),
     r"the header counts 0 tensors and 9223372036854775808 metadata entries, more than the file's 69 bytes can hold"),
    ("absurd-tensor-count", gguf_bytes([ARCH], counts=(2**40, 1)), r"counts 1099511627776 tensors and 1 metadata entries"),
    ("absurd-key-length", gguf_bytes([struct.pack("<Q", 2**62) + b"x" * 40]),
     r"a string of 4611686018427387904 bytes at byte 32, beyond the end of the file \(byte 72\)"),
    ("absurd-value-length", gguf_bytes([string("general.name") + struct.pack("<IQ", STRING, 2**62)]),
     r"a string of 4611686018427387904 bytes at byte 56"),
    ("absurd-array-count", gguf_bytes([field("llama.x", ARRAY, struct.pack("<IQ", U32, 2**61))]),
     r"metadata 'llama\.x' is an array of 2305843009213693952 values, more than the 0 bytes after it hold"),
    ("absurd-string-array-count", gguf_bytes([field("tokenizer.ggml.tokens", ARRAY, struct.pack("<IQ", STRING, 2**40))]),
     r"metadata 'tokenizer\.ggml\.tokens' is an array of 1099511627776 values, more than"),
    ("absurd-dims", gguf_bytes([ARCH], [string("t.weight") + struct.pack("<I", 2**32 - 1) + bytes(64)]),
     r"tensor 't\.weight' has 4294967295 dimensions; GGUF allows at most 4"),
    ("five-dims", gguf_bytes([ARCH], [string("t.weight") + struct.pack("<I5QIQ", 5, 1, 1, 1, 1, 1, 0, 0)]),
     r"tensor 't\.weight' has 5 dimensions; GGUF allows at most 4"),
    ("tensor-twice", gguf_bytes([ARCH], [string("t.weight") + struct.pack("<IQIQ", 1, 32, 0, 0)] * 2), r"tensor 't\.weight' appears twice"),
    ("key-twice", gguf_bytes([ARCH, ARCH]), r"metadata key 'general\.architecture' appears twice"),
    # value types
    ("unknown-value-type", gguf_bytes([field("llama.x", 13, bytes(8))]), r"metadata 'llama\.x' has value type 13, which GGUF does "
                                                                          "not define"),
    ("unknown-array-type", gguf_bytes([field("llama.x", ARRAY, struct.pack("<IQ", 99, 1) + bytes(8))]),
     r"metadata 'llama\.x' has value type 99, which GGUF does not define"),
    ("nested-arrays", gguf_bytes([field("llama.x", ARRAY, struct.pack("<IQ", ARRAY, 1) * 5000 + struct.pack("<IQ", U32, 0))]),
     r"metadata 'llama\.x' nests arrays more than 8 deep"),
    ("bad-utf8-key", gguf_bytes([struct.pack("<Q", 2) + b"\xff\xfe" + struct.pack("<I", U32) + bytes(4)]), "UnicodeDecodeError"),
    ("alignment-not-power-of-two", gguf_bytes([ARCH, field("general.alignment", U32, struct.pack("<I", 24))]),
     r"general\.alignment 24 is not a power of two"),
    ("metadata-only", gguf_bytes([ARCH]), r"GGUF metadata lacks llama\.embedding_length, llama\.feed_forward_length, llama\.block_count"),
    ("tokens-not-a-list", gguf_bytes([ARCH, field("tokenizer.ggml.tokens", U32, struct.pack("<I", 5))]),
     r"GGUF tokenizer\.ggml\.tokens is int, not a list of tokens: the file is damaged"),
    ("arch-not-string", gguf_bytes([field("general.architecture", U32, struct.pack("<I", 5))]),
     "GGUF general.architecture must be a string, got 5"),
]


@pytest.mark.parametrize("blob, message", [c[1:] for c in HEADER_CASES], ids=[c[0] for c in HEADER_CASES])
def test_a_damaged_header_is_one_line(tmp_path, blob, message):
    refused(tmp_path / "bad.gguf", blob, message)


def test_an_absurd_length_copies_nothing(tmp_path):
    """A string length beyond the end of a large file is refused without copying the rest of the
    file (it copied everything after it: a 10 GB file, 10 GB of memory)."""
    path = tmp_path / "big.gguf"
    with open(path, "wb") as f:
        f.write(gguf_bytes([struct.pack("<Q", 2**62)]))
        f.truncate(512 << 20)  # sparse: no disk used
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(CheckpointError, match="a string of 4611686018427387904 bytes at byte 32, beyond the end of the file"):
        gguf.Header(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB: well below the file's 512 MiB


TENSOR_CASES = [
    ("offset-beyond-file", lambda b: with_offset(b, "output.weight", lambda o: 2**62), r"ends before tensor output\.weight"),
    ("offset-at-max", lambda b: with_offset(b, "output.weight", lambda o: 2**64 - 32), r"ends before tensor output\.weight"),
    ("misaligned", lambda b: with_offset(b, "output.weight", lambda o: o + 4),
     NOT_GGUF + r"ValueError: tensor 'output\.weight' starts at data offset \d+, not a multiple of the file's alignment \(32\)"),
    ("overlapping", lambda b: with_offset(b, "output.weight", lambda o: 0),
     r"tensors output\.weight and token_embd\.weight share bytes \(data offsets 0-2048 and 0-2048\): the file is damaged"),
    ("overlapping-tail", lambda b: with_offset(b, "output_norm.weight", lambda o: o - 32),
     r"tensors token_embd\.weight and output_norm\.weight share bytes \(data offsets 0-2048 and 2016-2080\)"),
    ("data-truncated", lambda b: b[:-100], r"ends before tensor blk\.0\.ffn_down\.weight \(truncated download\?\)"),
    ("cut-after-header", lambda b: b[:700], r"ends at byte 700, inside its header"),
]


@pytest.mark.parametrize("spoil, message", [c[1:] for c in TENSOR_CASES], ids=[c[0] for c in TENSOR_CASES])
def test_damaged_tensors_are_one_line(tmp_path, pristine, spoil, message):
    refused(tmp_path / "bad.gguf", spoil(pristine), message)


def test_the_pristine_file_loads(tmp_path, pristine):
    (tmp_path / "tiny.gguf").write_bytes(pristine)
    assert jaxllm.load(tmp_path / "tiny.gguf", tokenizer=False).config.num_layers == 1


@pytest.mark.parametrize("shapes, arch, message", [
    ({"blk.0.attn_q.weight": (16, 8)}, "llama", r"model\.layers\.0\.self_attn\.q_proj\.weight has shape \[16, 8\], expected \[16, 16\]"),
    ({"blk.0.attn_k.weight": (0, 16)}, "llama", r"model\.layers\.0\.self_attn\.k_proj\.weight has shape \[0, 16\], expected \[8, 16\]"),
    ({"blk.0.ffn_up_exps.weight": (0, 32, 16)}, "qwen3moe",
     r"tensor blk\.0\.ffn_up_exps\.weight has shape \[0, 32, 16\]: an expert stack is \[experts, rows, columns\] of at least one"),
    ({"blk.0.ffn_up_exps.weight": (16,)}, "qwen3moe", r"tensor blk\.0\.ffn_up_exps\.weight has shape \[16\]: an expert stack is"),
], ids=["q-columns", "k-no-rows", "no-experts", "flat-experts"])
def test_tensors_that_disagree_with_the_config_are_one_line(tmp_path, shapes, arch, message):
    tiny_llama(tmp_path / "bad.gguf", shapes, arch)
    with pytest.raises(CheckpointError, match=message) as info:
        jaxllm.load(tmp_path / "bad.gguf", tokenizer=False)
    assert "\n" not in str(info.value)


def _with_meta(path: Path, arch: str, meta: dict) -> None:
    """A header-only file of `arch` with the shared required keys, `meta` over them (values of any type)."""
    keys = {"embedding_length": 64, "feed_forward_length": 128, "block_count": 2, "attention.head_count": 4, **meta}
    w = GGUFWriter(str(path), arch)
    add_fields(w, arch, keys)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.mark.parametrize("arch, meta, message", [
    ("phi3", {"attention.key_length": "16", "rope.dimension_count": 16},
     r"'head_dim' must be a positive integer .*got \"16\""),
    ("phi3", {"attention.key_length": [16], "rope.dimension_count": 16}, r"'head_dim' must be a positive integer .*got \[16\]"),
    ("gemma2", {"attention.head_count": 0}, r"'num_attention_heads' must be a positive integer .*got 0"),
    ("gemma3", {"attention.head_count": 0, "block_count": 62}, r"'num_attention_heads' must be a positive integer .*got 0"),
    ("gemma2", {"attention.head_count": "4"}, r"'num_attention_heads' must be a positive integer .*got \"4\""),
], ids=["phi3-head-dim-string", "phi3-head-dim-list", "gemma2-no-heads", "gemma3-27b-no-heads", "gemma2-heads-string"])
def test_metadata_of_the_wrong_type_is_one_line(tmp_path, arch, meta, message):
    """Values a family's own reading divides by or compares (Phi-3's rotary part, Gemma's attention
    scale) reach the config's checks, which name them, instead of a TypeError / ZeroDivisionError."""
    _with_meta(tmp_path / "bad.gguf", arch, meta)
    with pytest.raises(JaxllmError, match=message) as info:
        jaxllm.load(tmp_path / "bad.gguf", tokenizer=False)
    assert "\n" not in str(info.value)


QWEN35 = {"attention.head_count_kv": 2, "attention.key_length": 16, "full_attention_interval": 2, "ssm.conv_kernel": 4,
          "ssm.state_size": 8, "ssm.group_count": 2, "ssm.time_step_rank": 4, "ssm.inner_size": 64}


@pytest.mark.parametrize("arch, meta, message", [
    ("mamba", {"ssm.inner_size": 128}, r"^GGUF metadata lacks mamba\.ssm\.state_size, mamba\.ssm\.conv_kernel, mamba\.ssm\.time_step_rank: "
                                       r"the file is incomplete .* convert_hf_to_gguf\.py$"),
    ("mamba", {"ssm.inner_size": 128, "ssm.state_size": 16, "ssm.conv_kernel": 4, "ssm.time_step_rank": 4, "ssm.dt_b_c_rms": 1},
     r"^GGUF mamba file with ssm\.dt_b_c_rms \(FalconMamba\): not supported from GGUF .* Hugging Face checkpoint instead$"),
    ("lfm2", {"shortconv.l_cache": 3}, r"^GGUF metadata lacks lfm2\.attention\.head_count_kv: "),
    ("lfm2", {"shortconv.l_cache": 3, "attention.head_count_kv": 2},
     r"^GGUF lfm2\.attention\.head_count_kv is 2, not a list of 2 kv head counts \(0 for a conv layer\): the file is damaged"),
    ("lfm2", {"shortconv.l_cache": 3, "attention.head_count_kv": [0, 2, 2]}, r"head_count_kv is \[0, 2, 2\], not a list of 2 kv head"),
    ("minimax-m2", {"attention.key_length": 16}, r"^GGUF metadata lacks minimax-m2\.expert_count, minimax-m2\.expert_used_count: "),
    ("minimax-m2", {"attention.key_length": 16, "expert_count": 0, "expert_used_count": 1},
     r"^GGUF minimax-m2\.expert_count is 0: a MiniMax-M2 file has at least one expert"),
    ("qwen35", {}, r"^GGUF metadata lacks qwen35\.attention\.head_count_kv, qwen35\.attention\.key_length, qwen35\.full_attention_interval, "
                   r"qwen35\.ssm\.conv_kernel, qwen35\.ssm\.state_size, qwen35\.ssm\.group_count, qwen35\.ssm\.time_step_rank, "
                   r"qwen35\.ssm\.inner_size: "),
    ("qwen35moe", QWEN35, r"^GGUF metadata lacks qwen35moe\.expert_count, qwen35moe\.expert_used_count, "
                          r"qwen35moe\.expert_feed_forward_length, qwen35moe\.expert_shared_feed_forward_length: "),
    ("qwen35", dict(QWEN35, nextn_predict_layers="1"), r"^GGUF qwen35\.nextn_predict_layers is 1, not a whole number of layers: "),
    ("gpt-oss", {}, r"^GGUF architecture 'gpt-oss' is not supported from GGUF \(transformers' GGUF loader leaves its experts, "),
    ("gemma4", {}, r"^GGUF architecture 'gemma4' is not supported from GGUF \(transformers' GGUF loader builds Gemma4TextConfig's "),
], ids=["mamba-no-ssm", "falcon-mamba", "lfm2-no-kv", "lfm2-kv-not-a-list", "lfm2-kv-per-layer", "minimax-m2-no-experts",
        "minimax-m2-zero-experts", "qwen35-no-ssm", "qwen35moe-no-experts", "qwen35-nextn-string", "gpt-oss", "gemma4"])
def test_metadata_a_family_cannot_do_without_is_one_line(tmp_path, arch, meta, message):
    """Mamba, LFM2, MiniMax-M2 and Qwen3.5 without the keys their layers are built from, or with them of the
    wrong form; a file of what transformers' GGUF loader reads as something else (FalconMamba's
    norms) or cannot read (GPT-OSS, Gemma 4): one line naming it, before any tensor is read."""
    _with_meta(tmp_path / "bad.gguf", arch, meta)
    with pytest.raises(CheckpointError, match=message) as info:
        jaxllm.load(tmp_path / "bad.gguf", tokenizer=False)
    assert "\n" not in str(info.value)


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzzed_header_bytes_are_one_line(tmp_path, pristine, data):
    """Any bytes of the header (and the first tensor's) changed, cut or left out: the file loads or
    is refused with one JaxllmError line, never another exception."""
    head = pristine[:1200]
    blob = bytearray(head)
    for _ in range(data.draw(st.integers(1, 6))):
        at = data.draw(st.integers(0, len(blob) - 1))
        how = data.draw(st.sampled_from(["byte", "word", "cut"]))
        if how == "byte":
            blob[at] = data.draw(st.integers(0, 255))
        elif how == "word":
            blob[at : at + 8] = struct.pack("<Q", data.draw(st.sampled_from([0, 1, 2**31, 2**32 - 1, 2**63, 2**64 - 1])))
        else:
            del blob[at : at + data.draw(st.integers(1, 64))]
    blob = bytes(blob) + pristine[1200:]
    path = tmp_path / f"fuzz-{hashlib.sha256(blob).hexdigest()[:16]}.gguf"  # a new name: no header cached for it
    path.write_bytes(blob)
    try:
        loader.prepare(path).check()
    except JaxllmError as err:
        assert "\n" not in str(err)


def _split(tmp_path: Path, pristine: bytes) -> list[Path]:
    """The pristine file split as llama.cpp's gguf-split writes it: parts of 5 tensors (3 parts)."""
    (tmp_path / "whole.gguf").write_bytes(pristine)
    return split_copy(tmp_path / "whole.gguf", tmp_path / "model.gguf", 5)


def _other_part(parts: list[Path]) -> None:
    """Part 3 replaced by a part 2 (of another split of a model)."""
    parts[2].write_bytes(parts[1].read_bytes())


SPLIT_CASES = [
    ("second-part", lambda parts: None, 1, r"model-00002-of-00003\.gguf is part 2 of 3 of a split GGUF model: pass its first part, "
                                           r"model-00001-of-00003\.gguf$"),
    ("part-missing", lambda parts: parts[2].unlink(), 0,
     r"model-00001-of-00003\.gguf is the first of 3 parts of a split GGUF model, and model-00003-of-00003\.gguf is missing beside it: "
     r"download every part into the same folder$"),
    ("parts-missing", lambda parts: [p.unlink() for p in parts[1:]], 0, r"and model-00002-of-00003\.gguf, model-00003-of-00003\.gguf "
                                                                       r"are missing beside it"),
    ("part-renamed", lambda parts: parts[0].rename(parts[0].with_name("model.gguf")), "model.gguf",
     r"model\.gguf is the first of 3 parts of a split GGUF model, but its name is not llama\.cpp's NAME-00001-of-00003\.gguf, by "
     r"which its other parts are found: rename the parts back$"),
    ("other-part", _other_part, 0, r"model-00003-of-00003\.gguf is not part 3 of 3 of model-00001-of-00003\.gguf's model \(its "
                                   r"split\.no 1, split\.count 3\): download the parts of one model again$"),
    ("part-truncated", lambda parts: parts[1].write_bytes(parts[1].read_bytes()[:-8]), 0,
     r"model-00002-of-00003\.gguf ends before tensor \S+ \(truncated download\?\)"),
]


@pytest.mark.parametrize("spoil, given, message", [c[1:] for c in SPLIT_CASES], ids=[c[0] for c in SPLIT_CASES])
def test_a_split_model_missing_a_part_is_one_line(tmp_path, pristine, spoil, given, message):
    """A split model (llama.cpp's gguf-split) given a part but its first, a part missing, renamed,
    of another model or cut short: one line naming the part and the fix (it read as a model
    missing most tensors, or as a model of another part's tensors)."""
    parts = _split(tmp_path, pristine)
    spoil(parts)
    with pytest.raises(CheckpointError, match=message) as info:
        jaxllm.load(tmp_path / given if isinstance(given, str) else parts[given], tokenizer=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("key, value, message", [
    ("split.count", 0, r"GGUF split\.no 0 / split\.count 0 are not a part's number and its model's part count: the file is damaged"),
    ("split.no", 3, r"GGUF split\.no 3 / split\.count 3 are not a part's number"),
    ("split.tensors.count", 11, r"the 3 parts of this split GGUF model hold 12 tensors, not the 11 its split\.tensors\.count says"),
])
def test_split_metadata_that_disagrees_is_one_line(tmp_path, pristine, key, value, message):
    """The first part's split.* keys out of range or counting other tensors than the parts hold."""
    parts = _split(tmp_path, pristine)
    blob = parts[0].read_bytes()
    at = blob.index(string(key)) + len(string(key))
    kind = struct.unpack_from("<I", blob, at)[0]
    fmt = {2: "<H", 5: "<i"}[kind]  # split.no / split.count uint16, split.tensors.count int32 (as gguf-split writes them)
    blob = blob[: at + 4] + struct.pack(fmt, value) + blob[at + 4 + struct.calcsize(fmt) :]
    refused(parts[0], blob, message)


@pytest.mark.parametrize("arch, key", [("llama", "attention.head_count"), ("llama", "attention.head_count_kv"),
                                       ("qwen2", "feed_forward_length"), ("gemma2", "attention.head_count")])
def test_a_count_given_per_layer_reads_as_one_or_is_one_line(tmp_path, arch, key):
    """A head count or MLP width written one a layer (llama.cpp reads either form): the same in every
    layer, the config of the single value; differing, one line naming the key (it read as a
    config value [2, 2], refused as a damaged file)."""
    base = {"attention.head_count_kv": 2}
    _with_meta(tmp_path / "one.gguf", arch, base)
    one = gguf.config_from_metadata(gguf.Header(tmp_path / "one.gguf"))
    value = one[{"attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
                 "feed_forward_length": "intermediate_size"}[key]]
    _with_meta(tmp_path / "same.gguf", arch, {**base, key: [value, value]})
    assert gguf.config_from_metadata(gguf.Header(tmp_path / "same.gguf")) == one
    _with_meta(tmp_path / "bad.gguf", arch, {**base, key: [value, value * 2]})
    with pytest.raises(CheckpointError, match=rf"^GGUF {arch}\.{re.escape(key)} differs from layer to layer \(\[{value}, {value * 2}\]\): "
                                              r"a model whose layers differ so is not supported from GGUF; load its Hugging Face "
                                              r"checkpoint instead$"):
        jaxllm.load(tmp_path / "bad.gguf", tokenizer=False)


UNREADABLE = {"Q8_1", "Q8_K", "I8", "I16", "I32", "I64", "F64", "Q1_0"}  # types gguf.quants has no dequantization for


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # random scales: inf and NaN, in gguf's numpy as in ours
@pytest.mark.parametrize("qtype", list(GGMLQuantizationType) + [99], ids=lambda t: getattr(t, "name", str(t)))
def test_every_ggml_type_reads_as_gguf_reads_it_or_is_one_line(tmp_path, qtype):
    """A tensor of each GGML type (F32 ... the K-quants, IQ and TQ types, MXFP4) of random bytes reads
    as the gguf package dequantizes it (what transformers' GGUF loader computes with), NaNs where it
    has them; a type it cannot dequantize (Q8_1, F64, the integer types) or does not know (99) is
    one line naming it, before any tensor is read."""
    path = tmp_path / "t.gguf"
    tiny_llama(path, {"output.weight": (32, 256)})
    blob = path.read_bytes()
    block, size = GGML_QUANT_SIZES.get(qtype, (1, 4))
    raw = np.random.default_rng(int(qtype)).integers(0, 256, 32 * 256 // block * size, dtype=np.uint8)
    key = string("output.weight")
    at = blob.index(key) + len(key) + 4 + 16  # past n_dims and the two dims: its type id and data offset
    end = len(blob) + (-len(blob) % 32)  # its new bytes, after the file's, aligned
    spoiled = blob[:at] + struct.pack("<IQ", int(qtype), end - gguf.Header(path).data_start) + blob[at + 12 :]
    path.write_bytes(spoiled + bytes(end - len(blob)) + raw.tobytes())
    if getattr(qtype, "name", None) in UNREADABLE or qtype == 99:
        what = ("unknown GGML tensor type 99: a newer gguf package may read it" if qtype == 99
                else f"its GGML type {qtype.name} is not one jaxllm reads")
        refused(path, path.read_bytes(), rf"t\.gguf: tensor output\.weight: {what}")
        return
    tensors, _ = gguf.open_checkpoint(path)
    want = quants.dequantize(raw, qtype).reshape(32, 256).astype(np.float32)
    assert np.array_equal(tensors.get("lm_head.weight"), want, equal_nan=True)
