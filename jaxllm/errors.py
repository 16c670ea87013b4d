"""User-facing errors: each message is one line naming the problem and the fix.

The CLIs print `str(error)` for these and exit non-zero (`run_cli`); anything else is a bug and
keeps its traceback. Exit codes of every command line: 0 done, 1 the command ran but found
problems (`python -m jaxllm.inspect`: mis-shaped tensors, or non-finite values with --scan),
2 bad input (a JaxllmError: one line on stderr), 130 interrupted (Ctrl-C), 143 terminated
(SIGTERM, where the command asks for it: `handle_signals`), 141 stdout closed early.
"""

import argparse
import os
import signal
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


class StructuredError(GenerationError):
    """A structured-output constraint (SamplingParams.structured) that is malformed or that llguidance cannot serve:
    the request's structured field is what to fix (a server names it)."""


class InputError(JaxllmError):
    """A value passed to a library call is not what it takes (token ids, a layer index, ...)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM raised in the main thread (`handle_signals`): the command unwinds (removing
    what it had half written) and exits with 128 + the signal number (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.exit_code = 128 + signum


_received: list[int] = []  # the signals `handle_signals` has seen


def _on_signal(signum, frame):
    _received.append(signum)
    raise Interrupted(signum)


def _quiet_interrupts(previous):
    def hook(unraisable):  # an interrupt raised where Python cannot raise: check_interrupted() acts on it
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)

    return hook


def handle_signals() -> None:
    """Make SIGTERM, and Ctrl-C where the process takes it, raise `Interrupted` in the main thread,
    and remember them: Python drops an exception raised while it runs a garbage-collection
    callback (printing "Exception ignored ..."), so a command that must not finish after a signal
    calls `check_interrupted()` before it commits. A command line calls this first."""
    _received.clear()
    signal.signal(signal.SIGTERM, _on_signal)
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where the parent ignores Ctrl-C
        signal.signal(signal.SIGINT, _on_signal)
    if not getattr(sys.unraisablehook, "jaxllm_interrupts", False):
        sys.unraisablehook = _quiet_interrupts(sys.unraisablehook)
        sys.unraisablehook.jaxllm_interrupts = True


def check_interrupted() -> None:
    """Raise `Interrupted` if a signal arrived whose exception was lost (see handle_signals)."""
    if _received:
        raise Interrupted(_received[0])


def shown(value, limit: int = 80) -> str:
    """repr(value) for a one-line message, cut to `limit` characters ('...' where cut): a request's list of
    100,000 stop strings is named by its start, not printed whole."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _first(array: np.ndarray, bad: np.ndarray) -> str:
    """'VALUE at [i, j]' of the first True of `bad` (a mask over `array`)."""
    where = tuple(int(i[0]) for i in np.nonzero(bad))
    return f"{array[where]} at {list(where) if len(where) > 1 else where[0]}"


