"""What the command lines share: tqdm progress bars (stderr, only on a terminal), the flags of a
model and its sampling (one parser for `python -m jaxllm.generate` and `python -m jaxllm.chat`),
loading the model with a bar, and the stats line of an answer."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import re
import sys
import time

import jax
from tqdm.auto import tqdm

from jaxllm import chat_template, runtime
from jaxllm.errors import DuplicateKey, JaxllmError, argv_text, unique_keys
from jaxllm.loader import QUANTIZE, LoadedModel, load
from jaxllm.models.attention import KV_DTYPES
from jaxllm.models.quant import DEFAULT_GROUP, INT8_GROUP
from jaxllm.sampling import DEFAULT_MAX_NEW_TOKENS, SamplingParams
from jaxllm.structured import Structured


class Bar:
    """Counts named steps (tensors read or written); `bar(name)` after each. `delay`: seconds before
    the bar first shows, so quick work prints nothing; `enabled` False: never shown.

    A loader that knows its bytes calls `expect_bytes(total)` first and then `bar(name, nbytes)`:
    the bar then counts bytes and shows GB and GB/s, the tensors counted beside them."""

    def __init__(self, total: int | None, what: str, unit: str = "tensor", delay: float = 0.0, enabled: bool = True):
        self.bar = tqdm(total=total, desc=what, unit=unit, file=sys.stderr, delay=delay,
                        disable=not (enabled and sys.stderr.isatty()))
        self.steps, self.total_steps, self.unit, self.by_bytes = 0, total, unit, False

    def expect_bytes(self, total: int) -> None:
        """Count bytes from now on, `total` of them (the steps keep their own count)."""
        self.by_bytes = True
        if not self.bar.disable:
            self.bar.unit, self.bar.unit_scale, self.bar.unit_divisor = "B", True, 1000
            self.bar.reset(total=total)

    def __call__(self, name: str, nbytes: int | None = None) -> None:
        self.steps += 1
        of = f"/{self.total_steps}" if self.total_steps else ""
        shown = f"{self.steps}{of} {self.unit}s, {name[-40:]}" if self.by_bytes else name[-40:]
        self.bar.set_postfix_str(shown, refresh=False)
        self.bar.update(nbytes or 0 if self.by_bytes else 1)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def weight_flags() -> argparse.ArgumentParser:
    """The flags that set the bytes a loaded model holds (an argparse parent): quantization and the
    KV cache dtype. Part of load_flags; `python -m jaxllm.inspect` takes them alone for its estimate."""
    return add_weight_flags(argparse.ArgumentParser(add_help=False))


def add_weight_flags(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Declare weight_flags on `p` (after the flags it already has, so help lists them in that order)."""
    p.add_argument("--quantize", choices=QUANTIZE, help="quantized weights: int8 or int4 (a scale per --group-size inputs, and for int4 an offset), "
                   "or gguf (a .gguf file's own Q8_0/Q4_0/Q4_1 blocks, the rest float)")
    p.add_argument("--group-size", type=int, help=f"--quantize: input values per scale (default: int8 {INT8_GROUP}, "
                                                  f"int4 {DEFAULT_GROUP})")
    p.add_argument("--quantize-embeddings", action="store_true",
                   help="with --quantize: the token embedding and output head in int8 too (default: float)")
    p.add_argument("--kv-dtype", choices=[k for k in KV_DTYPES if k is not None],
                   help="KV cache dtype: int8, float8_e4m3fn (fp8), or a float dtype (default: the model's)")
    return p


def add_revision(p: argparse.ArgumentParser, source: str = "--model") -> argparse.ArgumentParser:
    """Declare --revision on `p`: the version of `source` (the argument naming the checkpoint) when it is a hub id."""
    p.add_argument("--revision", help=f"{source} as a hub id: the branch, tag or commit hash to load (default: main)")
    return p


