"""Bad checkpoint files and configs, one table: each case spoils a tiny checkpoint folder in one way
and is refused with a one-line JaxllmError naming the file, the field or tensor, and the fix (a
few also through the command line: exit code 2, one line on stderr, no traceback)."""

import json
import re
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import jaxllm
from jaxllm import checkpoint, loader, safetensors_io
from jaxllm.errors import CheckpointError, ConfigError, GenerationError, InputError
from jaxllm.models import weights

TINY = dict(architectures=["LlamaForCausalLM"], vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5, rope_theta=10000.0,
            tie_word_embeddings=False, eos_token_id=2)
ST = "model.safetensors"
DROP, FOLDER, MISSING = object(), object(), object()


def write_tiny(folder: Path, raw: dict = TINY) -> Path:
    """A checkpoint folder of config `raw` with random float32 weights (written by jaxllm, no torch)."""
    folder.mkdir(parents=True, exist_ok=True)
    p = loader.plan(raw)
    shapes = {path: leaf.shape for path, leaf in weights.flat_params(p.abstract).items()}
    layout = {name: (shape, np.float32) for name, shape in weights.hf_layout(p.arch.weight_map(p.config), shapes).items()}
    rng = np.random.default_rng(0)
    safetensors_io.write_safetensors(folder, layout, ((n, rng.standard_normal(s, np.float32)) for n, (s, _) in layout.items()))
    (folder / "config.json").write_text(json.dumps(raw))
    return folder


def split_safetensors(blob: bytes) -> tuple[dict, bytes]:
    """(header, data bytes) of a safetensors file's bytes."""
    (n,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + n]), blob[8 + n :]


def join_safetensors(header, data: bytes, length: int | None = None) -> bytes:
    """A safetensors file of `header` (a dict, or the header's bytes as they are) and `data`;
    `length` overrides the header length field."""
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(blob) if length is None else length) + blob + data


# ----------------------------------------------------------------------------------------------
# Ways to spoil the folder: each returns folder -> None


def config_with(**changes):
    """config.json with fields changed (DROP: removed)."""
    raw = {k: v for k, v in dict(TINY, **changes).items() if v is not DROP}
    return lambda folder: (folder / "config.json").write_text(json.dumps(raw))


def file(name: str, content):
    """`name` replaced: by bytes, text, a folder (FOLDER) or nothing (MISSING)."""

    def spoil(folder):
        path = folder / name
        if path.exists():
            path.unlink()
        if content is FOLDER:
            path.mkdir()
        elif content is not MISSING:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())

    return spoil


def tensors(edit):
    """model.safetensors rewritten: edit(header, data) returns the file's new bytes."""

    def spoil(folder):
        header, data = split_safetensors((folder / ST).read_bytes())
        (folder / ST).write_bytes(edit(header, data))

    return spoil


def entry(name: str, **changes):
    """One header entry changed (DROP: a key removed); the data bytes kept."""

    def edit(header, data):
        header[name] = {k: v for k, v in dict(header[name], **changes).items() if v is not DROP}
        return join_safetensors(header, data)

    return tensors(edit)


def shifted(name: str, by: int):
    """One tensor moved `by` bytes further into the data (and the file grown to match)."""

    def edit(header, data):
        header[name]["data_offsets"] = [o + by for o in header[name]["data_offsets"]]
        return join_safetensors(header, data + bytes(by))

    return tensors(edit)


def without(name: str):
    """One tensor removed (the others' bytes moved up to close the gap)."""

    def edit(header, data):
        start, stop = header.pop(name)["data_offsets"]
        for entry in header.values():
            if isinstance(entry, dict) and "data_offsets" in entry and entry["data_offsets"][0] >= stop:
                entry["data_offsets"] = [o - (stop - start) for o in entry["data_offsets"]]
        return join_safetensors(header, data[:start] + data[stop:])

    return tensors(edit)


def extra(name: str, shape=(4,)):
    """One float32 tensor of zeros appended."""

    def edit(header, data):
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [len(data), len(data) + 4 * int(np.prod(shape))]}
        return join_safetensors(header, data + bytes(4 * int(np.prod(shape))))

    return tensors(edit)


def renamed(rename):
    """Every tensor renamed by `rename` (the bytes kept)."""
    return tensors(lambda header, data: join_safetensors({rename(n) if n != "__metadata__" else n: e for n, e in header.items()}, data))


def index(text: str):
    """The weights as a shard, under model.safetensors.index.json holding `text` (without
    model.safetensors, which transformers would read instead of any index)."""

    def spoil(folder):
        (folder / ST).rename(folder / "model-00001-of-00002.safetensors")
        (folder / "model.safetensors.index.json").write_text(text)

    return spoil


