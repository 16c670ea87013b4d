"""User-facing errors: each message is one line naming the problem and the fix.

The CLIs print `str(error)` for these and exit non-zero (`run_cli`); anything else is a bug and
keeps its traceback.
"""

import sys

import numpy as np


class JaxllmError(Exception):
    """Base class of the errors a user can cause and fix (bad input, missing file, bad value)."""


class ConfigError(JaxllmError):
    """config.json is missing a field, has a bad value, or describes an unsupported model."""


class CheckpointError(JaxllmError):
    """A checkpoint cannot be found or read, or its tensors do not match the model."""


class GenerationError(JaxllmError):
    """A generation request cannot be served as asked (bad sampling value, prompt too long, ...)."""


class InputError(JaxllmError):
    """A value passed to a library call is not what it takes (token ids, a layer index, ...)."""


def check_token_ids(value, vocab_size: int, what: str = "token_ids"):
    """`value` (a list or tuple of ids, nested or not, or a numpy integer array) as an int32 numpy
    array, or an InputError naming what is wrong: ragged nesting, values that are not whole numbers,
    ids outside the vocabulary. The one check of token ids every entry point uses."""
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        raise InputError(f"{what} must be a list of token ids, or a list of equally long lists") from None
    if array.dtype == object:
        raise InputError(f"{what} must be a list of token ids, or a list of equally long lists")
    if array.size and array.dtype.kind not in "iu":
        raise InputError(f"{what} must hold whole-number token ids, got {array.dtype} values")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= vocab_size):
        raise InputError(f"{what} must lie in [0, {vocab_size}): the vocabulary of this model (check the tokenizer)")
    return array.astype(np.int32)


def run_cli(body, interrupted: str = "interrupted") -> int:
    """A command line's exit code: body()'s, or 2 with the one-line message of a JaxllmError on
    stderr, or 130 on Ctrl-C."""
    try:
        return body()
    except JaxllmError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