def load_flags() -> argparse.ArgumentParser:
    """The flags of every command that loads a model (an argparse parent; `load_model` reads
    them): model, dtype, mesh, the engine's speculative decoding, and weight_flags (quantization, KV cache dtype)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--model", help="checkpoint folder, .gguf file or hub id (default: SmolLM2-135M-Instruct)")
    add_revision(p)
    p.add_argument("--dtype", default=None, help="float32, bfloat16 or float16 (default: bfloat16 on accelerators, float32 on CPU)")
    p.add_argument("--mesh", help="device mesh: 'tp=4', 'dp=2,tp=4', 'fsdp=8', 'ep=2,tp=2' (experts over ep) or 'auto' (the most devices on tp that the model's heads allow, the rest on dp)")
    p.add_argument("--speculative-tokens", type=int, default=0, metavar="K",
                   help="speculative decoding by prompt lookup (vLLM's ngram method): draft up to K tokens from the sequence's "
                        "own earlier text and verify them in one step; the same tokens, faster where answers copy their "
                        "prompt (default: 0, off)")
    return add_weight_flags(p)


def model_flags() -> argparse.ArgumentParser:
    """The flags of every command that generates (an argparse parent): load_flags, sampling, stop
    strings, system message, compile cache."""
    p = argparse.ArgumentParser(add_help=False, parents=[load_flags()])
    p.add_argument("--max-new-tokens", type=int, help=f"most tokens an answer may take (default: the checkpoint's "
                                                          f"generation_config.json, else {DEFAULT_MAX_NEW_TOKENS})")
    p.add_argument("--temperature", type=float, help="0 is greedy; above 0 samples (default: generation_config.json's "
                                                     "when it samples, else 0)")
    p.add_argument("--top-p", type=float, help="when sampling: keep the likeliest tokens whose probabilities add up to this (1 disables)")
    p.add_argument("--top-k", type=int, help="when sampling: keep the k likeliest tokens (0 disables)")
    p.add_argument("--min-p", type=float, help="when sampling: drop tokens below this fraction of the top one's probability (0 disables)")
    p.add_argument("--repetition-penalty", type=float, help="above 1 discourages tokens already seen (1 disables)")
    p.add_argument("--presence-penalty", type=float, default=0.0,
                   help="OpenAI's presence penalty, in [-2, 2]: subtracted once from the logit of each token already generated (0 disables)")
    p.add_argument("--frequency-penalty", type=float, default=0.0,
                   help="OpenAI's frequency penalty, in [-2, 2]: subtracted from a token's logit per time it was generated (0 disables)")
    p.add_argument("--logit-bias", type=logit_bias, metavar="JSON", default={},
                   help='OpenAI\'s logit bias, a JSON object of token ids to numbers in [-100, 100] added to their logits: '
                        '\'{"50256": -100}\' bans token 50256')
    p.add_argument("--seed", type=int, help="sampling seed, for a reproducible answer (default: a random one)")
    p.add_argument("--stop", action="append", default=[], type=unescape,
                   help="stop string (repeatable; \\n, \\t, \\r and \\\\ as in C, so --stop '\\n' ends at a line break); not printed unless --include-stop-str-in-output")
    p.add_argument("--stop-token-id", action="append", default=[], type=int, metavar="ID",
                   help="a token id that ends the answer as EOS does (repeatable; vLLM's stop_token_ids)")
    p.add_argument("--min-tokens", type=int, metavar="N", help="new tokens before an EOS id, --stop-token-id or --stop may end the answer "
                                                  "(default: generation_config.json's min_new_tokens, else 0)")
    p.add_argument("--include-stop-str-in-output", action="store_true",
                   help="print the stop string (or the stop token's text) that ended the answer")
    p.add_argument("--skip-special-tokens", action=argparse.BooleanOptionalAction, default=True,
                   help="leave special tokens' text out of the answer (--no-skip-special-tokens prints it)")
    g = p.add_argument_group("structured output (constrained decoding; needs pip install \"jaxllm[structured]\"), one of")
    g.add_argument("--json-schema", type=file_or_text, metavar="FILE|JSON", help="the answer is JSON matching this schema")
    g.add_argument("--json-object", action="store_true", help="the answer is a JSON object")
    g.add_argument("--regex", help="the answer matches this regular expression")
    g.add_argument("--choice", action="append", metavar="TEXT", help="the answer is one of these (repeatable)")
    g.add_argument("--grammar", type=file_or_text, metavar="FILE|LARK", help="the answer follows this Lark grammar")
    p.add_argument("--system", type=argv_flag, help="system message for the chat template ('': an empty one, which leaves out a "
                                     "template's default system message)")
    p.add_argument("--chat-template-kwargs", type=template_kwargs, metavar="JSON",
                   help='variables the chat template reads, as a JSON object: \'{"enable_thinking": false}\' (Qwen3), '
                        '\'{"reasoning_effort": "low"}\' (gpt-oss)')
    return add_compile_cache(p)


def add_compile_cache(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--compile-cache, of every command that compiles. Given empty (an unset shell variable) it is refused, as the
    other flags are: it turned the cache off, silently. An empty (or blank) $JAXLLM_COMPILE_CACHE is the variable left unset."""
    p.add_argument("--compile-cache", type=compile_cache,
                   default=os.environ.get("JAXLLM_COMPILE_CACHE", "").strip() or runtime.DEFAULT_COMPILE_CACHE,
                   help="folder where compiled programs are kept for the next run, or 'none' "
                        "(default: $JAXLLM_COMPILE_CACHE, else %(default)s)")
    return p