def link(name: str, target: str | None = None):
    """`name` replaced by a symbolic link to `target` in the folder (None: to itself, a loop)."""

    def spoil(folder):
        path = folder / name
        if path.exists():
            path.unlink()
        path.symlink_to(folder / (target or name))

    return spoil


def beside_index(spoil):
    """The weights as an index's one shard (index() of a weight map naming it), then `spoil`."""

    def both(folder):
        header, _ = split_safetensors((folder / ST).read_bytes())
        weight_map = {tensor: "model-00001-of-00002.safetensors" for tensor in header if tensor != "__metadata__"}
        index(json.dumps({"weight_map": weight_map}))(folder)
        spoil(folder)

    return both


def big_header(folder):
    """A header length above the 100 MB limit, in a (sparse) file long enough to hold it."""
    with open(folder / ST, "r+b") as f:
        f.write(struct.pack("<Q", 150_000_000))
        f.truncate(200_000_000)


def outside(name: str):
    """The weights moved beside the folder, and an index naming them there (`name` relative to the
    folder, or "/..." for their absolute path)."""

    def spoil(folder):
        moved = folder.parent / "elsewhere.safetensors"
        (folder / ST).rename(moved)
        shard = str(moved) if name.startswith("/") else name
        header, _ = split_safetensors(moved.read_bytes())
        index = {"weight_map": {tensor: shard for tensor in header if tensor != "__metadata__"}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))

    return spoil


EMBED, NORM, LAST_LN = "model.embed_tokens.weight", "model.norm.weight", "model.layers.0.post_attention_layernorm.weight"
FIRST_LN = "model.layers.0.input_layernorm.weight"
NOT_READABLE = r"model\.safetensors is not a readable safetensors file \("

