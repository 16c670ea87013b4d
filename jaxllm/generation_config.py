"""generation_config.json as a request's defaults: the sampling settings transformers' generate reads from it
(its do_sample, temperature, top_k, ...: `file_defaults`), its min_new_tokens (`file_min_tokens`), and a warning
naming the settings generate would apply and jaxllm does not (`warn_unapplied`).

The dict is checked field by field as loading checks the file (models/config_fields.GENERATION_FIELDS), so a
hand-made one (`resolved({"temperature": "0.7"})`, a model's generation_config edited in place) is refused in one
line naming its field, where transformers' processors refuse it deep inside generate (a string temperature, top_k
5.0, repetition_penalty 0) or read it otherwise ("do_sample": "false" samples)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from jaxllm.models.config_fields import check_generation_config

log = logging.getLogger("jaxllm")

DEFAULT_MAX_NEW_TOKENS = 256


def file_defaults(gen: Mapping) -> dict:
    """The SamplingParams defaults `gen` (a generation_config dict, checked: a ConfigError naming a bad field) gives,
    as transformers reads it: sampling settings only where do_sample is true (null top_k: transformers' 50, top_p
    0: the top token), else greedy."""
    check_generation_config(gen)
    sampled = bool(gen.get("do_sample"))
    value = lambda name, default: default if gen.get(name) is None else gen[name]  # noqa: E731
    return dict(
        max_new_tokens=value("max_new_tokens", DEFAULT_MAX_NEW_TOKENS),
        temperature=float(value("temperature", 1.0)) if sampled else 0.0,
        top_k=value("top_k", 50) if sampled else 0,
        top_p=float(value("top_p", 1.0)) if sampled else 1.0,
        min_p=float(value("min_p", 0.0)) if sampled else 0.0,
        repetition_penalty=float(value("repetition_penalty", 1.0)),
    )


def file_min_tokens(gen: Mapping, max_new_tokens) -> int:
    """generation_config.json's min_new_tokens (transformers' meaning), within max_new_tokens (where generate
    holds the EOS back to the end); 0 when the file names none."""
    value = gen.get("min_new_tokens")
    return min(value, max_new_tokens) if isinstance(value, int) and value > 0 and isinstance(max_new_tokens, int) else 0


# generation_config.json settings of transformers' generate that jaxllm does not apply, with the
# values that change nothing (transformers' defaults); the second group only applies when sampling.
_PROCESSORS = {"min_length": (None, 0), "no_repeat_ngram_size": (None, 0),
               "bad_words_ids": (None, []), "suppress_tokens": (None, []), "begin_suppress_tokens": (None, []),
               "sequence_bias": (None, {}), "forced_bos_token_id": (None,), "forced_eos_token_id": (None,),
               "exponential_decay_length_penalty": (None,), "num_beams": (None, 1), "penalty_alpha": (None, 0),
               "stop_strings": (None, [], "")}
_WARPERS = {"typical_p": (None, 1), "epsilon_cutoff": (None, 0), "eta_cutoff": (None, 0)}
_warned: set[str] = set()


def warn_unapplied(gen: Mapping, sampled: bool, length_unset: bool) -> None:
    """A one-line warning (once per process and message) naming the generation_config.json
    settings that transformers' generate would apply to this request and jaxllm does not: the
    answer may differ from transformers'. max_length counts only where it would set the length
    (no max_new_tokens, neither the request's nor the file's)."""
    names = {**_PROCESSORS, **(_WARPERS if sampled else {})}
    unapplied = [f"{k}={gen[k]!r}" for k, neutral in names.items() if k in gen and gen[k] not in neutral]
    if length_unset and gen.get("max_new_tokens") is None and gen.get("max_length") is not None:
        unapplied.append(f"max_length={gen['max_length']!r} (prompt + new tokens; jaxllm generates max_new_tokens, "
                         f"default {DEFAULT_MAX_NEW_TOKENS})")
    message = (f"generation_config.json sets {', '.join(unapplied)}, which jaxllm does not apply: answers may differ "
               "from transformers' generate (set max_new_tokens, or remove the setting from the file)") if unapplied else ""
    if message and message not in _warned:
        _warned.add(message)
        log.warning(message)