def compile_cache(text: str) -> str:
    """--compile-cache's folder: not empty or blank ('none' turns the cache off)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is empty: give a folder, or 'none' to compile without the cache")
    return argv_flag(text)


# The library's names of what the command lines' flags set (SamplingParams' fields, jaxllm.load's
# arguments), which its messages use: a command line's error names the flag the user typed.
FLAGS = {"max_new_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
         "min_p": "--min-p", "repetition_penalty": "--repetition-penalty", "seed": "--seed",
         "presence_penalty": "--presence-penalty", "frequency_penalty": "--frequency-penalty", "logit_bias": "--logit-bias", "stop": "--stop",
         "stop_token_ids": "--stop-token-id", "min_tokens": "--min-tokens",
         "revision": "--revision", "quantize": "--quantize", "group_size": "--group-size", "kv_dtype": "--kv-dtype",
         "dtype": "--dtype", "mesh": "--mesh", "speculative_tokens": "--speculative-tokens", "quantize_embeddings": "--quantize-embeddings",
         "chat_template_kwargs": "--chat-template-kwargs", "path_or_id": "--model"}
_NAME = r"(?<![\w.'/-])({})(?![\w/-])"  # not part of a longer name, a flag or a path


# Where a library name is the subject or object of a message: `name=value` (a keyword argument),
# the message's first word, `drop name`, `pass name too`; names with an underscore anywhere (no
# English word has one).
@functools.cache
def _named(names: tuple[str, ...]) -> re.Pattern:
    return re.compile("|".join([_NAME.format("|".join(names)) + "(?==)", "^" + _NAME.format("|".join(names)),
                                r"(?:(?<=drop )|(?<=pass )|(?<=without ))" + _NAME.format("|".join(names)),
                                _NAME.format("|".join(n for n in names if "_" in n))]))


def in_flag_terms(message: str, prompts: int = 1, flags: dict | None = None) -> str:
    """A library message in the terms of the command line: `temperature=-1.0` as `--temperature
    -1.0`, `lower max_new_tokens` as `lower --max-new-tokens`, `chat=False` as `--no-chat`, "drop
    the system message" as "drop --system", None (unset) as leaving the flag out, and `prompt 0` as
    "the prompt" (one) or `prompt 1` (of `prompts`, counted from 1 as the answers are numbered)."""
    message = re.sub(r"chat=False \(--no-chat\)|\(--no-chat, chat=False\)|chat=False", lambda m: "(--no-chat)" if
                     m.group(0).startswith("(") else "--no-chat", message)
    flags = FLAGS | (flags or {})  # a command's own flags beside the shared ones (serve's --batch-size)
    message = _named(tuple(flags)).sub(lambda m: flags[next(g for g in m.groups() if g)], message)
    message = re.sub(r"\bstructured (json_schema|json_object|regex|choice|grammar)\b", lambda m: "--" + m.group(1).replace("_", "-"),
                     message)  # 'structured regex is invalid' as '--regex is invalid'; before the '=' go ('--choice=')
    message = re.sub(r"(--[a-z-]+)=(?=[\s)])", r"\1", message)  # `without quantize=`
    message = re.sub(r"(--[a-z-]+)=", r"\1 ", message)
    message = re.sub(r"(?<=drop )the system message\b|(?<=, or )the system message\b", "--system", message)
    message = message.replace(", or None for a random one", ", or leave it out for a random one")
    message = message.replace(" in the request)", ")")
    return re.sub(r"\bprompt (\d+)\b", lambda m: "the prompt" if prompts == 1 else f"prompt {int(m.group(1)) + 1}", message)


@contextlib.contextmanager
def flag_terms(prompts: int = 1, flags: dict | None = None):
    """Errors of the library raised inside, in the terms of the command line (`in_flag_terms`)."""
    try:
        yield
    except JaxllmError as err:
        err.args = (in_flag_terms(str(err), prompts, flags),)
        raise


def start(args) -> None:
    """Process settings from the flags, first thing (before transformers is imported and the
    backend starts): quiet imports, GPU flags, the compile cache."""
    runtime.quiet()
    runtime.set_gpu_flags(getattr(args, "mesh", None))
    runtime.use_compile_cache(args.compile_cache)


def argv_flag(text: str) -> str:
    """A flag's text, refused as the flag is read when it is not UTF-8 (errors.argv_text): a --system
    of undecodable bytes failed inside the tokenizer (a TypeError's traceback)."""
    try:
        return argv_text(text, "the value")
    except JaxllmError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}