CASES = [
    # config.json: types, signs, zeros, ranges, cross-field rules
    ("eos-outside-vocab", config_with(eos_token_id=40), ConfigError, r"config\.json eos_token_id 40 lies outside the vocabulary"),
    ("string-for-int", config_with(hidden_size="16"), ConfigError, r"config\.json 'hidden_size' must be a positive integer .*got \"16\""),
    ("zero-heads", config_with(num_attention_heads=0), ConfigError, r"config\.json 'num_attention_heads' must be a positive integer"),
    ("hidden-not-divisible", config_with(hidden_size=18), ConfigError, "hidden_size=18 is not divisible by num_attention_heads=4: set"),
    ("zero-vocab", config_with(vocab_size=0), ConfigError, "'vocab_size' must be a positive integer"),
    ("negative-vocab", config_with(vocab_size=-32), ConfigError, "'vocab_size' must be a positive integer .*got -32"),
    ("zero-rope-theta", config_with(rope_theta=0), ConfigError, "'rope_theta' must be a positive number, got 0: correct"),
    ("negative-eps", config_with(rms_norm_eps=-1e-5), ConfigError, "'rms_norm_eps' must be a non-negative number"),
    ("string-for-bool", config_with(tie_word_embeddings="false"), ConfigError, "'tie_word_embeddings' must be a boolean"),
    ("list-for-scalar", config_with(num_hidden_layers=[1]), ConfigError, r"'num_hidden_layers' must be a positive integer <= 1024, got \[1\]"),
    ("float-for-int", config_with(max_position_embeddings=64.5), ConfigError, "'max_position_embeddings' must be a positive integer"),
    ("absurd-layers", config_with(num_hidden_layers=100000), ConfigError, "'num_hidden_layers' must be a positive integer <= 1024"),
    ("kv-heads-not-dividing", config_with(num_key_value_heads=3), ConfigError, "not divisible by num_key_value_heads=3"),
    ("missing-vocab", config_with(vocab_size=DROP), ConfigError, "config.json has no 'vocab_size': add it"),
    ("string-architectures", config_with(architectures="LlamaForCausalLM"), ConfigError, "'architectures' must be a list of strings"),
    ("unknown-architecture", config_with(architectures=["NopeForCausalLM"]), ConfigError, "'NopeForCausalLM' is not supported"),
    ("unknown-model-type", config_with(model_type="reformer"), ConfigError,
     r"config\.json model_type 'reformer' is not supported; supported: .*llama.*: use a checkpoint"),
    ("model-type-not-string", config_with(model_type=5), ConfigError, "'model_type' must be a string, got 5"),
    ("model-type-list", config_with(model_type=["llama"]), ConfigError, r"'model_type' must be a string, got \[\"llama\"\]"),
    ("no-model-type-nor-architectures", config_with(architectures=DROP), ConfigError,
     "config.json has neither 'model_type' nor 'architectures': add the model's model_type"),
    ("rope-not-object", config_with(rope_scaling="linear"), ConfigError, "'rope_scaling' must be a JSON object"),
    ("rope-negative-factor", config_with(rope_scaling={"rope_type": "linear", "factor": -2}), ConfigError,
     "'rope_scaling.factor' must be a positive number, got -2"),
    ("rope-per-layer-type-junk", config_with(rope_parameters={"full_attention": {}, "sliding_attention": "x"}), ConfigError,
     "'rope_parameters.sliding_attention' must be a JSON object"),
    ("rope-per-layer-type-entry-junk", config_with(rope_parameters={"full_attention": "x", "sliding_attention": {}}), ConfigError,
     "'rope_parameters.full_attention' must be a JSON object"),  # the full entry is no object: still read per layer type
    ("rope-theta-dropped", config_with(rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                                       rope_scaling={"rope_type": "linear", "factor": 2.0}),
     ConfigError, "rope_parameters' rope_theta 1e\\+06 would give way to 10000"),
    ("rope-incomplete", config_with(rope_scaling={"rope_type": "llama3", "factor": 8}), ConfigError, "needs 'low_freq_factor'"),
    ("string-eos", config_with(eos_token_id="2"), ConfigError, "'eos_token_id' must be a non-negative integer .* or a list of them"),
    ("nan-eps", file("config.json", json.dumps(dict(TINY, rms_norm_eps=float("nan")))), ConfigError,  # JSON's NaN literal
     "'rms_norm_eps' must be a non-negative number, got NaN"),
    ("null-expert-count", config_with(num_local_experts=None), ConfigError, "'num_local_experts' must be a non-negative integer"),
    ("gemma3-bidirectional", config_with(architectures=["Gemma3ForCausalLM"], use_bidirectional_attention=True), ConfigError,
     "use_bidirectional_attention=true .* is not supported"),
    ("layer-types-length", config_with(architectures=["Qwen2ForCausalLM"], layer_types=["full_attention"] * 2), ConfigError,
     "has 2 layer_types for 1 layers"),  # a family that reads layer_types (Llama's code ignores them)
    # Qwen2's use_sliding_window=false drops the window its sliding layers need (transformers crashes in forward)
    ("qwen2-sliding-layers-window-off", config_with(architectures=["Qwen2ForCausalLM"], layer_types=["sliding_attention"],
                                                    use_sliding_window=False, sliding_window=8), ConfigError,
     r"sliding_attention layers but use_sliding_window=false turns its sliding_window \(8\) off: set use_sliding_window "
     "to true, or make those layers full_attention"),
    # num_key_value_heads left out: the family's transformers default (Qwen2's 32), a value the file does not hold
    ("kv-heads-family-default", config_with(architectures=["Qwen2ForCausalLM"], num_key_value_heads=DROP), ConfigError,
     r"num_attention_heads=4 is not divisible by num_key_value_heads=32, the Qwen2ForCausalLM default transformers "
     "takes where config.json leaves it out: set num_key_value_heads in config.json"),
    # Phi3Config validates its rope type: default or longrope (su and yarn read as longrope)
    ("phi3-linear-rope", config_with(architectures=["Phi3ForCausalLM"], rope_scaling={"rope_type": "linear", "factor": 2.0}),
     ConfigError, r"config\.json rope type 'linear' is not one Phi3ForCausalLM takes: transformers' Phi3Config allows default "
     "or longrope"),
    ("neox-head-dim-beyond-heads", config_with(architectures=["GPTNeoXForCausalLM"], head_dim=64), ConfigError,
     r"config\.json head_dim=64 x partial rotary factor 0\.25 rotates 16 dims of GPT-NeoX's heads of 4 \(hidden_size / "
     r"num_attention_heads\): transformers cannot apply that rotary embedding; remove head_dim"),
    ("mistral-null-kv-heads", config_with(architectures=["MistralForCausalLM"], num_key_value_heads=None), ConfigError,
     "config.json 'num_key_value_heads' is null, which transformers refuses for MistralForCausalLM: give it a value, or leave"),
    ("ministral-no-head-dim", config_with(model_type="ministral"), ConfigError,
     r"config\.json has no 'head_dim': add it \(transformers' MinistralForCausalLM needs it"),
    # config.json as a file
    ("config-not-utf8", file("config.json", b'{"vocab_size": "\xff\xfe"}'), ConfigError, r"config\.json at .* is not UTF-8 text"),
    ("config-folder", file("config.json", FOLDER), ConfigError, r"config\.json at .* is a folder, not a file"),
    ("config-list", file("config.json", "[1, 2]"), ConfigError, r"config\.json at .* must hold a JSON object, not list"),
    ("config-bad-json", file("config.json", '{"vocab_size": 32,'), ConfigError, r"config\.json at .* is not valid JSON \(line 1"),
    ("config-too-deep", file("config.json", "[" * 100_000 + "]" * 100_000), ConfigError, "nests too deeply"),
    ("config-missing", file("config.json", MISSING), ConfigError, r"config\.json not found at"),
    # a key given twice: json keeps the last silently (here a model of 16 wide read as 64, refused only by its weights' shapes)
    ("config-key-twice", file("config.json", json.dumps(TINY)[:-1] + ', "hidden_size": 64}'), ConfigError,
     r"config\.json at .* gives 'hidden_size' twice \(16, then 64\): keep the one meant$"),
    # generation_config.json
    ("gen-string-temperature", file("generation_config.json", '{"do_sample": true, "temperature": "hot"}'), ConfigError,
     r"generation_config\.json 'temperature' must be a non-negative number, got \"hot\""),
    ("gen-negative-top-k", file("generation_config.json", '{"top_k": -1}'), ConfigError, "'top_k' must be a non-negative integer"),
    ("gen-string-do-sample", file("generation_config.json", '{"do_sample": "yes"}'), ConfigError, "'do_sample' must be a boolean"),
    ("gen-top-p-above-one", file("generation_config.json", '{"top_p": 1.5}'), ConfigError, "'top_p' must be a non-negative number <= 1"),
    ("gen-bad-eos", file("generation_config.json", '{"eos_token_id": [1, "x"]}'), ConfigError, "'eos_token_id' must be"),
    ("gen-not-object", file("generation_config.json", "[]"), ConfigError, r"generation_config\.json at .* must hold a JSON object"),
    ("gen-eos-outside-vocab", file("generation_config.json", '{"eos_token_id": [2, 32]}'), ConfigError,
     r"generation_config\.json eos_token_id 32 lies outside the vocabulary \(32 tokens\)"),
    # safetensors: the header
    ("st-two-bytes", file(ST, b"\x01\x02"), CheckpointError, NOT_READABLE + "2 bytes, fewer than the header's 8-byte length"),
    ("st-absurd-header-length", tensors(lambda h, d: join_safetensors(h, d, length=2**60)), CheckpointError,
     NOT_READABLE + f"header length {2**60} is more than the"),
    ("st-header-over-100MB", big_header, CheckpointError, NOT_READABLE + "header length 150000000 .* or the 100 MB limit"),
    ("st-header-not-json", tensors(lambda h, d: join_safetensors(b"{not json}", d)), CheckpointError, NOT_READABLE + "header: Expecting"),
    ("st-header-list", tensors(lambda h, d: join_safetensors(b"[1, 2]", d)), CheckpointError, NOT_READABLE + "header: the header is not a JSON"),
    ("st-header-not-utf8", tensors(lambda h, d: join_safetensors(b'{"\xff": 1}', d)), CheckpointError, NOT_READABLE + "header: 'utf-8' codec"),
    ("st-tensor-twice", tensors(lambda h, d: join_safetensors(json.dumps(h)[:-1].encode() + b", " + json.dumps(
        {NORM: dict(h[NORM], data_offsets=[0, 0])})[1:].encode(), d)), CheckpointError, NOT_READABLE + f"header: '{NORM}' twice"),
    ("st-bad-metadata", tensors(lambda h, d: join_safetensors(dict(h, __metadata__={"format": 1}), d)), CheckpointError,
     NOT_READABLE + "__metadata__ must map names to strings"),
    # safetensors: one entry
    ("st-no-dtype", entry(EMBED, dtype=DROP), CheckpointError, NOT_READABLE + f"tensor '{EMBED}': its entry needs 'dtype'"),
    ("st-unknown-dtype", entry(EMBED, dtype="X9"), CheckpointError, f"tensor '{EMBED}': dtype 'X9' is not one jaxllm reads"),
    ("st-negative-shape", entry(EMBED, shape=[-32, 16]), CheckpointError, r"shape \[-32, 16\] is not a list of non-negative integers"),
    ("st-string-shape", entry(EMBED, shape="32x16"), CheckpointError, "shape '32x16' is not a list"),
    ("st-reversed-offsets", entry(NORM, data_offsets=[64, 0]), CheckpointError, r"data_offsets \[64, 0\] are not \[start, end\]"),
    ("st-size-mismatch", entry(NORM, dtype="F16"), CheckpointError, r"span 64 bytes, but F16\[16\] takes 32"),
    # safetensors: the entries together
    ("st-overlap", tensors(lambda h, d: join_safetensors(
        {**h, LAST_LN: dict(h[LAST_LN], data_offsets=h[FIRST_LN]["data_offsets"])}, d)), CheckpointError, "overlaps the tensor before it"),
    ("st-gap", shifted(NORM, 8), CheckpointError, "leaves a gap after the tensor before it"),
    ("st-truncated", tensors(lambda h, d: join_safetensors(h, d[:-4])), CheckpointError, r"file holds \d+ \(truncated download\?\)"),
    ("st-trailing-bytes", tensors(lambda h, d: join_safetensors(h, d + bytes(16))), CheckpointError, "the tensors take"),
    ("st-folder", file(ST, FOLDER), CheckpointError, NOT_READABLE),
    # files that are not what they seem
    ("lfs-pointer", file(ST, "version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n"), CheckpointError,
     "is a Git LFS pointer .* not the weights: run 'git lfs pull'"),
    ("tensor-in-two-files", lambda folder: ((folder / ST).rename(folder / "weights.safetensors"),
                                            (folder / "weights_ema.safetensors").write_bytes((folder / "weights.safetensors").read_bytes())),
     CheckpointError, r"is in both weights\.safetensors and weights_ema\.safetensors .* neither a model\.safetensors\.index\.json "
     r"nor a model\.safetensors to say which is the model's: remove the file that is not"),
    ("quantized-checkpoint", config_with(quantization_config={"quant_method": "fp8", "weight_block_size": [128, 128]}),
     ConfigError, r"config\.json has a quantization_config \(quant_method 'fp8'\): jaxllm reads float"),
    # tensors against the model
    ("int-for-float", entry(NORM, dtype="I32"), CheckpointError,
     f"tensor {NORM} holds int32 values where a float weight belongs: save it as float32"),
    ("wrong-shape", entry(EMBED, shape=[16, 32]), CheckpointError,
     rf"/model does not match the 12-tensor model its config\.json describes \(1 problem\): {EMBED} has shape \[16, 32\], expected \[32, 16\]; check that "
     "config.json describes these weights"),
    # transformers gives an untied model without lm_head.weight a random head (a warning): refused, with the likely fix
    ("head-missing-untied", without("lm_head.weight"), CheckpointError,
     r"missing lm_head\.weight \(expected shape \[32, 16\]\); if the output head shares the token embeddings, set "
     r'"tie_word_embeddings": true in config\.json'),
    # transformers drops it with a warning; it is more often a config.json with too few layers: refused, saying so
    ("unexpected-layer", extra("model.layers.1.mlp.up_proj.weight"), CheckpointError,
     r"unexpected model\.layers\.1\.mlp\.up_proj\.weight; check that config\.json describes these weights \(its sizes, "
     "num_hidden_layers"),
    # a pre-quantized checkpoint whose config.json has no quantization_config (GPTQ's quantize_config.json beside it,
    # compressed-tensors' older compression_config, a bitsandbytes save): its tensors were said to be another model's
    *[(f"quantized-tensor-{name.rsplit('.', 1)[-1]}", extra(name), CheckpointError,
       rf"unexpected {re.escape(name)}; {re.escape(name)} is a pre-quantized checkpoint's tensor, which jaxllm does not read: "
       r"use the model's unquantized checkpoint")
      for name in ("model.layers.0.self_attn.q_proj.qweight", "model.layers.0.mlp.up_proj.weight_scale",
                   "model.layers.0.self_attn.o_proj.weight.absmax", "model.layers.0.mlp.down_proj.weight_packed")],
    # tensors under another prefix (a wrapper's text model saved whole, a training framework's names): transformers leaves
    # such a model random (a warning); the fix named the config's sizes
    *[(f"tensors-under-{prefix.strip('.')}", renamed(rename), CheckpointError,
       rf"names its tensors otherwise \({re.escape(rename(EMBED))} where the model reads {re.escape(EMBED)}\): save them under "
       "the names")
      for prefix, rename in (("language_model.", lambda n: "language_model." + n), ("model.model.", lambda n: "model." + n),
                             ("transformer.", lambda n: n.replace("model.", "transformer.", 1)),
                             ("model.language_model.", lambda n: n.replace("model.", "model.language_model.", 1)))],
    # no weights jaxllm reads: each says what to do
    ("pytorch-bin-only", lambda folder: (folder / ST).rename(folder / "pytorch_model.bin"), CheckpointError,
     r"it holds PyTorch weights \(pytorch_model\.bin\), which jaxllm does not read .*: save the model with safetensors"),
    ("original-pth-only", lambda folder: (folder / ST).rename(folder / "consolidated.00.pth"), CheckpointError,
     r"it holds consolidated\.00\.pth, a training framework's own format, not a Hugging Face checkpoint: use the model's "
     "Hugging Face release"),
    ("no-weights", file(ST, MISSING), CheckpointError, r"no \.safetensors files in .*: download the model's weights into it"),
    ("index-empty", index('{"weight_map": {}}'), CheckpointError,
     r"index\.json lists no tensors \(its weight_map is empty\): re-download the checkpoint's index"),
    ("index-bad-map", index('{"weight_map": {"a": 1}}'), CheckpointError,
     "has no 'weight_map' of tensor names to file names"),
    ("index-missing-shard", index('{"weight_map": {"a": "model-00002-of-00002.safetensors"}}'),
     CheckpointError, "lacks shard"),
    # a name the file system cannot hold (ENAMETOOLONG): an OSError's traceback; a NUL byte was printed raw
    ("index-shard-name-too-long", index(json.dumps({"weight_map": {EMBED: "a" * 300}})), CheckpointError,
     r"lacks shard\(s\) 'a{70,}\.\.\. named by its index: download them$"),
    ("index-shard-name-nul", index(json.dumps({"weight_map": {EMBED: "a\0b"}})), CheckpointError, r"lacks shard\(s\) 'a\\x00b' named"),
    # a link loop or a broken link where a file belongs was passed over as no file: the index (the folder's other
    # .safetensors files read instead), generation_config.json (its eos and sampling defaults dropped), model.safetensors
    # (a stale index's shards read instead), jaxllm.json (an "unfinished conversion")
    ("index-link-loop", beside_index(link("model.safetensors.index.json")), ConfigError,
     r"cannot read model\.safetensors\.index\.json at .* \(Too many levels of symbolic links\): replace the link with the file$"),
    ("gen-link-loop", link("generation_config.json"), ConfigError,
     r"cannot read generation_config\.json at .* \(Too many levels of symbolic links\): replace the link with the file$"),
    ("gen-broken-link", link("generation_config.json", "gone.json"), ConfigError,
     r"generation_config\.json at .* is a link to .*gone\.json, which does not exist: replace the link with the file$"),
    ("st-broken-link-beside-index", beside_index(link(ST, "gone.safetensors")), CheckpointError,
     NOT_READABLE + r"No such file or directory\)"),
    ("marker-link-loop", link("jaxllm.json"), ConfigError, r"cannot read jaxllm\.json at .* \(Too many levels of symbolic links\)"),
    ("index-outside-folder", outside("../elsewhere.safetensors"), CheckpointError,
     r"index\.json names shard '\.\./elsewhere\.safetensors', outside .*: an index names files in its own folder"),
    ("index-absolute-path", outside("/elsewhere.safetensors"), CheckpointError,
     r"index\.json names shard '/.*elsewhere\.safetensors', outside .*: an index names files in its own folder"),
]
CLI_CASES = ("string-for-int", "config-not-utf8", "st-absurd-header-length", "int-for-float")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return write_tiny(tmp_path_factory.mktemp("tiny") / "model")


