"""Sampling: the request-level settings (SamplingParams) and the jitted token choice.

Every setting is a per-row array inside jit, so one compiled step serves any mix of greedy and
sampled requests. The processing order is transformers': repetition penalty, temperature, top-k,
top-p, min-p. OpenAI's logit bias and presence and frequency penalties, which transformers lacks,
come as vLLM applies them: the bias first, the penalties right after the repetition penalty
(counting generated tokens only). Randomness is per request: row b draws with fold_in(PRNGKey(seed_b), n_b), where
n_b counts that row's generated tokens, so a seed reproduces its output whatever the batch. With
no seed each sequence draws a fresh random one (`with_seed`, when the engine takes it), as
transformers and vLLM sample afresh unless seeded.

vLLM's min_tokens holds back the ids that would end a row (its EOS and stop_token_ids: -inf) until
it has generated that many, as transformers' min_new_tokens does.

Unset settings come from the checkpoint's generation_config.json as transformers reads it: jaxllm.generation_config.
"""

from __future__ import annotations

import dataclasses
import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxllm.errors import GenerationError, lone_surrogate, shown
from jaxllm.generation_config import DEFAULT_MAX_NEW_TOKENS, check_room, file_defaults, file_min_tokens, warn_unapplied  # noqa: F401 - public here too
from jaxllm.structured import Structured, allowed_tokens


