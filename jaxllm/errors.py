"""User-facing errors: each message is one line naming the problem and the fix.

The CLIs print `str(error)` for these and exit non-zero (`run_cli`); anything else is a bug and
keeps its traceback.
"""

import sys


class JaxllmError(Exception):
    """Base class of the errors a user can cause and fix (bad input, missing file, bad value)."""


class ConfigError(JaxllmError):
    """config.json is missing a field, has a bad value, or describes an unsupported model."""


class CheckpointError(JaxllmError):
    """A checkpoint cannot be found or read, or its tensors do not match the model."""


class GenerationError(JaxllmError):
    """A generation request cannot be served as asked (bad sampling value, prompt too long, ...)."""


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