def check_token_ids(value, vocab_size: int, what: str = "token_ids", dims: tuple[int, ...] | None = None,
                    allow_empty: bool = True):
    """`value` (a list or tuple of ids, nested or not, or a numpy integer array) as an int32 numpy
    array, or an InputError naming what is wrong: ragged nesting, values that are not whole numbers
    (floats, bools, text), ids outside the vocabulary, a number of dimensions not in `dims`, no ids
    at all (unless `allow_empty`). The one check of token ids every entry point uses."""
    if isinstance(value, (str, bytes)):
        raise InputError(f"{what} must be token ids, got text: encode it with the model's tokenizer first")
    try:
        array = np.asarray(value)
    except (ValueError, TypeError):
        array = None
    if array is not None and array.dtype == object:
        array = _whole_objects(array)
    if array is None:
        huge = _huge_int(value.tolist() if isinstance(value, np.ndarray) else value)
        if huge is not None:  # a Python int beyond int64, which numpy keeps as an object
            raise InputError(f"{what} must lie in [0, {vocab_size}), the vocabulary of this model; it holds {huge} "
                             "(check the tokenizer)")
        if isinstance(value, dict) or (isinstance(value, (list, tuple)) and any(isinstance(v, dict) for v in value)):
            raise InputError(f"{what} holds a dict (a chat message?): prompts are text or token ids; pass the "
                             "message's text (and system=...), or ids from jaxllm.chat_template.encode_messages")
        got = ("rows of different lengths or values that are not whole numbers" if isinstance(value, (list, tuple, np.ndarray))
               else f"{type(value).__name__}")
        raise InputError(f"{what} must be whole-number token ids in a list, or a list of equally long lists; got {got}")
    if dims is not None and array.ndim not in dims:
        shapes = " or ".join({1: "[seq]", 2: "[batch, seq]"}.get(d, f"{d}-D") for d in dims)
        raise InputError(f"{what} must have shape {shapes}, got shape {list(array.shape)}")
    if not array.size:
        if not allow_empty:
            raise InputError(f"{what} holds no token ids: give at least one")
        return array.astype(np.int32)
    if array.dtype.kind not in "iu":
        kind = {"b": "bool", "f": "float", "c": "complex", "U": "text", "S": "bytes"}.get(array.dtype.kind, str(array.dtype))
        raise InputError(f"{what} must hold whole-number token ids, got {kind} values: pass integers (e.g. from the tokenizer)")
    if array.dtype.kind == "u" and array.max() >= vocab_size:  # before a cast that could wrap
        raise InputError(f"{what} must lie in [0, {vocab_size}), the vocabulary of this model; it holds "
                         f"{_first(array, array >= vocab_size)} (check the tokenizer)")
    array = array.astype(np.int64)
    bad = (array < 0) | (array >= vocab_size)
    if bad.any():
        raise InputError(f"{what} must lie in [0, {vocab_size}), the vocabulary of this model; it holds "
                         f"{_first(array, bad)} (check the tokenizer)")
    return array.astype(np.int32)


def check_prompt_ids(value, cfg, what: str = "token_ids", dims: tuple[int, ...] | None = None, allow_empty: bool = True):
    """check_token_ids against the model's vocabulary, and an InputError for an id of the rows past its text tokens
    (cfg.text_vocab_size: Mllama's image tokens), which only an image gives meaning."""
    array = check_token_ids(value, cfg.vocab_size, what, dims, allow_empty)
    text = cfg.prompt_vocab
    if text < cfg.vocab_size and array.size and array.max() >= text:
        raise InputError(f"{what} holds {_first(array, array >= text)}, one of the model's image tokens (ids {text} to "
                         f"{cfg.vocab_size - 1}, past its {text} text tokens), which only an image gives meaning: jaxllm serves "
                         "text; remove it (a chat template's image placeholder)")
    return array


def _whole_objects(array: np.ndarray) -> np.ndarray | None:
    """An object array (a list mixing Python and numpy ints gives one, so does a pandas column)
    as int64 when it holds whole numbers only (no bools), else None."""
    values = array.ravel().tolist()
    if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        return None
    values = [int(v) for v in values]
    if not all(-2**63 <= v < 2**63 for v in values):
        return None  # beyond int64: _huge_int names it
    return np.array(values, np.int64).reshape(array.shape)