def unescape(text: str) -> str:
    """A --stop value with \\n, \\t, \\r and \\\\ read as the characters they name (a shell passes
    them as two characters; llama.cpp's --reverse-prompt reads them so too); other text as given.
    An empty one is refused as the flag is read: it would end every answer before its first word."""
    argv_flag(text)  # undecodable bytes could never match the decoded answer
    if not text:
        raise argparse.ArgumentTypeError("a stop string cannot be empty: give the text that ends an answer, e.g. --stop '\\n'")
    return re.sub(r"\\([ntr\\])", lambda m: _ESCAPES[m.group(1)], text)


def template_kwargs(text: str) -> dict:
    """A --chat-template-kwargs value: a JSON object of the chat template's variables, checked as the
    flag is read (chat_template.check_template_kwargs)."""
    value = _json(text, '{"enable_thinking": false}')
    if value is None:  # 'null' was taken as the flag left out
        raise argparse.ArgumentTypeError("is null: give a JSON object, e.g. '{\"enable_thinking\": false}', or leave the flag out")
    try:
        return chat_template.check_template_kwargs(value)
    except JaxllmError as err:
        raise argparse.ArgumentTypeError(in_flag_terms(str(err))) from None


def logit_bias(text: str) -> dict:
    """A --logit-bias value: a JSON object of token ids to biases (checked with the other sampling
    values, sampling_params)."""
    value = _json(text, '{"50256": -100}')
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object of token ids to biases, e.g. '{{\"50256\": -100}}', got {text[:80]}")
    return value


def _json(text: str, example: str):
    """A flag's JSON value, or its one-line refusal showing `example` (an object)."""
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except DuplicateKey as err:  # '{"5": 1, "5": -100}': json keeps the last silently
        raise argparse.ArgumentTypeError(f"gives {err}: keep the one meant") from None
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"is not JSON ({err}): give an object, e.g. '{example}'") from None


def sampling_params(args) -> SamplingParams:
    """SamplingParams of the flags, every value checked before anything is loaded."""
    params = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
        min_p=args.min_p, repetition_penalty=args.repetition_penalty, seed=args.seed, stop=tuple(args.stop),
        presence_penalty=args.presence_penalty, frequency_penalty=args.frequency_penalty, logit_bias=args.logit_bias,
        min_tokens=args.min_tokens, stop_token_ids=tuple(args.stop_token_id), include_stop_str_in_output=args.include_stop_str_in_output,
        skip_special_tokens=args.skip_special_tokens, structured=structured_of(args),
    )
    params.resolved()
    return params


def structured_of(args) -> Structured | None:
    """The structured-output flags as a Structured (None: none given); two of them are refused."""
    given = {name: value for name, value in (("json_schema", getattr(args, "json_schema", None)),
                                              ("json_object", getattr(args, "json_object", False)),
                                              ("regex", getattr(args, "regex", None)), ("choice", getattr(args, "choice", None)),
                                              ("grammar", getattr(args, "grammar", None)))
             if value is not None and value is not False}  # given empty ('' from an unset variable): refused, not dropped
    if len(given) > 1:
        raise JaxllmError(f"{', '.join('--' + n.replace('_', '-') for n in given)} each constrain the answer: give one of them")
    return Structured(**given) if given else None


_PATH_LIKE = re.compile(r"^(~|\.{0,2}/)\S*$|^\S+\.(json|lark|gbnf|txt)$", re.IGNORECASE)  # a path, not schema or grammar text


def file_or_text(value: str) -> str:
    """A --json-schema or --grammar value: the text of the file it names, else the value itself; a
    folder, or what reads as a path to no file ('./schema.json', '/tmp/x.lark'), refused by name
    (it was taken for the schema's or grammar's text, and refused as invalid JSON or Lark)."""
    if value and os.path.isdir(value):
        raise argparse.ArgumentTypeError(f"{value} is a folder: give a file, or the schema or grammar itself")
    if value and not os.path.isfile(value) and _PATH_LIKE.match(value.strip()):
        raise argparse.ArgumentTypeError(f"no such file: {value} (give an existing file, or the schema or grammar itself)")
    if value and os.path.isfile(value):
        try:
            with open(value, encoding="utf-8") as f:
                return f.read()
        except (OSError, UnicodeDecodeError) as err:
            raise argparse.ArgumentTypeError(f"cannot read {value}: {err}") from None
    return value