def spoiled(pristine: Path, tmp_path: Path, spoil) -> Path:
    folder = tmp_path / "model"
    folder.mkdir()
    for f in pristine.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    spoil(folder)
    return folder


def test_the_pristine_folder_loads(pristine, tmp_path):
    assert jaxllm.load(pristine, tokenizer=False).config.num_layers == 1
    # as saved by Notepad or PowerShell ("UTF-8 with BOM"), the same key twice with one value: the same config
    folder = spoiled(pristine, tmp_path, file("config.json", "\ufeff" + json.dumps(TINY)[:-1] + ', "hidden_size": 16}'))
    assert jaxllm.load(folder, tokenizer=False).config.hidden_size == 16


@pytest.mark.parametrize("spoil, error, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_in_one_line(pristine, tmp_path, spoil, error, message):
    folder = spoiled(pristine, tmp_path, spoil)
    with pytest.raises(error, match=message) as info:
        jaxllm.load(folder, tokenizer=False)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("case", CLI_CASES)
def test_command_line_exits_2_with_one_line(pristine, tmp_path, case):
    spoil = dict((c[0], c[1]) for c in CASES)[case]
    folder = spoiled(pristine, tmp_path, spoil)
    out = subprocess.run([sys.executable, "-m", "jaxllm.generate", "--model", str(folder), "hi"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in out.stderr, out.stderr


def test_deep_model_builds_in_linear_time():
    """400 layers build their abstract model in seconds (it was 225 s: quadratic, and 100,000 layers
    hung); CPU seconds of this process, so the load of others does not count. A bound on a hang."""
    start = time.process_time()
    p = loader.plan(dict(TINY, num_hidden_layers=400))
    assert time.process_time() - start < 5.0
    assert p.config.num_layers == 400


LLAMA_TOKENIZER = {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


@pytest.mark.parametrize("tokenizer_config, message", [
    # transformers builds a LlamaTokenizer of its 3 special tokens from a tokenizer_config.json whose tokenizer.model is
    # missing, and it encodes any text to no ids
    (LLAMA_TOKENIZER, r"the tokenizer in .* holds only 3 tokens where the model has 32 \(its files: tokenizer_config.json\): its "
                      r"vocabulary file \(tokenizer.json or tokenizer.model\) is missing"),
    # transformers loads it, then fails encoding any text ('>' between int and str): a TypeError's traceback at generate
    (dict(LLAMA_TOKENIZER, model_max_length="2048"), r"the tokenizer in .* has a model_max_length of '2048', not a number "
                                                      r"\(transformers fails encoding any text with it\): correct model_max_length"),
], ids=["no-vocabulary", "model-max-length-text"])
def test_a_tokenizer_that_cannot_encode_is_refused(pristine, tmp_path, tokenizer_config, message):
    """A tokenizer transformers loads but that cannot encode text as the model reads it: refused by name, before the
    weights are read."""
    folder = spoiled(pristine, tmp_path, file("tokenizer_config.json", json.dumps(tokenizer_config)))
    with pytest.raises(CheckpointError, match=message) as info:
        jaxllm.load(folder)
    assert "\n" not in str(info.value)
    assert jaxllm.load(folder, tokenizer=False).tokenizer is None


def test_other_safetensors_files_beside_model_safetensors_are_not_read(pristine, tmp_path):
    """transformers reads model.safetensors alone where a folder has no index: an adapter (PEFT), an
    EMA copy or a consolidated file beside it is not the model; they were read too, and refused
    ('unexpected base_model.model...lora_A.weight', or the same tensor in two files)."""
    folder = spoiled(pristine, tmp_path, lambda folder: None)
    (folder / "model_ema.safetensors").write_bytes((folder / ST).read_bytes())
    lora = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    safetensors_io.write_safetensors(tmp_path, {lora: ((4, 16), np.float32)}, [(lora, np.zeros((4, 16), np.float32))])
    (tmp_path / ST).rename(folder / "adapter_model.safetensors")
    want = jaxllm.load(pristine, tokenizer=False).logits([[1, 2, 3]])
    np.testing.assert_array_equal(jaxllm.load(folder, tokenizer=False).logits([[1, 2, 3]]), want)


def test_model_safetensors_is_read_before_an_index_as_transformers_reads_them(pristine, tmp_path):
    """A folder (or hub snapshot) with model.safetensors and an index of other shards (left from an
    earlier save) is model.safetensors, as transformers picks it: the index's shards were read
    instead (other values), or refused when missing."""
    folder = spoiled(pristine, tmp_path, lambda folder: None)
    stale = {name: np.zeros(shape, np.float32) for name, shape in
             ((n, safetensors_io.SafetensorsFile(folder / ST).shape(n)) for n in safetensors_io.SafetensorsFile(folder / ST).names())}
    safetensors_io.write_safetensors(tmp_path, {n: (a.shape, np.float32) for n, a in stale.items()}, stale.items())
    (tmp_path / ST).rename(folder / "model-00001-of-00002.safetensors")
    weight_map = dict.fromkeys(stale, "model-00001-of-00002.safetensors") | {EMBED: "model-00002-of-00002.safetensors"}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    want = jaxllm.load(pristine, tokenizer=False).logits([[1, 2, 3]])
    np.testing.assert_array_equal(jaxllm.load(folder, tokenizer=False).logits([[1, 2, 3]]), want)
    assert checkpoint._hub_weights(folder) == [ST]  # what a hub download fetches: not the index's shards


def test_a_tied_checkpoint_keeping_only_the_head_loads_as_transformers_ties_it(pristine, tmp_path):
    """tie_word_embeddings with the shared tensor saved as lm_head.weight alone: transformers ties the
    embedding to it; it was refused as 'missing model.embed_tokens.weight'."""
    import torch
    import transformers

    folder = spoiled(pristine, tmp_path, without(EMBED))
    (folder / "config.json").write_text(json.dumps(dict(TINY, model_type="llama", tie_word_embeddings=True)))
    want = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)(torch.tensor([[1, 2, 3]])).logits
    got = jaxllm.load(folder, tokenizer=False).logits([[1, 2, 3]])
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_a_tensor_in_two_indexed_shards_is_read_from_the_one_its_index_names(pristine, tmp_path):
    """Two shards that both hold a tensor: the index says which is the model's (it was refused,
    the message claiming there was no index); where it names neither, refused in one line."""
    folder = spoiled(pristine, tmp_path, lambda folder: None)
    header, data = split_safetensors((folder / ST).read_bytes())
    other = np.frombuffer(data, np.float32) * 2  # every value of the second shard doubled
    (folder / ST).rename(folder / "a.safetensors")
    (folder / "b.safetensors").write_bytes(join_safetensors(header, other.tobytes()))
    names = [n for n in header if n != "__metadata__"]
    index = {"weight_map": {n: "b.safetensors" if n == NORM else "a.safetensors" for n in names}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    got = weights.flat_params(jaxllm.load(folder, tokenizer=False).params)
    want = weights.flat_params(jaxllm.load(pristine, tokenizer=False).params)
    for path, value in want.items():
        scale = 2 if path == ("model", "norm", "weight") else 1
        np.testing.assert_array_equal(np.asarray(got[path]), np.asarray(value) * scale, err_msg=str(path))
    index["weight_map"][EMBED] = "c.safetensors"
    (folder / "c.safetensors").write_bytes(join_safetensors({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                                                            bytes(4)))
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=rf"^tensor {EMBED} is in both a\.safetensors and b\.safetensors in .*, and its "
                       r"model\.safetensors\.index\.json names neither for it: [^\n]*$"):
        jaxllm.load(folder, tokenizer=False)


def _gguf(fields: list[tuple[str, str]], tensors: list[str]) -> bytes:
    """A GGUF v3 file of string metadata `fields` and float32 tensors of 4 values named `tensors`."""
    def string(text):
        return struct.pack("<Q", len(text.encode())) + text.encode()

    blob = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(fields))
    blob += b"".join(string(key) + struct.pack("<I", 8) + string(value) for key, value in fields)
    blob += b"".join(string(name) + struct.pack("<IQIQ", 1, 4, 0, 16 * i) for i, name in enumerate(tensors))
    return blob + bytes(-len(blob) % 32) + bytes(16 * len(tensors))


@pytest.mark.parametrize("fields, tensors, twice", [
    ([("general.architecture", "llama")], ["output_norm.weight", "output_norm.weight"], "tensor 'output_norm.weight'"),
    ([("general.architecture", "llama"), ("general.architecture", "gpt2")], [], "metadata key 'general.architecture'"),
])
def test_a_gguf_naming_a_tensor_or_key_twice_is_refused(tmp_path, fields, tensors, twice):
    """Two tensors (or metadata values) under one name: which one is the model's is unknown (the
    last was taken, silently; gguf's reader and llama.cpp refuse the file)."""
    path = tmp_path / "twice.gguf"
    path.write_bytes(_gguf(fields, tensors))
    with pytest.raises(CheckpointError, match=rf"^{path} is not a readable GGUF file \(ValueError: {twice} appears twice\)"
                                              r"[^\n]*$"):
        jaxllm.load(path, tokenizer=False)


TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"


def _word_tokenizer(folder: Path) -> None:
    """A tokenizer.json alone (no tokenizer_config.json): a word per id of the tiny model's 32."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{chr(ord("a") + i): 3 + i for i in range(26)}, "user": 29, "assistant": 30, ":": 31}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(folder / "tokenizer.json"))


@pytest.mark.parametrize("files, template", [
    ({}, None),  # tokenizer.json alone
    ({"tokenizer_config.json": json.dumps({"eos_token": "</s>"})}, None),  # a config without a chat template
    ({"chat_template.jinja": TEMPLATE}, TEMPLATE),  # the template as its own file (transformers 4.50 on)
    ({"tokenizer_config.json": json.dumps({"chat_template": "{{ 'x' }}"}), "chat_template.jinja": TEMPLATE}, TEMPLATE),  # the file first
    ({"tokenizer_config.json": json.dumps({"chat_template": [{"name": "default", "template": TEMPLATE}]})}, TEMPLATE),  # named ones
], ids=["tokenizer-json-only", "config-without-template", "jinja-file", "jinja-file-over-config", "named-templates"])
def test_tokenizer_folder_variants_load_with_the_template_transformers_picks(pristine, tmp_path, files, template):
    folder = spoiled(pristine, tmp_path, _word_tokenizer)
    for name, text in files.items():
        (folder / name).write_text(text)
    model = jaxllm.load(folder)
    if template is None:
        assert not model.tokenizer.chat_template
    else:  # rendered by the template meant, not another
        text = model.tokenizer.apply_chat_template([{"role": "user", "content": "a"}], tokenize=False, add_generation_prompt=True)
        assert text == "user: a assistant:"
    params = jaxllm.SamplingParams(max_new_tokens=2, temperature=0.0)
    assert len(model.generate("a b c", params).token_ids) == 2


def test_a_chat_template_file_that_does_not_parse_is_named_and_ids_need_no_tokenizer(pristine, tmp_path):
    """chat_template.jinja is where transformers reads the template first: the refusal named tokenizer_config.json alone.
    A folder without a tokenizer generates from token ids (the research API), and refuses text in one line."""
    folder = spoiled(pristine, tmp_path, _word_tokenizer)
    (folder / "chat_template.jinja").write_text("{% for %}")
    with pytest.raises(InputError, match=r"chat template is invalid \(line 1: .*\): fix the template \(chat_template in "
                       r"tokenizer_config\.json, or a GGUF's tokenizer\.chat_template\), or chat_template\.jinja where the "
                       r"folder has one, or generate without it \(--no-chat, chat=False\)$"):
        jaxllm.load(folder).generate("a b", jaxllm.SamplingParams(max_new_tokens=1))
    bare = jaxllm.load(pristine)
    assert bare.tokenizer is None
    assert len(bare.generate([1, 2, 3], jaxllm.SamplingParams(max_new_tokens=2, temperature=0.0)).token_ids) == 2
    with pytest.raises(GenerationError, match=r"^this checkpoint has no tokenizer: add its tokenizer files .* or pass prompts as "
                       r"lists of token ids[^\n]*$"):
        bare.generate("a b", jaxllm.SamplingParams(max_new_tokens=1))
