"""generation_config.json as a request's defaults: the sampling settings transformers' generate reads from it
(its do_sample, temperature, top_k, ...: `file_defaults`), its length (max_new_tokens, else max_length less the
prompt), its least length (min_new_tokens, else min_length less the prompt: `file_min_tokens`), and a warning naming
the settings generate would apply and jaxllm does not (`warn_unapplied`).

The dict is checked field by field as loading checks the file (models/config_fields.GENERATION_FIELDS), so a
hand-made one (`resolved({"temperature": "0.7"})`, a model's generation_config edited in place) is refused in one
line naming its field, where transformers' processors refuse it deep inside generate (a string temperature, top_k
5.0, repetition_penalty 0) or read it otherwise ("do_sample": "false" samples)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from jaxllm.errors import GenerationError
from jaxllm.models.config_fields import check_generation_config

log = logging.getLogger("jaxllm")

DEFAULT_MAX_NEW_TOKENS = 256


def file_defaults(gen: Mapping, prompt_tokens: int | None = None, context: int | None = None) -> dict:
    """The SamplingParams defaults `gen` (a generation_config dict, checked: a ConfigError naming a bad field) gives,
    as transformers reads it: sampling settings only where do_sample is true (null top_k: transformers' 50, top_p
    0: the top token), else greedy; the length: max_new_tokens, else max_length (prompt + new tokens) less the
    prompt's `prompt_tokens` where they are known (0 or less where the prompt fills it: `check_room`), and no
    further than the model's `context` where given (a file's max_length past it is a bound, not a request)."""
    check_generation_config(gen)
    sampled = bool(gen.get("do_sample"))
    value = lambda name, default: default if gen.get(name) is None else gen[name]  # noqa: E731
    by_length = gen.get("max_new_tokens") is None and gen.get("max_length") is not None and prompt_tokens is not None
    return dict(
        max_new_tokens=_length(gen["max_length"], context, prompt_tokens) if by_length else value("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
        temperature=float(value("temperature", 1.0)) if sampled else 0.0,
        top_k=value("top_k", 50) if sampled else 0,
        top_p=float(value("top_p", 1.0)) if sampled else 1.0,
        min_p=float(value("min_p", 0.0)) if sampled else 0.0,
        repetition_penalty=float(value("repetition_penalty", 1.0)),
    )


def _length(max_length: int, context: int | None, prompt_tokens: int) -> int:
    """New tokens under max_length (prompt + new), within the context where the prompt fits it (one that does not
    is refused by the context's own check, naming the context)."""
    if context and prompt_tokens < context:
        max_length = min(max_length, context)
    return max_length - prompt_tokens


def check_room(gen: Mapping, prompt_tokens: int, max_new_tokens: int) -> None:
    """Refuse a prompt that already fills generation_config.json's max_length (the length `file_defaults` gave,
    0 or less), as transformers' generate refuses it (a ValueError: input length >= max_length)."""
    if max_new_tokens < 1:
        raise GenerationError(f"a prompt of {prompt_tokens:,} tokens leaves no room under generation_config.json's "
                              f"max_length={gen['max_length']:,} (prompt + new tokens): set max_new_tokens, or raise "
                              "max_length in the file")


def file_min_tokens(gen: Mapping, max_new_tokens, prompt_tokens: int | None = None) -> int:
    """generation_config.json's min_new_tokens, else its min_length (prompt + new tokens) less the prompt's
    `prompt_tokens` where they are known (transformers' meanings), within max_new_tokens (where generate holds the
    EOS back to the end); 0 when the file names neither."""
    value = gen.get("min_new_tokens")
    if value is None and gen.get("min_length") is not None and prompt_tokens is not None:
        value = gen["min_length"] - prompt_tokens
    return min(value, max_new_tokens) if isinstance(value, int) and value > 0 and isinstance(max_new_tokens, int) else 0


# generation_config.json settings of transformers' generate that jaxllm does not apply, with the values that change
# nothing (transformers' defaults); the second group only applies when sampling. The encoder_ ones apply to a
# decoder-only model's prompt too (generate passes its input_ids as the encoder's).
_PROCESSORS = {"no_repeat_ngram_size": (None, 0), "encoder_no_repeat_ngram_size": (None, 0),
               "encoder_repetition_penalty": (None, 1), "bad_words_ids": (None, []), "suppress_tokens": (None, []),
               "begin_suppress_tokens": (None, []), "sequence_bias": (None, {}), "forced_bos_token_id": (None,),
               "forced_eos_token_id": (None,), "exponential_decay_length_penalty": (None,), "num_beams": (None, 1),
               "penalty_alpha": (None, 0), "num_return_sequences": (None, 1), "stop_strings": (None, [], ""),
               "max_time": (None,), "remove_invalid_values": (None, False), "guidance_scale": (None, 1),
               "token_healing": (None, False), "dola_layers": (None,), "force_words_ids": (None,), "constraints": (None,),
               "watermarking_config": (None,)}
_WARPERS = {"typical_p": (None, 1), "epsilon_cutoff": (None, 0), "eta_cutoff": (None, 0), "top_h": (None,)}
_warned: set[str] = set()


def _neutral(value, neutral: tuple) -> bool:
    """Whether `value` is one of the `neutral` ones (by ==; an array, or anything == cannot answer, is not)."""
    try:
        return any(bool(value == n) if n is not None else value is None for n in neutral)
    except (TypeError, ValueError):
        return False


def warn_unapplied(gen: Mapping, sampled: bool, length_unset: bool, min_unset: bool = True,
                   prompt_known: bool = False) -> None:
    """A one-line warning (once per process and message) naming the generation_config.json
    settings that transformers' generate would apply to this request and jaxllm does not: the
    answer may differ from transformers'. max_length and min_length count only where they would set
    the length (no max_new_tokens, resp. min_new_tokens / min_tokens, neither the request's nor the file's)
    and the prompt's length is not known (where it is, `file_defaults` and `file_min_tokens` apply them)."""
    names = {**_PROCESSORS, **(_WARPERS if sampled else {})}
    unapplied = [f"{k}={gen[k]!r}" for k, neutral in names.items() if k in gen and not _neutral(gen[k], neutral)]
    if not prompt_known and min_unset and gen.get("min_new_tokens") is None and gen.get("min_length"):
        unapplied.append(f"min_length={gen['min_length']!r} (prompt + new tokens; the prompt's length is unknown here)")
    if not prompt_known and length_unset and gen.get("max_new_tokens") is None and gen.get("max_length") is not None:
        unapplied.append(f"max_length={gen['max_length']!r} (prompt + new tokens; the prompt's length is unknown here, "
                         f"so jaxllm generates max_new_tokens, default {DEFAULT_MAX_NEW_TOKENS})")
    message = (f"generation_config.json sets {', '.join(unapplied)}, which jaxllm does not apply: answers may differ "
               "from transformers' generate (set max_new_tokens, or remove the setting from the file)") if unapplied else ""
    if message and message not in _warned:
        _warned.add(message)
        log.warning(message)
