"""Fast start: the GGUF reader (our header parser and numpy dequantization, against the gguf
package's), the tokenizer cache, and the command lines' quiet imports."""

import os
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, quants
from gguf_files import write_random

from jaxllm import gguf, gguf_blocks, gguf_tokenizer

VECTORISED = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0"]


def _random_tensor_bytes(kind: str, rows: int, cols: int, rng) -> np.ndarray:
    """Bytes of a [rows, cols] tensor of GGML type `kind`: real quantized values for half the rows,
    random bytes (odd scales, infinities, NaNs) for the other half."""
    qtype = GGMLQuantizationType[kind]
    values = rng.standard_normal((rows // 2, cols)).astype(np.float32)
    real = (quants.quantize(values, qtype) if kind != "F32" else values).view(np.uint8).reshape(rows // 2, -1)
    noise = rng.integers(0, 256, real.shape, dtype=np.uint8)
    return np.concatenate([real, noise])


@pytest.mark.parametrize("kind", VECTORISED)
def test_dequantization_is_bit_exact_with_gguf(kind):
    rng = np.random.default_rng(0)
    raw = _random_tensor_bytes(kind, 64, 256, rng)
    with np.errstate(all="ignore"):  # random scales: infinities and NaNs
        want = quants.dequantize(raw, GGMLQuantizationType[kind]).reshape(-1)
        got = gguf_blocks.dequantize(raw.reshape(-1), GGMLQuantizationType[kind].value)
    assert got.dtype == want.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_other_types_go_through_gguf():
    raw = np.random.default_rng(1).integers(0, 256, (4, 210), dtype=np.uint8)  # four Q6_K blocks of 256 values
    with np.errstate(all="ignore"):
        want = quants.dequantize(raw, GGMLQuantizationType.Q6_K).reshape(-1)
        got = gguf_blocks.dequantize(raw.reshape(-1), GGMLQuantizationType.Q6_K.value)
    assert got.shape == (1024,) and np.array_equal(got.view(np.uint32), want.view(np.uint32))


def test_header_and_tensors_match_the_gguf_reader(tmp_path):
    """A file with every kind of metadata value and tensors of every vectorised type reads as
    gguf's own reader reads it."""
    path = tmp_path / "t.gguf"
    w = GGUFWriter(path, "llama")
    w.add_uint32("t.u32", 7)
    w.add_int32("t.i32", -3)
    w.add_float32("t.f32", 0.1)
    w.add_float64("t.f64", 0.1)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.strs", ["a", "", "ünï"])
    w.add_array("t.ints", [1, 2, 3])
    w.add_array("t.floats", [0.5, -1.25])
    rng = np.random.default_rng(2)
    for kind in VECTORISED:
        raw = _random_tensor_bytes(kind, 6, 64, rng)
        w.add_tensor(f"blk.0.{kind}.weight", raw, raw_dtype=GGMLQuantizationType[kind])  # shape from the bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    header, reader = gguf.Header(path), GGUFReader(path)
    assert {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")} == header.fields
    assert header.fields["t.bool"] is True and header.fields["t.strs"] == ["a", "", "ünï"]
    ours = gguf.GGUFCheckpoint(header, {})
    for t in reader.tensors:
        assert ours.shape(t.name) == (6, 64)
        with np.errstate(all="ignore"):
            want, got = quants.dequantize(t.data, t.tensor_type).reshape(6, 64), ours.get(t.name)
        assert np.array_equal(got.view(np.uint32), want.view(np.uint32)), t.name


@pytest.mark.parametrize("spoil", ["truncated", "not gguf", "empty"])
def test_bad_gguf_file_is_one_error(tmp_path, gguf_path, spoil):
    from jaxllm.errors import CheckpointError

    path = tmp_path / "bad.gguf"
    blob = {"truncated": gguf_path.read_bytes()[:500_000], "not gguf": b"GGML" + bytes(100), "empty": b""}[spoil]
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match="bad.gguf"):
        gguf.open_checkpoint(path)


def _tiny_gguf(path, heads=4, tokenizer=None, extra=None):
    """A one-layer Llama GGUF with random float32 weights; `tokenizer`: its tokenizer.ggml.* fields;
    `extra`: more metadata {key: int}."""
    w = GGUFWriter(str(path), "llama")
    for key, value in (("embedding_length", 16), ("feed_forward_length", 24), ("block_count", 1),
                       ("attention.head_count_kv", 2), ("context_length", 64)):
        w.add_uint32(f"llama.{key}", value)
    (w.add_array if isinstance(heads, list) else w.add_uint32)("llama.attention.head_count", heads)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_array("tokenizer.ggml.tokens", [f"t{i}" for i in range(32)])
    for key, value in (tokenizer or {}).items():
        (w.add_string if isinstance(value, str) else w.add_array)(f"tokenizer.ggml.{key}", value)
    for key, value in (extra or {}).items():
        w.add_uint32(key, value)
    write_random(w, {"token_embd.weight": (32, 16), "output_norm.weight": (16,), "output.weight": (32, 16),
                     "blk.0.attn_norm.weight": (16,), "blk.0.ffn_norm.weight": (16,), "blk.0.attn_q.weight": (16, 16),
                     "blk.0.attn_k.weight": (8, 16), "blk.0.attn_v.weight": (8, 16), "blk.0.attn_output.weight": (16, 16),
                     "blk.0.ffn_gate.weight": (24, 16), "blk.0.ffn_up.weight": (24, 16), "blk.0.ffn_down.weight": (16, 24)})
    return path


@pytest.mark.parametrize("fields, message", [
    (dict(tokenizer={"model": "bert"}), "tokenizer.ggml.model 'bert'"),
    (dict(tokenizer={"model": "llama"}), "^tiny.gguf: the file's 'llama' tokenizer has no tokenizer.ggml.scores array"),  # no scores
    (dict(tokenizer={"model": "gpt2"}, extra={"tokenizer.chat_template": 5}),
     "^tiny.gguf: GGUF tokenizer.chat_template is int, not text: the file is damaged"),
    (dict(heads=[4.5]), "^tiny.gguf: its metadata, read as config.json fields, is invalid: 'num_attention_heads' must be a positive "
                        "integer .*, got 4.5: the file is damaged or was written wrongly$"),  # [4]: one a layer, reads as 4
])
def test_odd_gguf_metadata_is_one_error(tmp_path, monkeypatch, fields, message):
    """A GGUF whose tokenizer metadata transformers cannot convert, or whose model metadata is
    invalid: one JaxllmError naming the file (not transformers' traceback, not a config.json)."""
    import jaxllm
    from jaxllm.errors import JaxllmError

    monkeypatch.setenv("JAXLLM_TOKENIZER_CACHE", str(tmp_path / "tokenizers"))
    path = _tiny_gguf(tmp_path / "tiny.gguf", **fields)
    with pytest.raises(JaxllmError, match=message) as info:
        jaxllm.load(path)
    assert "\n" not in str(info.value)


def test_tokenizer_is_cached_on_disk(tmp_path, monkeypatch, gguf_path):
    """The second load reads the cache (no conversion) and gives the same tokenizer."""
    monkeypatch.setenv("JAXLLM_TOKENIZER_CACHE", str(tmp_path))
    fresh = gguf_tokenizer.load_tokenizer(gguf_path)
    assert len(list(tmp_path.iterdir())) == 1

    def no_conversion(path):
        raise AssertionError("converted again")

    monkeypatch.setattr(gguf_tokenizer, "_convert_tokenizer", no_conversion)
    cached = gguf_tokenizer.load_tokenizer(gguf_path)
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo 🙂 <|im_end|> 12345\n\tok"}]
    texts = [tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) for tok in (fresh, cached)]
    ids = [tok(text, add_special_tokens=False)["input_ids"] for tok, text in zip((fresh, cached), texts)]
    assert texts[0] == texts[1] and ids[0] == ids[1] and fresh.decode(ids[0]) == cached.decode(ids[1])
    assert cached.all_special_tokens == fresh.all_special_tokens and cached("hi")["input_ids"] == fresh("hi")["input_ids"]


HIDE_TORCH = "import sys; sys.modules['torch'] = None; "  # transformers then prints its PyTorch notice


def test_cli_prints_no_pytorch_notice(tmp_path):
    """A command line loads the model (and so transformers) without its notice: the chat, given no
    turn, loads and quits."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), JAXLLM_TOKENIZER_CACHE=str(tmp_path / "tok"))
    for quieting in ("TRANSFORMERS_NO_ADVISORY_WARNINGS", "TRANSFORMERS_VERBOSITY"):  # set by CLIs run in-process before
        env.pop(quieting, None)
    bare = subprocess.run([sys.executable, "-c", HIDE_TORCH + "import transformers"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert "PyTorch was not found" in bare.stderr  # the notice this test is about, without runtime.quiet()
    cli = HIDE_TORCH + "import runpy; sys.argv = ['chat']; runpy.run_module('jaxllm.chat', run_name='__main__')"
    out = subprocess.run([sys.executable, "-c", cli], input="", capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout == "", out.stderr[-2000:]
    assert list((tmp_path / "tok").iterdir())  # the tokenizer was built: transformers was imported
    assert out.stderr == ""


CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo 🙂 <|im_end|> 12345\n\tok"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
     {"role": "user", "content": "  spaces   and\n\nnewlines  "}],
    [{"role": "user", "content": ""}],
]
TEXTS = ["What is the capital of France?", "", " leading space", "Ünïcödé — 東京 🍮 ok?", "<|im_start|>user\nhi<|im_end|>",
         "code:\n\tdef f(x):\n\t\treturn x ** 2  # comment", "a . b , c ! d ? e n't f 's"]


def test_fast_tokenizer_is_transformers_tokenizer(tmp_path, monkeypatch, gguf_path):
    """The tokenizer built without transformers (jaxllm.tokenizing) gives transformers' token ids,
    text and chat-template text, freshly converted and from the cache."""
    from jaxllm import tokenizing

    monkeypatch.setenv("JAXLLM_TOKENIZER_CACHE", str(tmp_path))
    fresh, cached = gguf_tokenizer.load_tokenizer(gguf_path), gguf_tokenizer.load_tokenizer(gguf_path)
    assert isinstance(cached, tokenizing.Tokenizer) and cached._transformers is None
    for ours in (fresh, cached):
        ref = ours.transformers
        assert type(ref).__module__.startswith("transformers")
        assert ours.chat_template == ref.chat_template and ours.all_special_ids == ref.all_special_ids
        for chat in CHATS:
            for prompt in (True, False):
                text = ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt)
                assert text == ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt)
                assert ours(text, add_special_tokens=False)["input_ids"] == ref(text, add_special_tokens=False)["input_ids"]
        for text in TEXTS:
            ids = ours(text)["input_ids"]
            assert ids == ref(text)["input_ids"] and ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False)
            for skip in (True, False):
                assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)
        assert ours.decode(9690) == ref.decode(9690)
        # what ours does not do itself, transformers' tokenizer does
        assert ours.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]
        assert ours.apply_chat_template(CHATS[0], add_generation_prompt=True)["input_ids"] == \
            ref.apply_chat_template(CHATS[0], add_generation_prompt=True)["input_ids"]


def test_cached_tokenizer_and_import_skip_transformers_and_ipython(tmp_path, gguf_path):
    """A start with the tokenizer cached imports neither transformers nor IPython (flax's
    notebook check), and both import as usual afterwards."""
    env = dict(os.environ, JAXLLM_TOKENIZER_CACHE=str(tmp_path))
    code = ("import sys; import jaxllm; from jaxllm import gguf_tokenizer; tok = gguf_tokenizer.load_tokenizer(sys.argv[1]); "
            "print(sorted(m for m in ('transformers', 'IPython') if m in sys.modules)); "
            "import IPython, flax.nnx; print(tok.decode(tok('Paris')['input_ids']))")
    runs = [subprocess.run([sys.executable, "-c", code, str(gguf_path)], capture_output=True, text=True, env=env,
                           timeout=300) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[-1].stderr[-2000:]
    assert runs[0].stdout.splitlines() == ["['transformers']", "Paris"]  # the first start builds the cache entry
    assert runs[1].stdout.splitlines() == ["[]", "Paris"]


def test_gpu_flags_follow_the_mesh(monkeypatch):
    """The command lines' XLA_FLAGS: cuBLAS matmuls always, the CUDA-graph flags of a decode step
    only on a mesh that splits over tp, never over the user's own; and XLA (CPU here) starts with
    them all (an XLA_FLAGS name it does not know would end every run at its start)."""
    from jaxllm import runtime

    assert runtime.gpu_flags(None) == runtime.gpu_flags("dp=2") == runtime.gpu_flags("tp=1") == runtime.GPU_XLA_FLAGS
    for spec in ("tp=2", "dp=2,tp=4", "fsdp=2, tp=2"):
        assert runtime.gpu_flags(spec) == runtime.GPU_XLA_FLAGS + " " + runtime.TP_GPU_XLA_FLAGS
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    runtime.set_gpu_flags("tp=2")
    assert os.environ["XLA_FLAGS"] == runtime.gpu_flags("tp=2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/mine")
    runtime.set_gpu_flags("tp=2")
    assert os.environ["XLA_FLAGS"] == "--xla_dump_to=/tmp/mine"
    env = dict(os.environ, XLA_FLAGS=runtime.gpu_flags("tp=2"))
    out = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; print(int(jnp.ones(3).sum()))"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "3", out.stderr[-2000:]


def test_small_prefill_calls_compile_without_ynnpack_on_cpu():
    """On a CPU, prefill calls of at most runner.SMALL_CALL positions compile without YNNPACK's
    fused dots (their first execution in a process builds a pipeline per dot: most of a short
    prompt's time to first token with a warm compile cache); larger calls keep them. Fails if
    this XLA stops knowing the option (runtime.small_call_options then runs without it)."""
    from jaxllm import runtime
    from jaxllm.serving import runner
    from jaxllm.serving.steps import steps as make_steps

    options = runtime.small_call_options()
    assert options == (("xla_cpu_experimental_ynn_fusion_type", ""),)
    steps = make_steps(object(), 8, "xla", None, ((1, 4), (1, 4)), False, (), options)
    large, small = steps.prefill, steps.prefill_small
    assert large is not small
    r = runner.Runner.__new__(runner.Runner)
    r._prefill_large, r._prefill_small = large, small
    assert r._prefill(1, runner.SMALL_CALL) is small and r._prefill(4, 64) is small
    assert r._prefill(1, 2 * runner.SMALL_CALL) is large and r._prefill(16, 64) is large


def test_token_bytes_rebuild_the_text(gguf_path):
    """tokenizing.byte_reader gives each token its own bytes, so a character split over tokens (an
    emoji, CJK) is rebuilt by joining them (OpenAI's logprobs `bytes`; decode gives U+FFFD per
    part): SmolLM2's byte-level BPE, and a byte-fallback tokenizer (Llama 2's kind) built here."""
    import jaxllm
    from jaxllm import tokenizing

    tok = jaxllm.load(gguf_path).tokenizer
    read = tokenizing.byte_reader(tok)
    for text in ("🍗 日本 hi", "The capital of France is Paris.", "naïve café"):
        ids = tok.encode(text, add_special_tokens=False)
        assert b"".join(read(i) for i in ids) == text.encode(), text
    assert read(tok.all_special_ids[0]) == tok.decode([tok.all_special_ids[0]]).encode()

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, **{f"<0x{b:02X}>": 1 + b for b in range(256)}, "\u2581": 257, "\u2581a": 258, "a": 259}
    backend = Tokenizer(models.BPE(vocab, [("\u2581", "a")], unk_token="<unk>", byte_fallback=True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=backend)
    read = tokenizing.byte_reader(hf)
    ids = hf.encode("a 日", add_special_tokens=False)
    assert b"".join(read(i) for i in ids) == " a 日".encode() and read(1 + 0xE6) == b"\xe6"