@dataclass(frozen=True)
class SamplingParams:
    """What to generate. None means: the checkpoint's generation_config.json, else the default.

    temperature 0 is greedy. top_k 0, top_p 1.0, min_p 0.0 and repetition_penalty 1.0 disable
    those filters. presence_penalty and frequency_penalty (OpenAI's, in [-2, 2]; 0 disables) subtract
    from a token's logit once if it was generated before, and once per time it was. logit_bias
    (OpenAI's) maps token ids to a number in [-100, 100] added to their logits (at most
    LOGIT_BIAS_MAX of them; -100 in effect bans a token, 100 forces it). `stop` strings end a sequence, left out of its text. `seed` None: each
    sequence samples with a fresh random seed; a number reproduces the output.

    Log-probabilities are the model's own (log_softmax of its logits before any of the processing
    above, as vLLM returns them by default). `logprobs`: each new token's. `top_logprobs` (0 to
    TOP_LOGPROBS_MAX, OpenAI's limit): also the most likely tokens at each new token's position,
    that many, best first (ties: the lower id first, as jax.lax.top_k orders them); more than 0
    implies `logprobs`. `prompt_logprobs`: each prompt token's given the tokens before it (the
    first has none), and with top_logprobs the most likely there too; such a request computes its
    whole prompt (no prefix-cache hits). max_new_tokens=0 is valid with prompt_logprobs only: the
    prompt is scored, nothing generated (OpenAI's echo with max_tokens 0).
    vLLM's extensions: `stop_token_ids` end a sequence as its EOS ids do (at most STOP_TOKEN_IDS_MAX;
    the id is the last of its token ids, its text left out); `min_tokens` new tokens come before any
    of those ids can be chosen, or a stop string end it (None: generation_config.json's min_new_tokens,
    else 0); `include_stop_str_in_output` keeps the stop string (or the stop id's text) at the end of
    the text; `skip_special_tokens` False keeps special tokens' text in it.
    `structured`: what the answer must match (jaxllm.Structured, or a dict of its fields: a JSON schema, any
    JSON object, a regex, a choice of strings, a Lark grammar); decoding is constrained to it, and the
    answer ends ("stop") once it is complete (needs llguidance: pip install "jaxllm[structured]").
    """

    max_new_tokens: int | None = None
    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = 0.0  # None: 0
    frequency_penalty: float | None = 0.0
    logit_bias: Mapping[int, float] | tuple = ()  # resolved: ((token id, bias), ...) sorted
    seed: int | None = None
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False
    logprobs: bool = False
    top_logprobs: int = 0
    prompt_logprobs: bool = False
    min_tokens: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    structured: Structured | None = None

    @classmethod
    def of(cls, value, **overrides) -> "SamplingParams":
        """`value` as SamplingParams: None (every field unset), SamplingParams, or a dict of its
        fields (`{"temperature": 0.5, "max_new_tokens": 8}`); anything else, or a key that is not a
        field, is refused naming it. `overrides`: fields set over `value`'s (generate's keyword
        arguments). Values are checked by `resolved`."""
        if overrides:
            cls.of(overrides)  # unknown names refused as a dict's
            return dataclasses.replace(cls.of(value), **overrides)
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if isinstance(value, Mapping):
            names = [f.name for f in dataclasses.fields(cls)]
            for key in value:
                if key not in names:
                    hint = " (did you mean 'max_new_tokens'?)" if key in ("max_tokens", "max_length") else ""
                    raise GenerationError(f"unknown sampling setting {key!r}: use {', '.join(names)}{hint}")
            return cls(**value)
        raise GenerationError(f"sampling params must be a jaxllm.SamplingParams or a dict of its fields, "
                              f"got {type(value).__name__}")

    def resolved(self, generation_config: dict | None = None, prompt_tokens: int | None = None,
                 context: int | None = None) -> "SamplingParams":
        """Fill unset fields from generation_config.json (transformers' meaning: jaxllm.generation_config), then
        defaults; validate everything. A bad field of `generation_config` is a ConfigError naming it. `prompt_tokens`:
        the prompt's length, where known, for the file's max_length and min_length (prompt + new tokens); a prompt
        that fills max_length is refused, as transformers refuses it; `context`: the model's positions, past which
        the file's max_length does not reach."""
        gen = generation_config or {}
        if isinstance(gen, Mapping):  # numpy scalars as numbers; anything else file_defaults refuses
            gen = {k: bool(v) if isinstance(v, np.bool_) else _plain(v) for k, v in gen.items()}
        defaults = file_defaults(gen, prompt_tokens, context)
        if self.max_new_tokens is None and prompt_tokens is not None:
            check_room(gen, prompt_tokens, defaults["max_new_tokens"])
        values = {k: (getattr(self, k) if getattr(self, k) is not None else v) for k, v in defaults.items()}
        values.update(seed=self.seed, top_logprobs=self.top_logprobs, **{k: 0.0 if getattr(self, k) is None else getattr(self, k)
                                         for k in ("presence_penalty", "frequency_penalty")})
        values = {k: _plain(v) for k, v in values.items()}
        values["min_tokens"] = _plain(self.min_tokens) if self.min_tokens is not None else file_min_tokens(gen, values["max_new_tokens"], prompt_tokens)
        out = dataclasses.replace(self, stop=_stop_strings(self.stop), logit_bias=_bias_pairs(self.logit_bias),
                                  stop_token_ids=_stop_ids(self.stop_token_ids), structured=Structured.of(self.structured),
                                  **values)
        try:
            out.validate()
        except GenerationError as err:  # a value the request did not set: say where it came from
            name = str(err).split("=", 1)[0]
            if name in defaults and getattr(self, name) is None and gen.get(name) is not None:
                raise GenerationError(f"{err} (it comes from generation_config.json: correct the file, or set {name} "
                                      "in the request)") from None
            raise
        warn_unapplied(gen, sampled=out.temperature > 0, length_unset=self.max_new_tokens is None,
                       min_unset=self.min_tokens is None, prompt_known=prompt_tokens is not None)
        return dataclasses.replace(out, logprobs=True) if out.top_logprobs else out

    @property
    def penalized(self) -> bool:
        """Whether OpenAI's presence / frequency penalties or logit bias, or min_tokens, apply (the steps of kind PENALIZED)."""
        return self.presence_penalty != 0 or self.frequency_penalty != 0 or bool(self.logit_bias) or bool(self.min_tokens)

    def with_seed(self) -> "SamplingParams":
        """These params, a fresh random seed in place of None (the engine calls it per sequence)."""
        return self if self.seed is not None else dataclasses.replace(self, seed=secrets.randbits(32))

    def validate(self) -> None:
        def bad(name, value, rule):
            raise GenerationError(f"{name}={shown(value)} is invalid: {rule}")

        for name in _RANGES:  # finite, yet inf as float32 (a Python int of 400 digits too)
            value = getattr(self, name)
            if _finite(value) and abs(value) > _FLOAT32_MAX:
                bad(name, value, "beyond float32, which the device samples in (at most 3.4e38): use a smaller number")
        least = 0 if isinstance(self.prompt_logprobs, (bool, np.bool_)) and self.prompt_logprobs else 1
        if not _whole(self.max_new_tokens) or not least <= self.max_new_tokens <= MAX_TOKENS:
            bad("max_new_tokens", self.max_new_tokens, f"use a whole number from 1 to {MAX_TOKENS}"
                + (" (0 only with prompt_logprobs, to score the prompt alone)" if _whole(self.max_new_tokens) and self.max_new_tokens == 0 else ""))
        for name, (ok, rule) in _RANGES.items():  # finite numbers within each setting's range
            if not _finite(getattr(self, name)) or not ok(getattr(self, name)):
                bad(name, getattr(self, name), rule)
        if not _whole(self.top_k) or not 0 <= self.top_k <= MAX_TOKENS:  # int32 on the device
            bad("top_k", self.top_k, f"use 0 to disable or a whole number from 1 to {MAX_TOKENS} "
                                     "(one above the vocabulary's size keeps every token)")
        if self.seed is not None and (not _whole(self.seed) or not 0 <= self.seed < 2**32):
            bad("seed", self.seed, "use a whole number in [0, 2**32), or None for a random one")
        _check_bias(self.logit_bias, bad)
        _check_stop_strings(self.stop, bad)
        for name in ("ignore_eos", "logprobs", "include_stop_str_in_output", "skip_special_tokens"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                bad(name, getattr(self, name), "use True or False")
        if not _whole(self.min_tokens) or not 0 <= self.min_tokens <= self.max_new_tokens:
            bad("min_tokens", self.min_tokens, f"use a whole number from 0 to max_new_tokens ({self.max_new_tokens})")
        _check_stop_ids(self.stop_token_ids, bad)
        _check_logprob_settings(self, bad)
        if self.structured is not None:
            if not isinstance(self.structured, Structured):
                bad("structured", self.structured, "use a jaxllm.Structured (or a dict of its fields), or None")
            self.structured.check()


def _check_logprob_settings(params: SamplingParams, bad) -> None:
    if not _whole(params.top_logprobs) or not 0 <= params.top_logprobs <= TOP_LOGPROBS_MAX:
        bad("top_logprobs", params.top_logprobs, f"use a whole number from 0 to {TOP_LOGPROBS_MAX} (OpenAI's limit)")
    if not isinstance(params.prompt_logprobs, (bool, np.bool_)):
        bad("prompt_logprobs", params.prompt_logprobs, "use True or False")


# Each float setting's range, and how a value outside it is refused
_RANGES = {
    "temperature": (lambda v: v >= 0, "use 0 for greedy or a positive number"),
    "top_p": (lambda v: 0 <= v <= 1, "use a number in [0, 1]; 1 disables it, 0 keeps only the most likely token"),
    "min_p": (lambda v: 0 <= v <= 1, "use a number in [0, 1]; 0 disables it"),
    "repetition_penalty": (lambda v: v > 0, "use a positive number; 1 disables it"),
    "presence_penalty": (lambda v: -2 <= v <= 2, "use a number in [-2, 2] (OpenAI's range); 0 disables it"),
    "frequency_penalty": (lambda v: -2 <= v <= 2, "use a number in [-2, 2] (OpenAI's range); 0 disables it"),
}



# The most new tokens a request may ask for: positions are int32 on the device. What the engine's
# memory holds is checked where an engine is sized (jaxllm.generation.engine_for, Engine).
MAX_TOKENS = 2**31 - 1


_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _finite(x) -> bool:
    """A number that is neither NaN nor infinite: any Python int (math.isfinite overflows on one beyond a float's
    range: a JSON number of 400 digits), a float that is finite."""
    return _whole(x) or (isinstance(x, float) and math.isfinite(x))


def _whole(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _plain(x):
    """numpy scalars and 0-d numpy or JAX arrays of numbers as Python numbers (np.int64(8) -> 8,
    jnp.float32(0.5) -> 0.5); others (bools, arrays of several values, ...) unchanged."""
    dtype = getattr(x, "dtype", None)
    if getattr(x, "ndim", None) != 0 or dtype is None or isinstance(x, jax.core.Tracer):
        return x
    if jnp.issubdtype(dtype, jnp.integer):
        return int(x)
    if jnp.issubdtype(dtype, jnp.floating):
        return float(x)
    return x


TOP_LOGPROBS_MAX = 20  # the most likely tokens a request may ask for at each position (OpenAI's limit): the width the steps return

LOGIT_BIAS_MAX = 300  # biased tokens a request may name (OpenAI's own limit): the steps hold that many per row


def _bias_pairs(bias):
    """`logit_bias` as sorted ((token id, bias), ...): a mapping's items (JSON's string keys "50256"
    read as ids) or pairs as they are; anything else is kept for validate to refuse."""
    if bias is None:
        return ()
    if isinstance(bias, Mapping):
        bias = [(_token_key(k), _plain(v)) for k, v in bias.items()]
    if isinstance(bias, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in bias):
        pairs = tuple((k, v) for k, v in bias)
        return tuple(sorted(pairs, key=lambda p: p[0])) if all(_whole(k) for k, _ in pairs) else pairs
    return bias


def _token_key(key):
    """A logit_bias key as a token id: JSON's string keys ("50256", "-1") read as whole numbers; any other key as it
    is, for validate to refuse by name ('\u00b2', '--5' and a key of 5,000 digits are digits to str.isdigit, not to int)."""
    if isinstance(key, str) and key.strip().lstrip("-").isdigit():
        try:
            return int(key)
        except ValueError:
            return key
    return _plain(key)


def _pairs_shown(bias: tuple):
    """logit_bias pairs as a message shows them: a dict, or a list of pairs where a key cannot be a dict's (a list)."""
    try:
        return dict(bias)
    except TypeError:
        return [list(p) for p in bias]


def _check_bias(bias, bad) -> None:
    if not isinstance(bias, tuple) or not all(isinstance(p, tuple) and len(p) == 2 for p in bias):
        bad("logit_bias", bias, "use a mapping of token ids to numbers in [-100, 100], e.g. {50256: -100}")
    for token, value in bias:
        if not _whole(token) or token < 0:
            bad("logit_bias", _pairs_shown(bias), f"token id {shown(token)} is not a token id: use whole numbers >= 0")
        if not _finite(value) or not -100 <= value <= 100:
            bad("logit_bias", _pairs_shown(bias), f"the bias of token {shown(token)} is {shown(value)}: use a number in [-100, 100]")
    twice = next((a for (a, _), (b, _) in zip(bias, bias[1:]) if a == b), None)  # sorted: "5" and "05" are both token 5
    if twice is not None:
        bad("logit_bias", [list(p) for p in bias], f"it gives token {twice} two biases: give each token one")
    if len(bias) > LOGIT_BIAS_MAX:
        bad("logit_bias", f"<{len(bias)} tokens>", f"name at most {LOGIT_BIAS_MAX} tokens")


STOP_TOKEN_IDS_MAX = 64  # stop_token_ids a request may name: each decode row holds that many beside the EOS ids


def _stop_ids(ids):
    """`stop_token_ids` as a tuple without repeats, in order (vLLM drops them too): None none; a list or
    tuple's items as numbers; anything else kept for validate to refuse."""
    if ids is None:
        return ()
    if isinstance(ids, (list, tuple)) or (isinstance(ids, np.ndarray) and ids.ndim == 1):
        ids = tuple(_plain(i) for i in ids)
        return tuple(dict.fromkeys(ids)) if all(_whole(i) for i in ids) else ids
    return ids


def _check_stop_ids(ids, bad) -> None:
    if not isinstance(ids, tuple) or not all(_whole(i) and i >= 0 for i in ids):
        bad("stop_token_ids", list(ids) if isinstance(ids, tuple) else ids, "use a list of token ids (whole numbers >= 0)")
    if len(ids) > STOP_TOKEN_IDS_MAX:
        bad("stop_token_ids", f"<{len(ids)} ids>", f"name at most {STOP_TOKEN_IDS_MAX} tokens")


def _check_stop_strings(stop, bad) -> None:
    if not isinstance(stop, tuple) or any(not isinstance(s, str) or not s for s in stop):
        bad("stop", list(stop) if isinstance(stop, tuple) else stop, "use a non-empty string or a list of them")
    for text in stop:  # a lone surrogate (a JSON "\udcff", argv's undecodable byte): no decoded answer holds one
        if lone_surrogate(text) is not None:
            bad("stop", text, "a lone surrogate (an undecodable byte) never matches the decoded answer: give valid Unicode text")


def _stop_strings(stop):
    """`stop` as a tuple: a string is one stop string, None none; a list or tuple as it is (its
    items checked by validate); anything else is kept for validate to refuse."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    if isinstance(stop, (list, tuple)):
        return tuple(stop)
    return stop


class RowParams(NamedTuple):
    """SamplingParams as per-row arrays [B], the form the jitted step takes."""

    temperature: jax.Array
    top_k: jax.Array
    top_p: jax.Array
    min_p: jax.Array
    repetition_penalty: jax.Array
    presence_penalty: jax.Array
    frequency_penalty: jax.Array
    bias_ids: jax.Array  # [B, LOGIT_BIAS_MAX] the logit bias's token ids, -1 padding
    bias: jax.Array  # [B, LOGIT_BIAS_MAX] their biases
    seed: jax.Array
    min_tokens: jax.Array  # [B] int32: the row's ending ids are held back while it has generated fewer

    @staticmethod
    def of(params: list[SamplingParams]) -> "RowParams":
        col = lambda name, dtype: np.asarray([getattr(p, name) for p in params], dtype)  # noqa: E731
        return RowParams(
            col("temperature", np.float32), col("top_k", np.int32), col("top_p", np.float32),
            col("min_p", np.float32), col("repetition_penalty", np.float32),
            col("presence_penalty", np.float32), col("frequency_penalty", np.float32),
            *_bias_columns(params),
            np.asarray([p.seed or 0 for p in params], np.uint32),  # None: a padding row (a sequence's is set by with_seed)
            col("min_tokens", np.int32),
        )


# What a compiled step's token choice does (the steps' static `sampling` argument): GREEDY an argmax (after the
# repetition penalty); SAMPLED the draw and its filters too; PENALIZED OpenAI's logit bias and presence / frequency
# penalties and min_tokens besides, with the output's token counts they read kept up to date. A call takes the largest its rows
# need, so a row with penalties runs in PENALIZED calls only, from its prefill on; other calls leave the counts be.
GREEDY, SAMPLED, PENALIZED = 0, 1, 2


def step_kind(params) -> int:
    """The kind of step (GREEDY, SAMPLED, PENALIZED) rows of these SamplingParams need."""
    params = list(params)
    return PENALIZED if any(p.penalized for p in params) else SAMPLED if any(p.temperature > 0 for p in params) else GREEDY


def logprob_width(params) -> int:
    """How many most likely tokens a step returns per position for rows of these SamplingParams:
    TOP_LOGPROBS_MAX if one asks for any (each row keeps its own top_logprobs of them), else 0 (a
    static argument of the steps: calls without top log-probabilities compile and run as before)."""
    return TOP_LOGPROBS_MAX if any(p.top_logprobs for p in params) else 0


def top_logprobs(logits, k: int):
    """(ids int32, log-probabilities float32) [..., k] of the k most likely tokens of `logits`
    [..., V] by the model's own log-probabilities (log_softmax, before any processing, as `sample`
    reports the chosen token's), best first; ties: the lower id first (jax.lax.top_k's order)."""
    return top_of(jax.nn.log_softmax(logits, axis=-1), k)


def top_of(logprobs, k: int):
    """`top_logprobs` of log-probabilities already computed (log_softmax of the logits). k 1 (Engine.score's greedy
    tokens) is an argmax: top_k's (id, value), ties to the lower id too, for 0.31 ms of an H200 over a [512, 152k]
    block where top_k took 0.46 ms (and 5.1 ms for k 20)."""
    if k == 1:
        ids = jnp.argmax(logprobs, axis=-1)[..., None]
        return ids.astype(jnp.int32), jnp.take_along_axis(logprobs, ids, axis=-1)
    values, ids = jax.lax.top_k(logprobs, k)
    return ids.astype(jnp.int32), values


def _bias_columns(params: list[SamplingParams]) -> tuple[np.ndarray, np.ndarray]:
    ids, values = np.full((len(params), LOGIT_BIAS_MAX), -1, np.int32), np.zeros((len(params), LOGIT_BIAS_MAX), np.float32)
    for row, p in enumerate(params):
        for i, (token, value) in enumerate(p.logit_bias):
            ids[row, i], values[row, i] = token, value
    return ids, values


def sample(logits, seen, rp: RowParams, step, sampling: bool = True, counts=None, stops=None, allowed=None):
    """Choose one token per row.

    logits [B, V] float32; seen [B, V] bool (tokens already in the sequence, for the repetition
    penalty); step [B] int (tokens generated so far, for the random stream); counts [B, V] int
    (times each token was generated, for the presence and frequency penalties; None: none); stops
    [B, E] int (the ids that end each row, -1 padding: -inf while step < min_tokens; None: none).
    Returns (tokens [B] int32, logprobs [B] float32: the model's log-probability of the chosen
    token before any processing). `sampling` (static, `step_kind`): GREEDY (or False) promises every row
    is greedy and unpenalized, and skips the vocabulary sort that the filters need; SAMPLED (or True)
    promises no row has OpenAI's penalties or bias, and skips them; PENALIZED applies them (`counts` given).
    `allowed` [B, ceil(V / 32)] int32 bitmasks (structured outputs; None: none): tokens whose bit is 0 are
    -inf before anything else (the log-probabilities stay the model's own).
    """
    logprobs = jax.nn.log_softmax(logits, axis=-1)
    if allowed is not None:
        logits = jnp.where(allowed_tokens(allowed, logits.shape[-1]), logits, -jnp.inf)
    penalized = sampling == PENALIZED and counts is not None
    if penalized:  # OpenAI's logit bias, before the penalties (vLLM's order); padding ids (-1) are dropped
        rows = jnp.arange(logits.shape[0])[:, None]
        logits = logits.at[rows, jnp.where(rp.bias_ids < 0, logits.shape[1], rp.bias_ids)].add(rp.bias, mode="drop")
        if stops is not None:  # min_tokens: what would end the row cannot be chosen yet (transformers' MinNewTokensLength)
            held = (stops >= 0) & (step < rp.min_tokens)[:, None]
            logits = logits.at[rows, jnp.where(held, stops, logits.shape[1])].set(-jnp.inf, mode="drop")
    pen = rp.repetition_penalty[:, None]
    logits = jnp.where(seen, jnp.where(logits < 0, logits * pen, logits / pen), logits)
    if penalized:
        logits = logits - rp.frequency_penalty[:, None] * counts - rp.presence_penalty[:, None] * (counts > 0)
    greedy = jnp.argmax(logits, axis=-1)


    def draw(logits):
        # transformers' division, down to a temperature of 1e-30 (a floor of 1e-6 once made 1e-7 draw a token 1 ulp
        # below the top 28% of the time, where transformers' odds are 1e-4). The floor keeps logits up to 3e8 finite:
        # overflowed ones would tie at inf, and the draw take any of them, the top or not; at 1e-30 every float32 gap
        # is already certain. Greedy rows (temperature 0) divide by 1: their draw is not taken.
        scaled = logits / jnp.where(rp.temperature > 0, jnp.maximum(rp.temperature, 1e-30), 1.0)[:, None]
        keep = filter_mask(scaled, rp.top_k, rp.top_p, rp.min_p)
        masked = jnp.where(keep, scaled, -jnp.inf)
        keys = jax.vmap(lambda s, n: jax.random.fold_in(jax.random.PRNGKey(s), n))(rp.seed, step)
        return jax.vmap(jax.random.categorical)(keys, masked)

    tokens = jnp.where(rp.temperature > 0, draw(logits), greedy) if sampling else greedy
    tokens = tokens.astype(jnp.int32)
    return tokens, jnp.take_along_axis(logprobs, tokens[:, None], axis=-1)[:, 0]


def filter_mask(logits, top_k, top_p, min_p):
    """[B, V] True for tokens that survive top-k, then top-p, then min-p (each disabled by its
    neutral value), as transformers' warpers choose them, ties included: top-k keeps every token
    tied with the k-th; top-p keeps tokens by rank until the mass above them reaches top_p (of
    tied tokens only as many as that needs: the later ones in the vocabulary, where transformers'
    ascending sort puts them last), and is off at 1; min-p keeps what is within a factor of the
    most likely. One value sort per row gives the thresholds (an argsort and a scatter back cost
    1.4-1.7x as much on an H200 at 64-256 rows of 152k); ties at the top-p cut are counted off in
    vocabulary order."""
    v = logits.shape[-1]
    ordered = jnp.sort(logits, axis=-1)[:, ::-1]
    rank = jnp.arange(v)[None, :]
    k = jnp.where(top_k > 0, jnp.minimum(top_k, v), v)[:, None]
    kth = jnp.take_along_axis(ordered, k - 1, axis=-1)
    in_k = ordered >= kth  # top-k keeps every token tied with the k-th
    ordered = jnp.where(in_k, ordered, -jnp.inf)
    probs = jax.nn.softmax(ordered, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # probability mass ranked above each token
    in_p = ((before < top_p[:, None]) | (rank == 0) | (top_p[:, None] >= 1)) & in_k  # the top token always
    keep_n = jnp.sum(in_p, axis=-1, keepdims=True)  # tokens top-p keeps, by rank
    p_threshold = jnp.min(jnp.where(in_p, ordered, jnp.inf), axis=-1, keepdims=True)
    above = logits > p_threshold
    tied = logits == p_threshold
    later = jnp.cumsum(tied[:, ::-1], axis=-1)[:, ::-1]  # tied tokens from this one to the vocabulary's end
    in_top_p = above | (tied & (later <= keep_n - jnp.sum(above, axis=-1, keepdims=True)))
    min_p_threshold = ordered[:, :1] + jnp.log(jnp.maximum(min_p, 1e-30))[:, None]
    in_min_p = (min_p[:, None] <= 0) | (logits >= min_p_threshold)
    return (logits >= kth) & in_top_p & in_min_p
