"""Structured outputs (constrained decoding): what a request's answer must match (`Structured`: a JSON
schema, any JSON object, a regex, one of some strings, or a Lark grammar) and the llguidance matchers
that enforce it. This module alone imports llguidance (the optional extra jaxllm[structured]).

How it runs (docs/architecture.md): a constrained sequence keeps a `Grammar` (its matcher, on the
host); before each token the runner asks the call's matchers for the tokens allowed next, a bitmask
[ceil(V / 32)] int32 per row (`masks`, for a prefill call's rows and a decode call's slots alike), and
the step sets every other logit to -inf before sampling (`allowed_tokens` on the device). The sampled token is fed to the matcher; when the grammar is complete the sequence ends
(finish reason "stop"). EOS is in the mask only where the grammar accepts. Log-probabilities stay the
model's own, unmasked, as vLLM reports them (its raw log-probabilities): a sampled token's is log softmax of the
logits before the mask, and top_logprobs may list tokens the constraint forbids. Checked at submit (`check`): a
constraint no text matches, or none this tokenizer can write, is refused there; an answer cut by max_new_tokens
ends "length", a valid prefix.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
from collections.abc import Mapping

import jax.numpy as jnp
import numpy as np

from jaxllm.errors import GenerationError, StructuredError

INSTALL = 'pip install "jaxllm[structured]"'


@dataclasses.dataclass(frozen=True)
class Structured:
    """What the answer must match; set exactly one field. `json_schema`: a JSON schema (a dict or its
    JSON text); `json_object`: any JSON object (OpenAI's {"type": "json_object"}); `regex`: a regular
    expression the whole answer matches (Rust regex syntax); `choice`: one of these strings;
    `grammar`: a Lark grammar (llguidance's dialect; GBNF is read too). A dict schema is kept as
    its JSON text (the dataclass stays hashable)."""

    json_schema: str | dict | None = None
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self):
        if isinstance(self.json_schema, Mapping):
            try:
                object.__setattr__(self, "json_schema", json.dumps(self.json_schema, ensure_ascii=False))
            except (TypeError, ValueError) as err:
                raise StructuredError(f"structured json_schema is not JSON ({err}): give a dict of JSON values or its "
                                      "JSON text") from None
            except RecursionError:  # a schema nested thousands deep
                raise StructuredError("structured json_schema is nested too deeply: give a schema "
                                      "nested less deeply (llguidance reads 128 levels of JSON); use $defs and $ref for a recursive one") from None
        if isinstance(self.choice, list):
            object.__setattr__(self, "choice", tuple(self.choice))

    @classmethod
    def of(cls, value) -> "Structured | None":
        """`value` as Structured: None, a Structured, or a dict of its fields; anything else is refused."""
        if value is None or isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            names = [f.name for f in dataclasses.fields(cls)]
            for key in value:
                if key not in names:
                    raise StructuredError(f"unknown structured output field {key!r}: use one of {', '.join(names)}")
            return cls(**value)
        raise StructuredError(f"structured must be a jaxllm.Structured or a dict of its fields (json_schema, json_object, "
                              f"regex, choice, grammar), got {type(value).__name__}")

    def _given(self) -> list[str]:
        """The fields set: not their default (check() asks for exactly one; json_schema=False or 0 is set, and refused)."""
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not f.default]

    @property
    def kind(self) -> str:
        return next(iter(self._given()), "")

    def check(self) -> None:
        """Exactly one field set, of its type, and a grammar llguidance compiles (StructuredError otherwise)."""
        given = self._given()
        if len(given) != 1:
            raise StructuredError(f"structured output sets {' and '.join(given) or 'nothing'}: set exactly one of "
                                  "json_schema, json_object, regex, choice, grammar")
        kind = given[0]
        value = getattr(self, kind)
        if kind == "json_object" and value is not True:
            raise StructuredError(f"structured json_object={value!r} is invalid: use True")
        if kind == "choice" and (not isinstance(value, tuple) or not value or not all(isinstance(c, str) and c for c in value)):
            raise StructuredError(f"structured choice={value!r} is invalid: give a list of non-empty strings")
        if kind in ("json_schema", "regex", "grammar") and (not isinstance(value, str) or not value.strip()):
            raise StructuredError(f"structured {kind} is invalid: give it as non-empty text"
                                  + (" (or a dict)" if kind == "json_schema" else ""))
        grammar_text(self)

    def source(self) -> tuple[str, str]:
        """(llguidance's format name, the text) of this constraint."""
        kind = self.kind
        if kind == "json_object":
            return "json_schema", '{"type": "object"}'
        if kind == "choice":  # one regex (a lexeme: llguidance's lexer), not a rule of alternatives (its parser, whose
            return "regex", "|".join(map(_literal, self.choice))  # rows hold 2,000 items: 3,000 choices ended "error")
        return {"json_schema": "json_schema", "regex": "regex", "grammar": "grammar"}[kind], getattr(self, kind)


def _literal(text: str) -> str:
    """`text` as a regex (Rust regex syntax) matching it alone."""
    return "".join("\\" + c if c in _META else c for c in text)


_META = frozenset("\\.+*?()|[]{}^$#&-~")  # Rust regex's meta characters (the rest stand for themselves)


def _llguidance():
    try:
        import llguidance
    except ImportError:
        raise GenerationError(f"structured outputs need the llguidance library, which is not installed: {INSTALL}") from None
    return llguidance


def _one_line(message: str) -> str:
    """llguidance's message (several lines for a regex or grammar: the text, a caret, the reason) in one line:
    its first line, and the reason's line where it gives one."""
    lines = [line.strip() for line in str(message).strip().splitlines() if line.strip()]
    if not lines:
        return "(no reason given)"
    reason = next((line.removeprefix("error:").strip() for line in lines[1:] if line.startswith("error:")), "")
    return lines[0].rstrip(":") + (f": {reason}" if reason else "")


def _error(validated: tuple[bool, list[str]]) -> str:
    """The error of llguidance's validate_grammar_with_warnings (is_error, messages), or "" (warnings are no error)."""
    is_error, messages = validated
    return (messages[0] if messages else "invalid") if is_error else ""


_FIX = {"json_schema": "fix the schema, or use a feature llguidance supports", "json_object": "use True",
        "regex": "fix the regex", "grammar": "fix the grammar (Lark syntax, from a 'start:' rule; or GBNF, from 'root ::=')",
        "choice": "give a list of strings"}  # a constraint's fix, by its kind


@functools.lru_cache(maxsize=256)
def grammar_text(structured: Structured) -> str:
    """llguidance's grammar for `structured`, checked (without a tokenizer); StructuredError naming what is wrong."""
    llg = _llguidance()
    kind, text = structured.source()
    try:
        grammar = llg.grammar_from(kind, text)
        error = _error(llg.LLMatcher.validate_grammar_with_warnings(grammar))
    except (ValueError, TypeError) as err:
        error = str(err)
    if error:
        raise StructuredError(f"structured {structured.kind} is invalid: {_one_line(error)}: {_FIX[structured.kind]}")
    return grammar


def tokenizer(hf_tokenizer, eos: list[int]):
    """llguidance's tokenizer over a model's tokenizer (jaxllm's or a transformers fast one: what
    `backend_tokenizer` holds), ending at `eos` (the engine's EOS ids). About 0.3 s for a 50k
    vocabulary: the engine keeps it."""
    llg = _llguidance()
    backend = getattr(hf_tokenizer, "backend_tokenizer", None)
    if backend is None:
        what = "this model has no tokenizer" if hf_tokenizer is None else "this model's tokenizer is not a fast one"
        raise GenerationError(f"structured outputs need the model's tokenizer.json: {what}; add tokenizer.json to the "
                              "checkpoint folder")
    backend = copy.copy(backend)  # padding and truncation off on a copy, as llguidance.hf.from_tokenizer does
    backend.no_padding()
    backend.no_truncation()
    ends = [int(t) for t in eos if t >= 0]
    try:
        lltokenizer = llg.LLTokenizer(backend.to_str(), eos_token=ends or None)
    except ValueError as err:  # a tokenizer.json llguidance cannot read (a decoder it does not know, ...)
        raise GenerationError(f"llguidance cannot read this model's tokenizer ({_one_line(err)}): structured outputs "
                              "are not available for it") from None
    if not ends and not lltokenizer.is_special_token(lltokenizer.eos_token):  # no EOS: llguidance takes a token of its own
        raise GenerationError(f"structured outputs need an end-of-sequence token and this model has none (a complete answer "
                              f"would end on text token {lltokenizer.eos_token}): set eos_token_id in the model's "
                              "generation_config.json")
    return lltokenizer


@functools.lru_cache(maxsize=256)
def check(structured: Structured, lltokenizer) -> None:
    """Refuse (StructuredError) a constraint llguidance cannot serve over this tokenizer, at submit rather than as an
    answer that does not match: one no text matches (an empty enum behind a $ref loop, a regex matching nothing, a
    grammar whose rules never end) and one whose text no token of the tokenizer starts (a character it has no token
    for) would each end at once, empty, with "stop" or "error". Cached: a request's checks cost one matcher's first
    step."""
    error = _error(_llguidance().LLMatcher.validate_grammar_with_warnings(grammar_text(structured), lltokenizer))
    if error:
        raise StructuredError(f"structured {structured.kind} is invalid for this model's tokenizer: {_one_line(error)}")
    grammar = Grammar(structured, lltokenizer)
    allowed = np.flatnonzero(np.unpackbits(masks({0: grammar}, 1, lltokenizer.vocab_size)[0].view(np.uint8),
                                           bitorder="little")[: lltokenizer.vocab_size])
    if grammar.matcher.is_error() or not any(grammar.matcher.validate_tokens([int(t)]) for t in allowed):
        why = f" (llguidance: {grammar.error})" if grammar.matcher.is_error() else ""  # NoExtensionBias: nothing can follow
        raise StructuredError(f"structured {structured.kind} is unsatisfiable: no text that this model's tokenizer can "
                              f"write matches it{why}: {_FIX[structured.kind]}")


ROW_ITEMS = 10_000  # llguidance's parser row (2,000 by default: the anyOf of a tool_choice 'required' over 2,500 tools
# ended "error" at its name); the grammar's size limit (max_grammar_size) refuses larger ones at submit


def words(vocab: int) -> int:
    """int32 words of a bitmask over `vocab` tokens."""
    return -(-vocab // 32)


class Grammar:
    """One sequence's matcher and how many of its tokens it has consumed."""

    def __init__(self, structured: Structured, lltokenizer):
        llg = _llguidance()
        self.matcher = llg.LLMatcher(lltokenizer, grammar_text(structured), log_level=0,
                                     limits=llg.LLParserLimits(max_items_in_row=ROW_ITEMS))
        if self.matcher.is_error():  # llguidance's limits (a regex or choice too large to compile): simplify it
            fix = {"choice": "give fewer choices"}.get(structured.kind, f"simplify the {structured.source()[0].replace('_', ' ')}")
            raise StructuredError(f"structured {structured.kind} is invalid: {_one_line(self.matcher.get_error())}: {fix}")
        self.consumed = 0
        self.width = words(lltokenizer.vocab_size)

    @property
    def stopped(self) -> bool:
        """The grammar is complete: nothing but EOS could follow (the sequence ends here)."""
        return self.matcher.is_stopped() and not self.matcher.is_error()

    @property
    def error(self) -> str:
        """Why the matcher stopped, in one line: llguidance's own error holds its state and the whole grammar (a
        warning of 400 KB for a request forcing one of 2,000 tools)."""
        text = _one_line(self.matcher.get_error())
        return text if len(text) <= 300 else text[:297] + "..."

    def advance(self, tokens: list[int]) -> bool:
        """Feed the sequence's new tokens; False when one is not allowed (the matcher's error)."""
        self.consumed += len(tokens)
        return all(self.matcher.consume_token(t) for t in tokens)

    def sync(self, output: list[int]) -> None:
        """Match the matcher to a sequence's output (a sequence recomputed after a preemption keeps it; one whose
        output the matcher has not consumed exactly is replayed from the start)."""
        if self.consumed != len(output):
            self.matcher.reset()
            self.consumed = 0
            self.advance(output)


def masks(grammars: dict[int, Grammar], rows: int, vocab: int) -> np.ndarray:
    """[rows, words(vocab)] int32 bitmasks: bit t of row r says token t may come next (word t // 32, bit t % 32);
    rows without a grammar allow everything (-1), a grammar's row only what it allows; ids beyond the tokenizer's
    vocabulary (the logits' padding rows) are never allowed in a constrained row."""
    from llguidance.numpy import fill_next_token_bitmask

    out = np.full((rows, words(vocab)), -1, np.int32)
    for row, grammar in grammars.items():
        own = np.zeros((1, grammar.width), np.int32)
        fill_next_token_bitmask(grammar.matcher, own, 0)
        n = min(own.shape[1], out.shape[1])
        out[row] = 0
        out[row, :n] = own[0, :n]
    return out


def allowed_tokens(bits, vocab: int):
    """[B, vocab] bool of the bitmasks `bits` [B, words(vocab)] int32, on the device."""
    b, w = bits.shape
    unpacked = (bits[:, :, None] >> jnp.arange(32, dtype=bits.dtype)[None, None, :]) & 1
    return unpacked.reshape(b, w * 32)[:, :vocab].astype(bool)
