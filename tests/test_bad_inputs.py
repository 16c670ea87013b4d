"""Bad inputs to the command lines and the library, one table: prompts, sampling values, token ids,
limits of positions and memory, meshes; and what can go wrong around them: `convert` stopped by
SIGTERM or Ctrl-C or writing onto a read-only or full disk, `inspect --scan` of a checkpoint with
NaN weights, stdout closed early. Each bad input is refused in one line (a JaxllmError from the
library; from a command line exit code 2, exactly one line on stderr, no traceback), before
anything is allocated, and leaves no file behind.

Command lines run in this process (`main(argv)`) where that behaves as the real command; only
signals, the full disk and a closed stdout need a process of their own (each imports JAX: ~5 s).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxllm
from jaxllm import chat, chat_template, checkpoint, convert, generate, inspect, loader, progress, research, safetensors_io
from jaxllm.engine import Engine, Request
from jaxllm.errors import GenerationError, JaxllmError, utf8_lines
from jaxllm.models import weights

# A Llama with the real tokenizer (SmolLM2's 49,152 ids) and a KV cache of 16 KB per token in
# float32 (2 layers x 4 kv heads x head_dim 256): 10**9 tokens need 16 TB, more than any host; 2**30
# positions, so that such a request meets the memory check, not the context one.
LLAMA = dict(architectures=["LlamaForCausalLM"], vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=4, head_dim=256, max_position_embeddings=2**30, rms_norm_eps=1e-5,
             tie_word_embeddings=True, eos_token_id=2)
# GPT-2: learned positions, a hard limit of 64.
GPT2 = dict(architectures=["GPT2LMHeadModel"], vocab_size=49152, n_embd=32, n_layer=1, n_head=2, n_positions=64,
            activation_function="gelu_new", eos_token_id=2, layer_norm_epsilon=1e-5)
TINY = dict(architectures=["LlamaForCausalLM"], vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5,
            tie_word_embeddings=False, eos_token_id=2)
# About 220 MB of float32 weights: a conversion takes a few seconds.
BIG = dict(architectures=["LlamaForCausalLM"], vocab_size=32000, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
           num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
           tie_word_embeddings=False, eos_token_id=2)
# About 8 MB: more than the 4 MB disk of the full-disk case.
MEDIUM = dict(BIG, vocab_size=4096, hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=4,
              num_key_value_heads=2)


def write_checkpoint(folder: Path, raw: dict, tokenizer: Path | None = None, spoil=None) -> Path:
    """A safetensors checkpoint of config `raw` with random float32 weights (jaxllm's writer, no
    torch), the tokenizer files of `tokenizer` copied in; `spoil(name, array)` may change tensors."""
    folder.mkdir(parents=True)
    p = loader.plan(raw)
    shapes = {path: leaf.shape for path, leaf in weights.flat_params(p.abstract).items()}
    layout = {n: (s, np.float32) for n, s in weights.hf_layout(p.arch.weight_map(p.config), shapes).items()}
    rng = np.random.default_rng(0)

    def arrays():
        for name, (shape, _) in layout.items():
            array = (rng.random(shape, np.float32) - 0.5) * 0.04
            yield name, spoil(name, array) if spoil else array

    safetensors_io.write_safetensors(folder, layout, arrays())
    (folder / "config.json").write_text(json.dumps(raw))
    for f in (tokenizer.iterdir() if tokenizer else ()):
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def with_nan(name, array):
    if name == "model.norm.weight":
        array[3] = np.nan
    if name == "lm_head.weight":
        array[0, :2] = np.inf
    return array


@pytest.fixture(scope="module")
def files(tmp_path_factory, gguf_path):
    """The checkpoints the cases use, written once."""
    root = tmp_path_factory.mktemp("bad_inputs")
    tok = root / "tokenizer"
    checkpoint.load_tokenizer(gguf_path).save_pretrained(str(tok))
    return dict(llama=write_checkpoint(root / "llama", LLAMA, tok), gpt2=write_checkpoint(root / "gpt2", GPT2, tok),
                tiny=write_checkpoint(root / "tiny", TINY), nan=write_checkpoint(root / "nan", TINY, spoil=with_nan),
                medium=write_checkpoint(root / "medium", MEDIUM), gguf_folder=_gguf_folder(root / "gguf_folder", gguf_path),
                root=root)


def _gguf_folder(folder: Path, gguf_path: Path) -> Path:
    """A folder holding one .gguf file and no config.json (a GGUF repository's download)."""
    folder.mkdir()
    (folder / "model.gguf").symlink_to(gguf_path)
    return folder


class Models:
    """What a case gets: the checkpoint folders, and the models loaded on first use."""

    def __init__(self, files):
        self.files, self._loaded = files, {}

    def __getattr__(self, name):  # "llama": without its tokenizer; "llama_tok": with it
        folder = name.removesuffix("_tok")
        if folder not in self.files:
            raise AttributeError(name)
        if name not in self._loaded:
            self._loaded[name] = jaxllm.load(self.files[folder], tokenizer=name.endswith("_tok"))
        return self._loaded[name]

    def path(self, name) -> str:
        return str(self.files[name])


@pytest.fixture(scope="module")
def models(files):
    return Models(files)


def foreign_named(m) -> str:
    """The Llama-with-tokenizer's folder copied to a name holding an undecodable byte (a path in another system's
    encoding, as Python reads it: a lone surrogate)."""
    folder = os.path.join(m.path("root"), os.fsdecode(b"model-\xff"))
    if not os.path.exists(folder):
        shutil.copytree(m.path("llama"), folder)
    return folder


def lib(call, match):
    """A library call that must raise a JaxllmError whose message matches."""
    return ("lib", call, match)


def cli(main, argv, match):
    """A command line run in this process: `argv` a list, or a function of the Models giving one."""
    return ("cli", (main, argv), match)


def sampled(**values):
    """model.generate with a dict of sampling values."""
    return lambda m: m.tiny.generate([1, 2, 3], dict(values))


def gen(argv):
    """python -m jaxllm.generate ARGV, on the Llama with a tokenizer."""
    return lambda m: ["--model", m.path("llama"), *argv]


def serve_main(argv):
    """python -m jaxllm.serve ARGV, its module imported when a case runs (it imports uvicorn and FastAPI)."""
    from jaxllm import serve

    return serve.main(argv)


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


CASES = {
    # -- sampling values, library (a dict is taken as SamplingParams fields) ----------------------
    "temperature-negative": lib(sampled(temperature=-0.5), "temperature=-0.5 is invalid: use 0 for greedy"),
    "temperature-nan": lib(sampled(temperature=float("nan")), "temperature=nan is invalid"),
    "temperature-string": lib(sampled(temperature="0.5"), "temperature='0.5' is invalid"),
    "top-p-negative": lib(sampled(top_p=-0.5), r"top_p=-0.5 is invalid: use a number in \[0, 1\]"),
    "top-p-above-one": lib(sampled(top_p=1.5), "top_p=1.5 is invalid"),
    "top-k-negative": lib(sampled(top_k=-1), "top_k=-1 is invalid"),
    "top-k-bool": lib(sampled(top_k=True), "top_k=True is invalid"),
    "top-k-beyond-int32": lib(sampled(top_k=2**31), "top_k=2147483648 is invalid: use 0 to disable or a whole number from 1 to 2147483647"),
    "load-dtype-not-a-dtype": lib(lambda m: jaxllm.load(m.path("tiny"), dtype=5), "dtype 5 is not a dtype; use one of float32"),
    "min-p-negative": lib(sampled(min_p=-0.1), r"min_p=-0.1 is invalid: use a number in \[0, 1\]"),
    "min-p-above-one": lib(sampled(min_p=1.5), "min_p=1.5 is invalid"),
    "repetition-penalty-zero": lib(sampled(repetition_penalty=0), "repetition_penalty=0 is invalid: use a positive number"),
    "repetition-penalty-negative": lib(sampled(repetition_penalty=-1.0), "repetition_penalty=-1.0 is invalid"),
    "presence-penalty-beyond-two": lib(sampled(presence_penalty=2.5), r"presence_penalty=2.5 is invalid: use a number in \[-2, 2\]"),
    "frequency-penalty-nan": lib(sampled(frequency_penalty=float("nan")), "frequency_penalty=nan is invalid"),
    "logit-bias-beyond-100": lib(sampled(logit_bias={5: 150}), r"logit_bias=\{5: 150\} is invalid: the bias of token 5 is 150: use a number in \[-100, 100\]"),
    "logit-bias-not-ids": lib(sampled(logit_bias={"the": -100}), "logit_bias=.* is invalid: token id 'the' is not a token id"),
    "logit-bias-token-twice": lib(sampled(logit_bias={"5": 1, "05": -100}), r"logit_bias=\[\[5, 1\], \[5, -100\]\] is invalid: it gives "
                                                                             "token 5 two biases: give each token one$"),
    "logit-bias-beyond-vocab": lib(sampled(logit_bias={10**6: -100}, max_new_tokens=4), "logit_bias=.* is invalid: token 1000000 is beyond the model's"),
    "stop-id-of-400-digits": lib(sampled(stop_token_ids=[10**400], max_new_tokens=4),  # was printed whole: a 1 KB line
                                 r"^stop_token_ids=\[10{70,}\.\.\. is invalid: token 10{70,}\.\.\. is beyond the model's"),
    # JSON keys str.isdigit takes and int() does not, keys no dict holds, numbers beyond a float: were a ValueError,
    # TypeError or OverflowError (the server's 500)
    "logit-bias-key-superscript": lib(sampled(logit_bias={"\u00b2": 1}), r"^logit_bias=\{'\u00b2': 1\} is invalid: token id '\u00b2' is not a token id"),
    "logit-bias-key-two-minus": lib(sampled(logit_bias={"--5": 1}), "^logit_bias=.* is invalid: token id '--5' is not a token id"),
    "logit-bias-key-5000-digits": lib(sampled(logit_bias={"9" * 5000: 1}), r"^logit_bias=\{'9{60,}\.\.\. is invalid: token id '9+\.\.\. is not"),
    "logit-bias-key-a-list": lib(sampled(logit_bias=[([5], 1)]), r"^logit_bias=\[\[\[5\], 1\]\] is invalid: token id \[5\] is not a token id"),
    "logit-bias-beyond-float": lib(sampled(logit_bias={5: 10**400}), r"^logit_bias=.* is invalid: the bias of token 5 is 10{70,}\.\.\.: use a number in"),
    "top-p-beyond-float": lib(sampled(top_p=10**400), r"^top_p=10{70,}\.\.\. is invalid: beyond float32"),
    "temperature-beyond-float": lib(sampled(temperature=-10**400), r"^temperature=-10{70,}\.\.\. is invalid: beyond float32"),
    "min-tokens-beyond-max-new-tokens": lib(sampled(min_tokens=9, max_new_tokens=4),
                                            r"min_tokens=9 is invalid: use a whole number from 0 to max_new_tokens \(4\)"),
    "stop-token-ids-negative": lib(sampled(stop_token_ids=[-2]), r"stop_token_ids=\[-2\] is invalid: use a list of token ids"),
    "stop-token-ids-beyond-vocab": lib(sampled(stop_token_ids=[10**6], max_new_tokens=4), r"stop_token_ids=\[1000000\] is invalid: token 1000000 is beyond"),
    "max-new-tokens-zero": lib(sampled(max_new_tokens=0), r"max_new_tokens=0 is invalid: use a whole number from 1 .*\(0 only with "
                                                          "prompt_logprobs"),
    "max-new-tokens-negative": lib(sampled(max_new_tokens=-3), "max_new_tokens=-3 is invalid"),
    "max-new-tokens-float": lib(sampled(max_new_tokens=8.0), "max_new_tokens=8.0 is invalid"),
    "max-new-tokens-bool": lib(sampled(max_new_tokens=True), "max_new_tokens=True is invalid"),
    "max-new-tokens-beyond-int32": lib(sampled(max_new_tokens=2**40), "max_new_tokens=1099511627776 is invalid: .* to 2147483647"),
    "stop-not-strings": lib(sampled(stop=[1, 2]), r"stop=\[1, 2\] is invalid: use a non-empty string"),
    "stop-a-number": lib(sampled(stop=5), "stop=5 is invalid"),
    # the tokenizers library cannot open it: said as a broken tokenizer ('fix or re-download its tokenizer files')
    "load-folder-named-in-another-encoding": lib(lambda m: jaxllm.load(foreign_named(m)),
                                                 r"^the folder .*model-\\xff has a name that is not UTF-8 text.*: rename the folder"),
    "cli-folder-named-in-another-encoding": cli(generate.main, lambda m: ["--model", foreign_named(m), "hi"],
                                                r"^error: the folder .*model-\\xff has a name that is not UTF-8 text"),
    "stop-empty-string": lib(sampled(stop=[""]), "stop=.* is invalid"),
    "stop-lone-surrogate": lib(sampled(stop=["ok", "a\udcff"]),  # a JSON "\udcff": accepted, and it never matched
                               r"stop='a\\udcff' is invalid: a lone surrogate .* give valid Unicode text"),
    "seed-float": lib(sampled(seed=1.5), r"seed=1.5 is invalid: use a whole number in \[0, 2\*\*32\)"),
    "seed-negative": lib(sampled(seed=-1), "seed=-1 is invalid"),
    "ignore-eos-string": lib(sampled(ignore_eos="yes"), "ignore_eos='yes' is invalid: use True or False"),
    "top-logprobs-beyond-openai": lib(sampled(top_logprobs=21), r"top_logprobs=21 is invalid: use a whole number from 0 to 20"),
    "top-logprobs-negative": lib(sampled(top_logprobs=-1), "top_logprobs=-1 is invalid"),
    "prompt-logprobs-string": lib(sampled(prompt_logprobs="yes"), "prompt_logprobs='yes' is invalid: use True or False"),
    "unknown-sampling-key": lib(sampled(temp=0.5), "unknown sampling setting 'temp': use max_new_tokens, temperature"),
    "max-tokens-key": lib(sampled(max_tokens=8), "unknown sampling setting 'max_tokens'.*did you mean 'max_new_tokens'"),
    "unknown-sampling-keyword": lib(lambda m: m.tiny.generate([1, 2, 3], temp=0.5),
                                    "unknown sampling setting 'temp': use max_new_tokens, temperature"),
    "sampling-keyword-invalid": lib(lambda m: m.tiny.generate([1, 2, 3], temperature=-1),
                                    "temperature=-1 is invalid: use 0 for greedy"),
    "params-not-a-dict": lib(lambda m: m.tiny.generate([1, 2], 0.5), "must be a jaxllm.SamplingParams or a dict of its fields, got float"),
    # -- token ids, library ------------------------------------------------------------------------
    "prompt-floats": lib(lambda m: m.tiny.generate([1.0, 2.0]), "prompt 0 must hold whole-number token ids, got float"),
    "prompt-negative": lib(lambda m: m.tiny.generate([1, -2]), r"prompt 0 must lie in \[0, 32\).*holds -2 at 1"),
    "prompt-beyond-vocab": lib(lambda m: m.tiny.generate([1, 32]), r"prompt 0 must lie in \[0, 32\).*holds 32 at 1"),
    "prompt-bools": lib(lambda m: m.tiny.generate([True, False]), "got bool values"),
    "prompt-empty": lib(lambda m: m.tiny.generate([[]]), "prompt 0 is empty: give at least one token id"),
    "prompt-lone-surrogate": lib(lambda m: m.llama_tok.generate("caf\udce9"),
                                 r"prompt 0 is not valid text \(character 4 stands for an undecodable byte\): give UTF-8 text"),
    "system-lone-surrogate": lib(lambda m: m.llama_tok.generate("hi", system="\udcff"), "the system message is not valid text"),
    "prompt-float-in-a-batch": lib(lambda m: m.tiny.generate([[1, 2], [1, 2.5]]), "prompt 1 must hold whole-number token ids"),
    "prompt-float-array": lib(lambda m: m.tiny.generate(np.array([1.5, 2.0])), "got float values"),
    "prompt-3d-array": lib(lambda m: m.tiny.generate(np.zeros((1, 1, 2), np.int64)), r"prompt 0 must be a string or a flat list .*\[1, 2\]"),
    "prompt-uint64-beyond-vocab": lib(lambda m: m.tiny.generate(np.array([2**63 + 5], np.uint64)), r"must lie in \[0, 32\)"),
    "logits-ragged": lib(lambda m: m.tiny.logits([[1, 2], [3]]), "equally long lists; got rows of different lengths"),
    "logits-3d": lib(lambda m: m.tiny.logits(np.zeros((1, 1, 2), np.int32)), r"token_ids must be \[batch, seq\]"),
    "logits-empty": lib(lambda m: m.tiny.logits([]), r"with seq >= 1"),
    "logits-text": lib(lambda m: m.tiny.logits("hello"), "got text: encode it with the model's tokenizer first"),
    "logits-none-inside": lib(lambda m: m.tiny.logits([[1, None]]), "got rows of different lengths or values that are not whole"),
    "logits-beyond-vocab": lib(lambda m: m.tiny.logits(np.array([[1, 2**40]])), r"must lie in \[0, 32\).*1099511627776 at \[0, 1\]"),
    # -- limits: the model's positions and the memory, before anything is allocated ---------------
    "huge-max-new-tokens": lib(lambda m: m.llama.generate([1, 2], {"max_new_tokens": 10**9}),
                               r"prompt of 2 tokens \+ max_new_tokens=1,000,000,000 needs a KV cache of 62,500,016 pages .*TB\) "
                               r"for 1 sequence, but the host has .* available: lower max_new_tokens"),
    "beyond-learned-positions": lib(lambda m: m.gpt2.generate([1] * 60, {"max_new_tokens": 10}),
                                    "prompt of 60 tokens \\+ max_new_tokens=10 exceeds the 64 positions this model has learned: "
                                    "lower max_new_tokens to at most 4"),
    "prompt-longer-than-positions": lib(lambda m: m.gpt2.generate([1] * 70, {"max_new_tokens": 1}),
                                        "exceeds the 64 positions .*: shorten the prompt to at most 63 tokens"),
    "prompt-and-new-tokens-beyond-positions": lib(lambda m: m.gpt2.generate([1] * 70, {"max_new_tokens": 10}),
                                                  "exceeds the 64 positions .*: shorten the prompt to at most 54 tokens"),
    "beyond-rotary-context": lib(lambda m: m.tiny.generate([1] * 60, {"max_new_tokens": 10}),
                                 "prompt of 60 tokens \\+ max_new_tokens=10 exceeds the 64 positions of this model's context: "
                                 "lower max_new_tokens to at most 4"),
    "engine-request-beyond-context": lib(lambda m: Engine(m.tiny, batch_size=1, max_len=128).add(
        Request([1] * 70, jaxllm.SamplingParams(max_new_tokens=1).resolved())), "shorten the prompt to at most 63 tokens"),
    "engine-prompt-at-max-len": lib(lambda m: Engine(m.tiny, batch_size=1, max_len=16).add(
        Request([1] * 16, jaxllm.SamplingParams(max_new_tokens=1).resolved())),
        "prompt of 16 tokens \\+ max_new_tokens=1 exceeds the engine's max_len 16: shorten the prompt to at most 15 tokens, or raise max_len"),
    "engine-prompt-near-max-len": lib(lambda m: Engine(m.tiny, batch_size=1, max_len=16).add(
        Request([1] * 15, jaxllm.SamplingParams(max_new_tokens=2).resolved())),
        "exceeds the engine's max_len 16: lower max_new_tokens to at most 1, or raise max_len"),
    "engine-pages-beyond-memory": lib(lambda m: Engine(m.tiny, batch_size=1, max_len=64, num_pages=10**15),
                                      r"an engine of 1,000,000,000,000,000 KV pages of 16 tokens .* needs .* but the host has"),
    "engine-max-len-beyond-memory": lib(lambda m: Engine(m.llama, batch_size=1, max_len=10**12),
                                        # max_len is capped at the model's positions (2**30 here), still far beyond memory
                                        r"1 x 1,073,741,824-token sequences at most; .* needs .* TB but the host has .* available: "
                                        "lower batch_size, page_size or max_len"),
    "engine-batch-beyond-pages": lib(lambda m: Engine(m.tiny, batch_size=10**7, max_len=64),
                                     r"Engine batch_size=10,000,000 is more than its [\d,]+ KV pages of 16 tokens: .* lower batch_size"),
    "engine-zero-pages": lib(lambda m: Engine(m.tiny, num_pages=0), "Engine num_pages=0 is invalid: use a whole number >= 1"),
    "engine-float-batch": lib(lambda m: Engine(m.tiny, batch_size=2.5), "Engine batch_size=2.5 is invalid"),
    "engine-memory-fraction": lib(lambda m: Engine(m.tiny, memory_fraction=1.5), r"memory_fraction=1.5 is invalid: use a number in \(0, 1\]"),
    "request-unresolved": lib(lambda m: Engine(m.tiny, batch_size=1, max_len=64).add(Request([1, 2], jaxllm.SamplingParams())),
                              r"must be resolved SamplingParams: pass jaxllm.SamplingParams\(...\).resolved"),
    # -- meshes (8 simulated devices here) ---------------------------------------------------------
    "mesh-zero": lib(lambda m: jaxllm.load(m.path("tiny"), mesh="tp=0"), "mesh axis 'tp' has size 0 in 'tp=0': sizes are whole numbers"),
    "mesh-not-dividing": lib(lambda m: jaxllm.load(m.path("tiny"), mesh="tp=3"),
                             "mesh 'tp=3' needs 3 devices but 8 are available: make the sizes multiply to 8"),
    "mesh-unknown-axis": lib(lambda m: jaxllm.load(m.path("tiny"), mesh="xx=2"), "mesh axis 'xx' in 'xx=2' is unknown: use dp, fsdp, tp"),
    "mesh-axis-twice": lib(lambda m: jaxllm.load(m.path("tiny"), mesh="tp=2,tp=2"), "appears twice in 'tp=2,tp=2': give each axis once"),
    "mesh-not-a-number": lib(lambda m: jaxllm.load(m.path("tiny"), mesh="tp=abc"), "mesh spec item 'tp=abc' of 'tp=abc' is malformed"),
    "mesh-larger-than-devices": lib(lambda m: jaxllm.load(m.path("tiny"), mesh="dp=4,tp=4"), "needs 16 devices but 8 are available"),
    "load-path-too-long": lib(lambda m: jaxllm.load("x" * 5000), r"^'x{60}\.\.\.' cannot be a file or folder name here \(File name "
                                                             r"too long\); pass a checkpoint folder"),
    "load-current-folder": lib(lambda m: jaxllm.load("."), r"^config\.json not found at /\S+/config\.json: "),  # was 'at config.json'
    "load-tokenizer-a-path": lib(lambda m: jaxllm.load(m.path("tiny"), tokenizer="org/tok"),  # vLLM's tokenizer=: was read as True
                                 r"^tokenizer must be True or False .*got str 'org/tok': to use another tokenizer, put its files"),
    "load-progress-not-callable": lib(lambda m: jaxllm.load(m.path("tiny"), progress=5), "^progress must be a function"),
    "stop-list-named-by-its-start": lib(sampled(stop=["x"] * 10**4, max_new_tokens=2),  # was printed whole: a 50 KB line
                                        r"^stop=\['x', 'x', [^\]]{50,80}\.\.\. needs the decoded text"),
    "convert-shard-bytes": lib(lambda m: convert.convert(m.path("tiny"), "out", to_hf=True, shard_bytes=0), "^shard_bytes=0 is invalid"),
    "mesh-not-a-string": lib(lambda m: jaxllm.load(m.path("tiny"), mesh=4), "mesh must be a spec string .* or a jax Mesh, got int"),
    # -- command lines: sampling flags (refused before the model loads), prompts, limits, meshes ---
    "cli-temperature": cli(generate.main, ["--temperature", "-1", "hi"], "^error: --temperature -1.0 is invalid: use 0 for greedy"),
    "cli-top-p": cli(generate.main, ["--top-p", "1.5", "hi"], "^error: --top-p 1.5 is invalid"),
    "cli-top-k": cli(generate.main, ["--top-k", "-1", "hi"], "^error: --top-k -1 is invalid"),
    "cli-min-p": cli(generate.main, ["--min-p", "2", "hi"], "^error: --min-p 2.0 is invalid"),
    "cli-repetition-penalty": cli(generate.main, ["--repetition-penalty", "0", "hi"], "^error: --repetition-penalty 0.0 is invalid"),
    "cli-frequency-penalty": cli(generate.main, ["--frequency-penalty", "-2.5", "hi"], "^error: --frequency-penalty -2.5 is invalid"),
    "cli-logit-bias-not-json": cli(generate.main, ["--logit-bias", "{5: -100}", "hi"], "--logit-bias.* is not JSON"),
    "cli-logit-bias-key-twice": cli(generate.main, ["--logit-bias", '{"5": 1, "5": -100}', "hi"],  # json keeps the last
                                    r"^error: argument --logit-bias: gives '5' twice \(1, then -100\): keep the one meant"),
    "cli-template-kwargs-key-twice": cli(generate.main, ["--chat-template-kwargs", '{"a": {"b": 1, "b": 2}}', "hi"],
                                         "argument --chat-template-kwargs: gives 'b' twice"),
    "cli-logit-bias-beyond-100": cli(generate.main, ["--logit-bias", '{"5": -101}', "hi"], "^error: --logit-bias .* is invalid: the bias of token 5"),
    "cli-min-tokens": cli(generate.main, ["--min-tokens", "9", "--max-new-tokens", "4", "hi"],
                          r"^error: --min-tokens 9 is invalid: use a whole number from 0 to --max-new-tokens \(4\)$"),
    "cli-speculative-tokens": cli(generate.main, ["--speculative-tokens", "-1", "hi"],
                                  "^error: --speculative-tokens -1 is invalid: use a whole number >= 0"),
    "cli-speculative-tokens-huge": cli(generate.main, ["--speculative-tokens", "100000", "hi"],
                                       "^error: --speculative-tokens 100000 is too large: .* use at most 64"),
    "cli-stop-token-id": cli(generate.main, ["--stop-token-id", "-3", "hi"], r"^error: --stop-token-id \[-3\] is invalid: use a list of token ids"),
    "cli-max-new-tokens-zero": cli(generate.main, ["--max-new-tokens", "0", "hi"], "^error: --max-new-tokens 0 is invalid"),
    "cli-max-new-tokens-beyond-int32": cli(generate.main, ["--max-new-tokens", str(2**31), "hi"], "--max-new-tokens 2147483648 is invalid"),
    "cli-seed": cli(generate.main, ["--seed", "-1", "hi"], r"^error: --seed -1 is invalid: .*, or leave it out for a random one$"),
    "cli-empty-stop": cli(generate.main, ["--stop", "", "hi"], "^error: argument --stop: a stop string cannot be empty"),
    "cli-huge-max-new-tokens": cli(generate.main, gen(["--max-new-tokens", "1000000000", "hi"]),
                                   r"--max-new-tokens 1,000,000,000 needs a KV cache .* but the host has .*: lower --max-new-tokens \(about"),
    "cli-empty-prompt": cli(generate.main, gen(["--no-chat", ""]), "the prompt is empty: give some text"),
    "cli-beyond-positions": cli(generate.main, lambda m: ["--model", m.path("gpt2"), "--no-chat", "--max-new-tokens", "60", "one two three four five six"],
                                "exceeds the 64 positions this model has learned: lower --max-new-tokens to at most"),
    "cli-prompt-too-long": cli(generate.main, lambda m: ["--model", m.path("gpt2"), "--no-chat", "word " * 100],
                               r"exceeds the 64 positions .*: shorten the prompt and lower --max-new-tokens \(together at most 64 tokens\)"),
    "cli-mesh-not-dividing": cli(generate.main, gen(["--mesh", "tp=3", "hi"]), "--mesh 'tp=3' needs 3 devices but 8"),
    "cli-revision-of-a-folder": cli(generate.main, gen(["--revision", "v2", "hi"]),
                                    "^error: --revision 'v2' picks a version of a hub repo, but .* is a local folder: drop --revision,"),
    "cli-revision-empty": cli(generate.main, gen(["--revision", "", "hi"]), "^error: --revision must be a branch"),
    "cli-group-size-alone": cli(generate.main, gen(["--group-size", "8", "hi"]),
                                "^error: --group-size goes with --quantize 'int4' or 'int8': pass --quantize too$"),
    "cli-group-size-not-dividing": cli(generate.main, gen(["--quantize", "int8", "--group-size", "7", "hi"]),
                                       "^error: --group-size 7 does not divide the 64 inputs of"),
    "cli-system-without-template": cli(generate.main, gen(["--no-chat", "--system", "Be brief.", "hi"]),
                                       "^error: a system message goes through the chat template: drop --no-chat, or --system$"),
    "cli-template-kwargs-not-json": cli(generate.main, gen(["--chat-template-kwargs", "{enable_thinking: false}", "hi"]),
                                        "argument --chat-template-kwargs: is not JSON .*: give an object"),
    "cli-template-kwargs-a-list": cli(generate.main, gen(["--chat-template-kwargs", "[1]", "hi"]),
                                      "argument --chat-template-kwargs: --chat-template-kwargs must map the chat template's"),
    "cli-template-kwargs-without-template": cli(generate.main, gen(["--no-chat", "--chat-template-kwargs", '{"a": 1}', "hi"]),
                                               "^error: --chat-template-kwargs goes through the chat template: drop --no-chat, or "
                                               "--chat-template-kwargs$"),
    "cli-prompt-undecodable": cli(generate.main, ["--model", "nowhere", "caf\udce9"], r"^error: the prompt is not UTF-8 text \(byte 4: 0xe9\)"),
    "cli-chat-temperature": cli(chat.main, ["--temperature", "-1"], "^error: --temperature -1.0 is invalid"),
    "cli-convert-group-size": cli(convert.main, lambda m: [m.path("tiny"), "out", "--group-size", "8"],
                                  "^error: --group-size goes with --quantize"),
    "cli-quantize-embeddings-alone": cli(generate.main, gen(["--quantize-embeddings", "hi"]),
                                         "^error: --quantize-embeddings goes with --quantize 'int8', 'int4' or 'gguf': "
                                         "pass --quantize too$"),
    "cli-mesh-malformed": cli(generate.main, gen(["--mesh", "tp:2", "hi"]), "--mesh spec item 'tp:2' of 'tp:2' is malformed"),
    "cli-convert-mesh": cli(convert.main, lambda m: [m.path("tiny"), "out", "--mesh", "fsdp=0"], "mesh axis 'fsdp' has size 0"),
    "cli-convert-read-only": cli(convert.main, lambda m: [m.path("tiny"), str(unwritable_folder() / "out")],
                                 "cannot write .*out: .*; choose an output folder you can write to"),
    "cli-inspect-batch": cli(inspect.main, lambda m: [m.path("tiny"), "--batch", "0"],
                             "^error: --batch 0 is invalid: give a positive whole number of sequences$"),
    "cli-inspect-context": cli(inspect.main, lambda m: [m.path("tiny"), "--context", "-5"], "^error: --context -5 is invalid"),
    "cli-inspect-list-and-path": cli(inspect.main, lambda m: ["--list", m.path("tiny")],
                                     "^error: --list prints the supported architectures and exits, so .*tiny would not be"),
    "cli-list-models-and-prompt": cli(generate.main, ["--list-models", "hi"],
                                      "^error: --list-models prints .* so a prompt argument would be ignored"),
    "cli-prompt-and-batch-file": cli(generate.main, ["--batch-file", "prompts.txt", "hi"],
                                     "^error: give the prompt as an argument or --batch-file, not both"),
    "cli-inspect-batch-not-a-number": cli(inspect.main, ["x", "--batch", "abc"],
                                          r"argument --batch: invalid int value: 'abc' \(see python -m jaxllm.inspect --help\)"),
    "cli-inspect-scan-missing": cli(inspect.main, ["nowhere", "--scan"], "no such file or folder: 'nowhere'"),
    "cli-convert-shard-size": cli(convert.main, lambda m: [m.path("tiny"), "out", "--to-hf", "--shard-size", "0"],
                                  "--shard-size 0.0 is invalid: give a positive, finite number of GB"),
    "cli-convert-shard-size-without-to-hf": cli(convert.main, lambda m: [m.path("tiny"), "out", "--shard-size", "1"],  # was ignored
                                                "^error: --shard-size goes with --to-hf .*: pass --to-hf too, or drop --shard-size$"),
    "cli-convert-shard-size-nan": cli(convert.main, lambda m: [m.path("tiny"), "out", "--to-hf", "--shard-size", "nan"],
                                      "--shard-size nan is invalid: give a positive, finite number of GB"),
    # an empty value (an unset shell variable) was read as the flag left out: the default model, dtype, source folder,
    # or no constraint at all
    "cli-model-empty": cli(generate.main, ["--model", "", "hi"], r"^error: --model must be a checkpoint folder, .* got str ''$"),
    "cli-dtype-empty": cli(generate.main, gen(["--dtype", "", "hi"]), "^error: --dtype '' is not supported; use one of float32"),
    "cli-regex-empty": cli(generate.main, gen(["--regex", "", "hi"]), "^error: --regex is invalid: give it as non-empty text$"),
    "cli-convert-source-empty": cli(convert.main, ["", "out"], r"^error: the checkpoint's path or hub id is empty: .*\(for the "
                                                               r"current folder: '\.'\)$"),
    "load-dtype-empty": lib(lambda m: jaxllm.load(m.path("tiny"), dtype=""), "^dtype '' is not supported"),
    # a path to no file was taken for the schema's text, and refused as invalid JSON ('expected value at line 1 column 33')
    "cli-json-schema-no-such-file": cli(generate.main, ["--json-schema", "./schema.json", "hi"],
                                        r"^error: argument --json-schema: no such file: \./schema\.json \(give an existing file"),
    "cli-grammar-a-folder": cli(generate.main, lambda m: ["--grammar", str(m.files["root"]), "hi"], "argument --grammar: .* is a folder"),
    "cli-convert-name-too-long": cli(convert.main, lambda m: [m.path("tiny"), "y" * 300],  # was an OSError's traceback
                                     r"^error: cannot write y+: a name in the path is longer than the file system takes .*; choose a "
                                     "shorter output name$"),
    "cli-convert-shard-size-not-a-number": cli(convert.main, ["a", "b", "--shard-size", "big"], "invalid float value: 'big'"),
    # undecodable bytes in argv (a terminal in another encoding): a chat's --system failed in the tokenizer (a TypeError's
    # traceback), a --stop could never match the decoded answer
    "cli-chat-system-undecodable": cli(chat.main, ["--system", "caf\udce9"], r"^error: argument --system: the value is not "
                                                                            r"UTF-8 text \(byte 4: 0xe9\): give UTF-8 text"),
    "cli-convert-output-empty": cli(convert.main, lambda m: [m.path("tiny"), ""],  # was read as '.': '. already exists'
                                    "^error: the output folder is empty: give the folder to write"),
    "cli-convert-output-undecodable": cli(convert.main, lambda m: [m.path("tiny"), "out\udcff"],  # a RuntimeError mid-write
                                          r"^error: the output path /\S+/out\\xff is not UTF-8 text \(byte \d+: 0xff\): name it in "
                                          "UTF-8 .*, or write --to-hf$"),
    "cli-convert-shard-size-below-a-byte": cli(convert.main, lambda m: [m.path("tiny"), "out", "--to-hf", "--shard-size", "1e-12"],
                                               r"^error: --shard-size 1e-12 is invalid: .* at least 1e-9 \(a byte\)$"),  # was shard_bytes=0
    "cli-inspect-list-and-scan": cli(inspect.main, ["--list", "--scan"],  # the list was printed, --scan dropped unsaid
                                     "^error: --list prints the supported architectures and exits, so --scan would read nothing"),
    "cli-choice-empty": cli(generate.main, ["--choice", "", "hi"], r"^error: --choice \(''\,\) is invalid: give a list of non-empty"),  # was '--choice=('
    "cli-template-kwargs-null": cli(generate.main, ["--chat-template-kwargs", "null", "hi"],  # was taken as the flag left out
                                    "^error: argument --chat-template-kwargs: is null: give a JSON object"),
    "cli-serve-batch-beyond-memory": cli(serve_main, lambda m: ["--model", m.path("tiny"), "--port", str(free_port()),
                                                                            "--batch-size", str(10**9)],  # was 'lower batch_size'
                                         r"^error: an engine of .*multiple of --batch-size\) needs .*: lower --batch-size, .*--max-len \("),
    "cli-serve-pages-beyond-memory": cli(serve_main, lambda m: ["--model", m.path("tiny"), "--port", str(free_port()),
                                                                "--num-pages", str(10**12)],  # the engine's num_pages, by its flag
                                         r"^error: an engine of 1,000,000,000,000 KV pages of 16 tokens .*: pass --num-pages <= "),
    "cli-stop-undecodable": cli(generate.main, ["--stop", "\udcff", "hi"], r"^error: argument --stop: the value is not UTF-8 "
                                                                        r"text \(byte 1: 0xff\)"),
}


def unwritable_folder() -> Path:
    """A folder where no file can be created. As root, whom chmod does not stop, /sys (sysfs
    refuses new entries: EPERM); otherwise a folder made read-only with chmod 0o555 (EACCES)."""
    if os.geteuid() == 0:
        return Path("/sys")
    folder = Path(os.environ["JAXLLM_TEST_READ_ONLY"])
    folder.mkdir(exist_ok=True)
    folder.chmod(0o555)
    return folder


@pytest.fixture(autouse=True)
def read_only_folder(tmp_path, monkeypatch):
    """Where unwritable_folder() makes its folder when not root (beside tmp_path, so tmp_path stays empty)."""
    folder = tmp_path.parent / f"{tmp_path.name}-read-only"
    monkeypatch.setenv("JAXLLM_TEST_READ_ONLY", str(folder))
    yield
    if folder.exists():
        folder.chmod(0o755)


def one_line(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("kind, case, match", list(CASES.values()), ids=list(CASES))
def test_refused_in_one_line(kind, case, match, models, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if kind == "lib":
        with pytest.raises(JaxllmError) as info:
            case(models)
        message = str(info.value)
        assert "\n" not in message
    else:
        main, argv = case
        # In this process the command must not switch JAX's persistent compilation cache on: every
        # later compile of the test session would be written to it (jaxlib 0.10.2 aborted once
        # serializing a CPU executable there).
        monkeypatch.setenv("JAXLLM_COMPILE_CACHE", "none")
        capsys.readouterr()
        try:
            code = main(argv(models) if callable(argv) else argv)
        except SystemExit as exit:  # argparse's usage errors
            code = exit.code
        captured = capsys.readouterr()
        assert code == 2, captured
        message = one_line(captured.err)
        assert message.startswith("error: ")
    assert re.search(match, message), message
    assert sorted(os.listdir(tmp_path)) == []  # nothing written
    assert list(Path("/sys").glob(".out.partial-*")) == []


def test_prompt_bytes_are_named_by_line():
    """Undecodable prompt bytes (the check generate's --batch-file and stdin use): the line and byte."""
    with pytest.raises(JaxllmError, match=r"^--batch-file p.txt line 2 is not UTF-8 text \(byte 4 of the line: 0xff\): save it as UTF-8$"):
        utf8_lines(b"hello\nwor\xffld\n", "--batch-file p.txt")
    assert utf8_lines("h\u00e9\n\nx".encode(), "stdin") == ["h\u00e9", "", "x"]


def test_sampling_params_from_a_dict(models):
    """A dict of SamplingParams fields is taken as SamplingParams; token ids come as lists, tuples
    or numpy integer arrays (1-D: one prompt, 2-D: a batch)."""
    params = {"temperature": 0.0, "max_new_tokens": 4, "ignore_eos": True}
    ids, engine = [1, 5, 9], Engine(models.tiny, batch_size=2, max_len=64)  # one engine: one compile
    want = models.tiny.generate(ids, jaxllm.SamplingParams(**params), engine=engine).token_ids
    assert len(want) == 4
    assert models.tiny.generate(ids, params, engine=engine).token_ids == want
    assert models.tiny.generate(tuple(ids), params, engine=engine).token_ids == want
    assert models.tiny.generate(np.array(ids, np.int64), params, engine=engine).token_ids == want
    assert [c.token_ids for c in models.tiny.generate(np.array([ids, ids], np.int32), params, engine=engine)] == [want, want]
    assert models.tiny.logits(np.array(ids, np.uint16)).shape == (3, 32)  # one sequence: no batch axis
    # numpy scalars (a value read from an array) are numbers: top_logprobs=np.int64(2) and memory_fraction=np.float32(0.5)
    # were refused as invalid
    numpy = {"temperature": np.float32(0.0), "max_new_tokens": np.int64(4), "ignore_eos": np.bool_(True), "top_logprobs": np.int64(2)}
    assert models.tiny.generate(ids, numpy, engine=engine).token_ids == want
    assert Engine(models.tiny, batch_size=np.int32(1), max_len=np.int64(64), memory_fraction=np.float32(0.5)).batch_size == 1
    assert Engine(models.tiny, batch_size=1, max_len=16, speculative_tokens=40).speculative == 15  # drafts fit a sequence
    for k in (65, 10**5, 10**20):  # 10**5 drafts compiled a verify step for minutes
        with pytest.raises(GenerationError, match=f"^speculative_tokens={k} is too large: .* use at most 64"):
            Engine(models.tiny, batch_size=1, max_len=64, speculative_tokens=k)


def test_inspect_scan_reports_non_finite_tensors(models, tmp_path, capsys):
    """--scan reads every tensor (one at a time) and names those holding NaN or Inf: exit code 1,
    also for the converted folder; without --scan only the headers are read (exit 0)."""
    assert inspect.main([models.path("nan")]) == 0
    assert "values" not in capsys.readouterr().out
    assert inspect.main([models.path("tiny"), "--scan"]) == 0
    assert "values        all finite in 12 tensors" in capsys.readouterr().out
    convert.convert(models.path("nan"), tmp_path / "orbax", progress=False)
    for path, head in ((models.path("nan"), "lm_head.weight"), (tmp_path / "orbax", "lm_head.kernel")):
        assert inspect.main([str(path), "--scan"]) == 1
        out, err = capsys.readouterr()
        assert err == ""
        assert "values        2 tensors hold NaN or Inf:" in out
        assert f"  {head}: 0 NaN, 2 Inf of 512 values" in out and "  model.norm.weight: 1 NaN, 0 Inf of 16 values" in out


# -- separate processes: signals, a full disk, a closed stdout --------------------------------------


def run_env():
    return dict(os.environ, JAX_PLATFORMS="cpu")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.name == "out")


# python -m jaxllm.convert, with Ctrl-C's usual handling even where this test runs ignoring SIGINT
# (a background job), which its children inherit.
CONVERT_WITH_CTRL_C = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from jaxllm.convert import main
    sys.exit(main(sys.argv[1:]))
""")


def _wait_for(predicate, proc, seconds=120):
    end = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, "timed out"
        time.sleep(0.002)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)], ids=["SIGTERM", "SIGINT"])
def test_convert_stopped_by_a_signal_leaves_nothing(files, tmp_path, sig, code):
    """SIGTERM or Ctrl-C while orbax writes the parameters (its writer threads go on after the
    main thread is interrupted; they are waited for before the hidden folder is removed): one
    line, exit 128 + the signal, and no folder left once the process has ended."""
    src = files["root"] / "big"
    if not src.exists():
        write_checkpoint(src, BIG)
    proc = subprocess.Popen([sys.executable, "-c", CONVERT_WITH_CTRL_C, str(src), str(tmp_path / "out")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=run_env())
    _wait_for(lambda: [q for p in tmp_path.glob(".out.partial-*") for q in p.glob("params*")], proc)  # orbax writing
    proc.send_signal(signal.SIGSTOP)  # frozen mid-write, so the signal lands there however loaded the machine is
    proc.send_signal(sig)
    proc.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert one_line(err) == "interrupted: nothing was written"
    assert leftovers(tmp_path) == []


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
    from jaxllm.convert import main
    sys.exit(main(sys.argv[1:]))
""")


@contextlib.contextmanager
def small_disk(tmp_path: Path):
    """(a folder on a 4 MB disk, how to run python there). Where a tmpfs can be mounted (root), a
    real one; otherwise files are limited to 1 MB (RLIMIT_FSIZE), which makes the writes fail the
    same way (EFBIG instead of ENOSPC)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                                                   capture_output=True).returncode == 0
    try:
        yield disk, ([sys.executable, "-m", "jaxllm.convert"] if mounted else [sys.executable, "-c", FULL_DISK])
    finally:
        if mounted:
            subprocess.run(["umount", str(disk)], check=True)


@pytest.mark.parametrize("to_hf", [False, True], ids=["orbax", "to-hf"])
def test_convert_onto_a_full_disk(files, tmp_path, to_hf):
    """The disk fills up while the parameters are written (orbax's writer threads, or the
    safetensors writer): one line naming the output and the fix, exit 2, nothing left there."""
    with small_disk(tmp_path) as (disk, python):
        cmd = python + [str(files["medium"]), str(disk / "out")] + (["--to-hf"] if to_hf else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=run_env(), timeout=300)
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert line.startswith(f"error: cannot write {disk / 'out'}: "), line
        assert ("the disk is full" in line or "exceed the size limit" in line) and "free some space there" in line
        time.sleep(0.5)
        assert leftovers(disk) == [] and list(disk.iterdir()) == []


def test_closed_stdout_ends_quietly(files):
    """`python -m jaxllm.generate ... | head -c 1`: the reader goes away; the command ends with
    141 (as if killed by SIGPIPE), without a traceback or a word."""
    proc = subprocess.Popen([sys.executable, "-m", "jaxllm.generate", "--model", str(files["llama"]), "--max-new-tokens", "8",
                             "--temperature", "0", "hi"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=run_env())
    proc.stdout.close()  # before it writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, err
    assert "Traceback" not in err and "Error" not in err and len(err.splitlines()) <= 1  # at most the stats line


def test_errno_names_in_write_errors(tmp_path):
    """The write errors convert reports, for each kind of refused write (OSError or tensorstore's
    message with an os_error_code)."""
    from jaxllm.orbax_writing import write_error

    full = write_error(tmp_path, ValueError("RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']"))
    assert str(full) == f"cannot write {tmp_path}: the disk is full (No space left on device, errno 28); free some space there " \
                        "or choose another output folder"
    assert "read-only" in str(write_error(tmp_path, OSError(errno.EROFS, "Read-only file system")))
    assert write_error(tmp_path, ValueError("something else")) is None


@pytest.mark.parametrize("source", ["stdin", "--batch-file"])
def test_cli_names_the_undecodable_prompt_line(source, tmp_path):
    """generate refuses a prompt that is not UTF-8 text before loading anything: one line naming
    where it came from, the line and the byte."""
    data = b"What is the capital of France?\nwor\xffld\n"
    cmd, stdin = [sys.executable, "-m", "jaxllm.generate"], data
    if source == "--batch-file":
        batch = tmp_path / "prompts.txt"
        batch.write_bytes(data)
        cmd, stdin = cmd + ["--batch-file", str(batch)], b""
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=run_env(), timeout=300)
    assert proc.returncode == 2
    message = one_line(proc.stderr.decode())
    assert re.search(r"line 2 is not UTF-8 text \(byte 4 of the line: 0xff\)", message), message
    assert message.startswith("error: " + ("stdin" if source == "stdin" else "--batch-file"))


@pytest.mark.parametrize("rope, expected", [
    (None, 4096),
    (dict(rope_type="linear", factor=2.0), 8192),
    (dict(rope_type="dynamic", factor=4.0), 16384),
    (dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=4096), 16384),  # Qwen2.5's YaRN recipe
    (dict(rope_type="yarn", factor=40.0, original_max_position_embeddings=4096), 163840),  # the length already scaled
    (dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=1024), 4096),
])
def test_context_length_reads_rope_scaling(rope, expected):
    """The positions a request may use, as vLLM reads them from a config: scaled by linear, dynamic
    and YaRN factors (YaRN's from its original length, never below max_position_embeddings)."""
    from jaxllm.models.config_reading import from_hf

    raw = dict(TINY, max_position_embeddings=163840 if rope and rope.get("factor") == 40.0 else 4096)
    if rope:
        raw["rope_scaling"] = rope
    assert from_hf(raw, "LlamaForCausalLM").context_length == expected


@pytest.mark.parametrize("template, match", [
    ("{{ messages }", r"the tokenizer's chat template is invalid \(line 1: .*\): fix the template \(chat_template in "
                        r"tokenizer_config.json, or a GGUF's tokenizer.chat_template\)"),
    ("{{ raise_exception('Conversation roles must alternate') }}",
     "the chat template refused the messages: Conversation roles must alternate"),
])
def test_broken_chat_template_is_one_error(models, monkeypatch, template, match):
    """A chat template that does not parse, or that refuses the messages: one line, no jinja2 traceback."""
    monkeypatch.setattr(models.llama_tok.tokenizer, "chat_template", template)
    with pytest.raises(JaxllmError, match=match):
        models.llama_tok.generate("hi", {"max_new_tokens": 1}, chat=True)


def test_chat_template_kwargs_reach_the_template(models, monkeypatch):
    """chat_template_kwargs are variables the template reads (Qwen3's enable_thinking): the prompt is
    the template's text with them, as transformers renders it."""
    from jaxllm import generation

    tok = models.llama_tok.tokenizer
    monkeypatch.setattr(tok, "chat_template", "{% if enable_thinking is defined and not enable_thinking %}/no_think {% endif %}"
                                              "{{ messages[-1]['content'] }}")
    turn = [{"role": "user", "content": "hi there"}]
    for variables, text in (({"enable_thinking": False}, "/no_think hi there"), ({"enable_thinking": True}, "hi there"), (None, "hi there")):
        want = list(tok(text, add_special_tokens=False)["input_ids"])
        assert generation.encode_messages(tok, turn, variables) == want
        assert generation.prepare(models.llama_tok, ["hi there"], {"max_new_tokens": 1}, chat=True,
                                  chat_template_kwargs=variables)[0] == [want]
    assert want != list(tok("/no_think hi there", add_special_tokens=False)["input_ids"])


LIBRARY_MISUSE = {
    "load-none": (lambda m: jaxllm.load(None), "path_or_id must be a checkpoint folder, a .gguf file or a hub id .* got NoneType"),
    "system-not-text": (lambda m: m.llama_tok.generate("hi", {"max_new_tokens": 1}, system=5),
                        "system must be the system message's text .* got int"),
    "system-without-template": (lambda m: m.llama_tok.generate("hi", {"max_new_tokens": 1}, chat=False, system="Be brief."),
                                r"a system message goes through the chat template: drop chat=False \(--no-chat\)"),
    "system-with-token-ids": (lambda m: m.llama_tok.generate([5, 6, 7], {"max_new_tokens": 1}, system="Be brief."),
                              "a system message goes through the chat template, which token-id prompts skip"),
    "template-kwargs-not-a-dict": (lambda m: m.llama_tok.generate("hi", {"max_new_tokens": 1}, chat_template_kwargs=["enable_thinking"]),
                                   "chat_template_kwargs must map the chat template's variable names to values"),
    "template-kwargs-own-argument": (lambda m: m.llama_tok.generate("hi", {"max_new_tokens": 1}, chat_template_kwargs={"tokenize": True}),
                                     "chat_template_kwargs 'tokenize' is not a template variable but how the template is applied"),
    "template-kwargs-without-template": (lambda m: m.llama_tok.generate("hi", {"max_new_tokens": 1}, chat=False,
                                                                        chat_template_kwargs={"enable_thinking": False}),
                                         r"chat_template_kwargs goes through the chat template: drop chat=False \(--no-chat\), or "
                                         "chat_template_kwargs$"),
    "template-kwargs-with-token-ids": (lambda m: m.llama_tok.generate([5, 6], {"max_new_tokens": 1}, chat_template_kwargs={"x": 1}),
                                       "chat_template_kwargs goes through the chat template, which token-id prompts skip: pass "
                                       "the prompt as text$"),
    "chat-message-as-prompt": (lambda m: m.tiny.generate([{"role": "user", "content": "hi"}], {"max_new_tokens": 1}),
                               r"prompt 0 holds a dict \(a chat message\?\): prompts are text or token ids"),
    "token-id-beyond-int64": (lambda m: m.tiny.generate([1, 2**70], {"max_new_tokens": 1}),
                              r"must lie in \[0, 32\), the vocabulary of this model; it holds 1180591620717411303424"),
    "estimate-memory-negative": (lambda m: jaxllm.estimate_memory(m.tiny.config, -1, 10, "float32"),
                                 "estimate_memory batch=-1 is invalid: use a whole number >= 1"),
    "one-empty-array-prompt": (lambda m: m.tiny.generate(np.array([], int), {"max_new_tokens": 1}),
                               "prompt 0 is empty: give at least one token id"),
    "engine-add-not-a-request": (lambda m: Engine(m.tiny, batch_size=1, max_len=64).add(None),  # was an AttributeError
                                 r"^Engine takes jaxllm.engine.Request\(prompt ids, resolved params\) objects, got NoneType$"),
    # iterating them raised "'NoneType' object is not iterable"; precompile(None) did nothing
    **{f"engine-{what}-{name}": (lambda m, what=what, given=given: _engine_call(m, what, given), match)
       for what in ("run", "precompile")
       for name, given, match in [("none", None, "takes a list of Requests, got NoneType: pass \\[Request\\("),
                                  ("one-request", "one", r"takes a list of Requests, got one Request: pass \[request\]$"),
                                  ("a-dict", {"prompt": [1]}, "takes a list of Requests, got dict")]},
    "research-jitted-unknown": (lambda m: research.jitted("logprobs"),  # was a KeyError
                                r"^jitted\('logprobs'\): there is no such function; name one of logits, token_logprobs"),
    "engine-of-a-path": (lambda m: Engine(m.path("tiny")), r"Engine\(model, ...\) takes a model from jaxllm.load, got str"),
    "stop-without-tokenizer": (lambda m: m.tiny.generate([1, 2], {"max_new_tokens": 4, "stop": ["x"]}),
                               r"stop=\['x'\] needs the decoded text, and this checkpoint has no tokenizer"),
    "chat-without-tokenizer": (lambda m: m.tiny.generate([1, 2], {"max_new_tokens": 1}, chat=True),
                               "this checkpoint has no tokenizer, and a chat needs its chat template: use chat=False"),
    "layer-not-a-number": (lambda m: m.tiny.attention_weights([[1, 2]], 0.5), "layer must be a whole number .* got 0.5"),
    "layer-beyond": (lambda m: m.tiny.attention_weights([[1, 2]], np.int64(3)), r"layer 3 does not exist: this model has layers 0..0"),
    "traced-method": (lambda m: jax.vmap(m.tiny.token_logprobs)(jnp.ones((2, 1, 3), jnp.int32)),
                      r"model.token_logprobs checks its token ids on the host, so it cannot be traced .* "
                      r"trace jaxllm.research.token_logprobs\(model.graphdef, model.params, tokens\) instead"),
    "research-beyond-learned-positions": (lambda m: research.logits(m.gpt2.graphdef, m.gpt2.params, jnp.zeros((1, 65), jnp.int32)),
                                          "tokens of 65 positions exceed the 64 positions this model has learned"),
    # a mask of other values than 0 and 1 (ids passed as the mask?) counted them as tokens
    "mask-values-not-0-or-1": (lambda m: m.tiny.logits([[1, 2]], attention_mask=[[1, 2]]),
                               r"^attention_mask must hold 1 \(or True\) at each token and 0 at padding; it holds 2 at \[0, 1\]: "
                               "pass the 0/1 mask"),
    "pure-mask-values-not-0-or-1": (lambda m: research.hidden_states(m.tiny.graphdef, m.tiny.params, jnp.ones((1, 2), jnp.int32),
                                                                     attention_mask=jnp.array([[-1, 1]])),
                                    r"^attention_mask must hold 1 \(or True\) .* it holds -1 at \[0, 0\]"),
    "prompt-a-0d-array": (lambda m: m.tiny.generate(np.array(3), {"max_new_tokens": 1}),  # was len()'s TypeError
                          r"^prompts must be a string, token ids or a list of those, got a 0-d array \(array\(3\)\): pass"),
    # a conversation that is not one, given to the template, was "the chat template failed ...: fix the template"
    **{f"messages-{name}": (lambda m, messages=messages, tools=tools: chat_template.encode_messages(m.llama_tok.tokenizer, messages, tools=tools), match)
       for name, messages, tools, match in [
           ("a-string", "hi", None, r'^messages must be a non-empty list of \{"role": ..., "content": ...\} dicts, got \'hi\'$'),
           ("empty", [], None, "^messages must be a non-empty list .* got \\[\\]$"),
           ("one-dict", {"role": "user", "content": "hi"}, None, r"^messages must be a non-empty list .* got \{'role'"),
           ("of-strings", ["hi"], None, r"^messages\[0\] must be a dict with a role and content, got 'hi'$"),
           ("without-role", [{"content": "hi"}], None, r'^messages\[0\] needs a "role", a string \("system", .*got None$'),
           ("role-a-number", [{"role": 5, "content": "hi"}], None, r'^messages\[0\] needs a "role", .*got 5$'),
           ("without-content", [{"role": "user"}], None, r'^messages\[0\] \(user\) has no content: give its text as "content"$'),
           ("content-a-number", [{"role": "user", "content": 5}], None,
            r"^messages\[0\]\.content must be text \(a string\) or a list of parts, got int 5$"),
           ("tools-of-strings", [{"role": "user", "content": "hi"}], ["f"], r"^tools must be a list of tool dicts .* got \['f'\]$")]},
    "messages-template-kwargs-bad": (lambda m: chat_template.encode_messages(m.llama_tok.tokenizer, [{"role": "user", "content": "hi"}], {"1a": 2}),
                                     r"^chat_template_kwargs must map the chat template's variable names"),  # not 'the template failed'
    "folder-of-gguf-files": (lambda m: jaxllm.load(m.files["gguf_folder"]),
                             r"has no config.json but holds 1 GGUF file \(model.gguf\): pass the file, e.g. .*model.gguf"),
    # a folder named like the file was "config.json not found at x.gguf/config.json: ... needs one"
    "folder-named-dot-gguf": (lambda m: jaxllm.load(_named_gguf(m.files["root"] / "empty.gguf")),
                              r"empty.gguf' is a folder, not a .gguf file: pass the .gguf file itself$"),
    "folder-named-dot-gguf-holding-one": (lambda m: jaxllm.load(_named_gguf(m.files["root"] / "x.GGUF", m.files["gguf_folder"])),
                                          r"x.GGUF' is a folder, not a .gguf file; it holds model.gguf: pass one of those$"),
}


def _named_gguf(folder: Path, like: Path | None = None) -> Path:
    """A folder named like a .gguf file: empty, or holding `like`'s files."""
    if not folder.exists():
        folder.mkdir()
        for f in (like.iterdir() if like else ()):
            (folder / f.name).symlink_to(f.resolve())
    return folder


def _engine_call(m, what: str, given):
    """Engine.run (iterated) or Engine.precompile of `given` ("one": a single Request, not in a list)."""
    engine = Engine(m.tiny, batch_size=1, max_len=64)
    given = Request([1], jaxllm.SamplingParams(max_new_tokens=1).resolved()) if given == "one" else given
    return list(engine.run(given)) if what == "run" else engine.precompile(given)


def test_engine_runs_serve_their_own_requests(models):
    """A run left unfinished by reset() ends without serving the next run's requests (it took their events), and a
    generator of requests is served (checking it emptied it: nothing was served)."""
    engine, params = Engine(models.tiny, batch_size=2, max_len=64), jaxllm.SamplingParams(max_new_tokens=3).resolved()
    first = engine.run([Request([1, 2], params, 0)])
    assert next(first).index == 0
    engine.reset()
    second = engine.run(Request([3, 4], params, i) for i in (7, 8))
    events = [next(second)]
    assert list(first) == []
    events += list(second)
    assert sorted({ev.index for ev in events}) == [7, 8] and sum(ev.finished for ev in events) == 2
    assert not engine.has_work()


@pytest.mark.parametrize("case", LIBRARY_MISUSE)
def test_library_misuse_is_one_error(models, case):
    call, match = LIBRARY_MISUSE[case]
    with pytest.raises(JaxllmError, match=match):
        call(models)


def test_stop_flag_reads_c_escapes():
    """`--stop '\\n'` reaches the shell's argv as a backslash and an n; it ends the answer at a line
    break (as llama.cpp's flags read it), and a doubled backslash stays one backslash."""
    from jaxllm import generate

    args = generate.parse_args(["--stop", r"\n", "--stop", r"a\\n\t", "--stop", "é", "hi"])
    assert args.stop == ["\n", "a\\n\t", "é"]
    assert generate.parse_args(["--revision", "v2", "hi"]).revision == "v2"  # load_model passes it to jaxllm.load


@pytest.mark.parametrize("prompt", ["", "   ", "\n\t"])
def test_cli_refuses_an_empty_argument_prompt(prompt, monkeypatch, capsys):
    """An empty or blank prompt argument is refused before anything loads, as blank input lines
    are: through the chat template it was answered as a user turn of nothing."""
    from jaxllm import generate

    monkeypatch.setattr(os, "environ", dict(os.environ, JAXLLM_COMPILE_CACHE="none"))
    monkeypatch.setattr(generate.progress, "load_model", lambda args: pytest.fail("loaded a model for an empty prompt"))
    assert generate.main([prompt]) == 2
    assert one_line(capsys.readouterr().err).startswith("error: the prompt is empty")


def test_cli_notes_sampling_flags_that_a_greedy_answer_ignores():
    """--top-k 5 (or --top-p, --min-p, --seed) without --temperature: the model's default is greedy,
    so the flag silently did nothing; one note on stderr says so and what to add."""
    from jaxllm import generate, progress

    def note(argv, gen=None):
        args = generate.parse_args(argv + ["hi"])
        return progress.greedy_note(args, progress.sampling_params(args), gen or {})

    message = note(["--top-k", "5", "--seed", "3"])
    assert message.startswith("note: --top-k, --seed do nothing: the answer is greedy (temperature 0)") and "\n" not in message
    assert "--temperature" in message.split(":")[-1]
    assert note(["--top-k", "5", "--temperature", "0.7"]) is None
    assert note(["--top-k", "5"], {"do_sample": True, "temperature": 0.6}) is None  # the model samples by default
    assert note(["--top-p", "0.9"], {"do_sample": True}) is None
    assert note(["--min-p", "0.1", "--temperature", "0"]) is not None
    assert note([]) is None


def test_cli_prompt_words_are_one_prompt_as_help_says(capsys):
    """`generate "Q1" "Q2"` is one prompt, "Q1 Q2": --help said "prompt(s)", promising two answers."""
    from jaxllm import generate

    assert generate.read_prompts(generate.parse_args(["What is", "2+2?"])) == ["What is 2+2?"]
    with pytest.raises(SystemExit):
        generate.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "prompt(s)" not in text and "joined" in text and "several prompts: --batch-file" in text


@pytest.mark.parametrize("argv, flag", [(["--batch-size", "0"], "--batch-size"), (["--batch-size", "x"], "--batch-size"),
                                        (["--max-len", "1"], "--max-len"), (["--max-queue", "-1"], "--max-queue"),
                                        # an unset shell variable: served under --model's path; listening on every interface
                                        (["--served-model-name", ""], "--served-model-name"), (["--host", " "], "--host"),
                                        (["--num-pages", "0"], "--num-pages"), (["--page-size", "0"], "--page-size"),
                                        *((["--gpu-memory-utilization", v], "--memory-fraction/--gpu-memory-utilization")
                                          for v in ("0", "1.5", "nan", "x"))])
def test_serve_sizes_refused_before_loading(argv, flag, capsys):
    """serve's sizes are checked as the flags are read, in their own names: --batch-size 0 loaded
    the whole model first, then failed as 'Engine batch_size=0'."""
    from jaxllm import serve

    with pytest.raises(SystemExit) as info:
        serve.parse_args(argv)
    assert info.value.code == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"error: argument {flag}: ") and "--help" in message, message


def test_cli_ctrl_c_mid_answer_keeps_the_text_on_its_own_line(monkeypatch, capsys):
    """Ctrl-C while an answer streams: exit 130, the text shown kept and ended by a line break, so
    that 'interrupted' (stderr) is not glued to the answer's last word on a terminal."""
    from types import SimpleNamespace

    from jaxllm import generate

    def answer(prompts, params, on_text, on_token, **kwargs):
        on_token(0, [1])
        on_text(0, "Once upon")
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "environ", dict(os.environ, JAXLLM_COMPILE_CACHE="none"))
    monkeypatch.setattr(generate.progress, "load_model", lambda args: SimpleNamespace(generate=answer, generation_config={}))
    assert generate.main(["Tell me a story"]) == 130
    captured = capsys.readouterr()
    assert captured.out == "Once upon\n" and captured.err == "interrupted\n"


def test_cli_messages_name_flags_not_library_arguments():
    """The library's messages name its arguments (`top_k=-1`, `lower max_new_tokens`, `prompt 0`,
    counted from 0); a command line's name the flags typed and the prompts as its answers number
    them, and leave paths and prose alone."""
    terms = progress.in_flag_terms
    assert terms("top_k=-1 is invalid: use 0 (it comes from generation_config.json: correct the file, or set top_k in "
                 "the request)") == "--top-k -1 is invalid: use 0 (it comes from generation_config.json: correct the file, or set --top-k)"
    assert terms("prompt 0 is empty") == "the prompt is empty" and terms("prompt 1 is empty", prompts=3) == "prompt 2 is empty"
    assert terms("load it without quantize= (or with quantize='int4')") == "load it without --quantize (or with --quantize 'int4')"
    assert terms("fix the template, or generate without it (--no-chat, chat=False)") == "fix the template, or generate without it (--no-chat)"
    kept = "cannot read /data/top_k/stop.json: the dtype of a mesh is a seed of temperature"
    assert terms(kept) == kept