def greedy_note(args, params: SamplingParams, generation_config: dict | None) -> str | None:
    """A one-line note naming the sampling flags given that a greedy answer (temperature 0: the
    default unless generation_config.json samples) ignores, or None."""
    if params.resolved(generation_config).temperature > 0:
        return None
    ignored = [flag for flag, name in (("--top-k", "top_k"), ("--top-p", "top_p"), ("--min-p", "min_p"), ("--seed", "seed"))
               if getattr(args, name, None) is not None]
    if not ignored:
        return None
    return (f"note: {', '.join(ignored)} do{'es' if len(ignored) == 1 else ''} nothing: the answer is greedy (temperature 0); "
            "to sample, add --temperature, e.g. --temperature 0.7")


def output():
    """sys.stdout, where the answers go; a JaxllmError when it is closed (`>&-`), said before anything loads."""
    if sys.stdout is None:
        raise JaxllmError("stdout is closed (>&-), and the answers go there: redirect it to a file or to /dev/null")
    return sys.stdout


def write(out, text: str) -> None:
    """`text` on `out` (stdout) now, flushed, so an answer shows as it is generated. A closed pipe
    stays a BrokenPipeError (run_cli ends quietly, as `| head` expects); any other failure to write
    (a full disk, a closed file) is a JaxllmError naming it, and the text not written is dropped
    (the interpreter's last flush would fail on it again)."""
    try:
        out.write(text)
        out.flush()
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as err:
        try:  # the file descriptor to /dev/null: what is still buffered goes nowhere, quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, out.fileno())
            os.close(devnull)
        except (OSError, ValueError, AttributeError):
            pass
        raise JaxllmError(f"cannot write the answer to stdout: {getattr(err, 'strerror', None) or err}") from None


def is_leader() -> bool:
    """Whether this process prints (under jax.distributed every process runs the command)."""
    return jax.process_index() == 0


def load_model(args) -> LoadedModel:
    """The model of --model (default: runtime.default_model()) in --dtype (default: float32 on a
    CPU, else bfloat16) on --mesh, quantized as --quantize says, with --kv-dtype for its engine; a
    progress bar when loading takes over a second. --speculative-tokens goes on the model for its engines
    (LoadedModel.speculative_tokens), checked before anything is loaded."""
    # unset, not empty: --model '' or --dtype '' (an unset shell variable) is refused, not read as the default
    dtype = args.dtype if args.dtype is not None else ("float32" if jax.default_backend() == "cpu" else "bfloat16")
    speculative = getattr(args, "speculative_tokens", 0)
    if speculative < 0:
        raise JaxllmError(f"--speculative-tokens {speculative} is invalid: use a whole number >= 0 (0: off)")
    with Bar(None, "loading", delay=1.0, enabled=is_leader()) as bar:
        model = load(args.model if args.model is not None else runtime.default_model(), dtype=dtype, mesh=args.mesh, progress=bar,
                     quantize=args.quantize, group_size=args.group_size, kv_dtype=args.kv_dtype,
                     quantize_embeddings=getattr(args, "quantize_embeddings", False),
                     revision=getattr(args, "revision", None))
    model.speculative_tokens = speculative
    return model


_compile_s = [0.0]  # XLA backend compile seconds in this process (jax.monitoring events)


def _on_event(event, duration, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _compile_s[0] += duration


class Stats:
    """The stats line of one generate call: pass `on_token` to it, then `line(prompt_tokens)`.
    Decode speed leaves out each sequence's first token and the compiles after it."""

    _listening = False

    def __init__(self):
        if not Stats._listening:
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            Stats._listening = True
        self.start, self.compile_start = time.time(), _compile_s[0]
        self.first = self.compile_at_first = None
        self.tokens, self.rows = 0, set()

    def on_token(self, index: int, tokens: list[int]) -> None:
        if self.first is None:
            self.first, self.compile_at_first = time.time(), _compile_s[0]
        self.tokens += len(tokens)
        self.rows.add(index)

    def line(self, prompt_tokens: int) -> str:
        end = time.time()
        first = self.first or end
        decode_s = end - first - (_compile_s[0] - self.compile_at_first) if self.first else 0.0
        rate = (self.tokens - len(self.rows)) / decode_s if decode_s > 0 else 0.0
        return (f"[prompt tokens {prompt_tokens} | new tokens {self.tokens} | time to first token {first - self.start:.2f}s | "
                f"decode {rate:.1f} tokens/s | compile {_compile_s[0] - self.compile_start:.1f}s]")