def _huge_int(value, depth: int = 0):
    """The first int beyond int64 in a (nested) list or tuple of ids, or None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if not -2**63 <= value < 2**63 else None
    if isinstance(value, (list, tuple)) and depth < 2:
        return next((h for v in value if (h := _huge_int(v, depth + 1)) is not None), None)
    return None


class DuplicateKey(ValueError):
    """A JSON object that gives one key twice, with different values: `json.loads` keeps the last
    silently (a config.json with two "hidden_size", a --logit-bias '{"5": 1, "5": -100}')."""

    def __init__(self, key, first, second):
        super().__init__(f"{shown(key)} twice ({shown(first, 40)}, then {shown(second, 40)})")


def unique_keys(pairs: list[tuple]) -> dict:
    """`json.loads`' object_pairs_hook: the object as a dict, or DuplicateKey for a key given twice
    with different values (the same value twice changes nothing, and is taken)."""
    out = dict(pairs)
    if len(out) < len(pairs):  # a key given twice: rare, so looked for only then
        first = {}
        for key, value in pairs:
            if key in first and first[key] != value:
                raise DuplicateKey(key, first[key], value)
            first.setdefault(key, value)
    return out


BOM = "\ufeff"  # what a "UTF-8 with BOM" text starts with


def utf8_lines(data: bytes, where: str) -> list[str]:
    """The lines of `data` (prompts read from a file or stdin), or an InputError naming the first
    line that is not UTF-8 text: '`where` line 3 is not UTF-8 text (byte 7: 0xff) ...'. A byte
    order mark at the start ("UTF-8 with BOM": Notepad, PowerShell's Out-File) is a mark, not text."""
    data = data.removeprefix(BOM.encode())
    try:  # lines end at "\n" ("\r\n" too) only: str.splitlines also breaks at U+2028, form feeds, ...
        text = data.decode("utf-8")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return [line[:-1] if line.endswith("\r") else line for line in lines]
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(f"{where} line {line} is not UTF-8 text (byte {column} of the line: 0x{data[err.start]:02x}): "
                         "save it as UTF-8") from None


def lone_surrogate(text: str) -> int | None:
    """Where `text`'s first lone surrogate is (an undecodable byte of argv, stdin or a path, as Python keeps it; a JSON
    "\\udcff"), or None: no UTF-8 text holds one, so a tokenizer, a file name or a decoded answer never matches it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        return err.start
    return None


def argv_text(text: str, what: str, fix: str = "give UTF-8 text (a terminal set to another encoding sends its bytes: check LANG)") -> str:
    """`text` from the command line, or an InputError naming its first byte that is not UTF-8: Python
    keeps argv's undecodable bytes as lone surrogates, which a tokenizer or a writer refuses deep inside."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
        raw.decode("utf-8")
    except UnicodeEncodeError as err:  # a surrogate that is no escaped byte: not from argv, but said as well
        raise InputError(f"{what} is not valid text (character {err.start + 1}): {fix}") from None
    except UnicodeDecodeError as err:
        raise InputError(f"{what} is not UTF-8 text (byte {err.start + 1}: 0x{raw[err.start]:02x}): {fix}") from None
    return text


def available_memory(device=None) -> tuple[int | None, str]:
    """(bytes a new allocation can still take, where that number comes from): what the device
    reports free (bytes_limit - bytes_in_use); for a device that reports nothing (a CPU) the
    host's available memory; None where neither is known."""
    import jax  # the errors of a command line come before JAX starts; only this needs it

    device = device or jax.local_devices()[0]  # under jax.distributed, devices()[0] may be another process's
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001 - a backend without memory statistics
        stats = {}
    if "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0)), f"{device.device_kind} {device.id}"
    return host_available_memory(), "the host"


def host_available_memory() -> int | None:
    """Bytes of memory the host can still give (Linux MemAvailable, else free pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def size_text(n: float) -> str:
    """Bytes for a message: '1.5 GB', '320.0 MB', '12 B'."""
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} PB"  # unreachable


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose usage errors are one line on stderr (exit 2), as every other error
    of the command lines: 'error: argument --batch: invalid int value: 'x' (see python -m ... --help)'."""

    def error(self, message):
        self.exit(2, printable(f"error: {message} (see {self.prog} --help)\n"))


def run_cli(body, interrupted: str = "interrupted") -> int:
    """A command line's exit code: body()'s, or 2 with the one-line message of a JaxllmError on
    stderr, or 130 on Ctrl-C (128 + the signal for an `Interrupted`), or 141 without a word when
    stdout is closed early (`... | head`), as a program killed by SIGPIPE."""
    try:
        code = body()
        sys.stdout.flush()  # here, where a closed pipe is caught, rather than at the interpreter's exit
        return code
    except JaxllmError as err:
        print(f"error: {printable(str(err))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(interrupted, file=sys.stderr)
        return getattr(err, "exit_code", 130)
    except BrokenPipeError:
        _drop_stdout()
        return 141


def printable(text: str) -> str:
    """`text` with the undecodable bytes that argv or a path carries (lone surrogates) written as \\xff: a
    stream that encodes strictly raised a UnicodeEncodeError on them while printing the error that names them."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush of a closed pipe stays quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass
