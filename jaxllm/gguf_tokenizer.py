"""The tokenizer of a GGUF file: built by transformers' `convert_gguf_tokenizer` from the metadata
jaxllm/gguf.py parses (transformers reads that metadata itself only through a module that imports
torch), and kept on disk so later loads skip the build and the transformers import."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from jaxllm import tokenizing
from jaxllm.errors import CheckpointError
from jaxllm.gguf import read_header


def load_tokenizer(path: Path):
    """The tokenizer of a GGUF file: transformers' (or jaxllm.tokenizing's, which gives the same
    ids and text without importing transformers), built by transformers' `convert_gguf_tokenizer`
    from the metadata we read: transformers reads that metadata itself only through a module that
    imports torch, and the runtime must not need torch. Building it costs about a second, so what
    it gives is kept in TOKENIZER_CACHE (keyed by the file's path, size and mtime and the
    transformers version), and later loads read that (0.1 s, without importing transformers)."""
    fields = read_header(path).fields
    if "tokenizer.ggml.model" not in fields:  # no tokenizer in the file: as a folder without tokenizer files
        return None
    template = fields.get("tokenizer.chat_template")
    if template is not None and not isinstance(template, str):
        raise CheckpointError(f"{path.name}: GGUF tokenizer.chat_template is {type(template).__name__}, not text: the file is "
                              "damaged; re-convert it, or load with tokenizer=False and pass token ids")
    folder = _tokenizer_folder(path, tokenizing.transformers_version())

    def from_entry():
        import transformers

        kwargs = json.loads((folder / "kwargs.json").read_text(encoding="utf-8"))
        return transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **kwargs)

    try:
        return tokenizing.load(folder, from_entry)
    except Exception:  # not cached yet, or an entry that does not load (tokenizers raises bare Exceptions)
        import transformers

        backend, kwargs = _convert_tokenizer(path)
        tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)
        _save_tokenizer(folder, tok, kwargs)
        return tokenizing.wrap(tok)


TOKENIZER_CACHE = os.path.join(os.path.expanduser("~"), ".cache", "jaxllm", "tokenizers")  # or $JAXLLM_TOKENIZER_CACHE


def _tokenizer_folder(path: Path, version: str | None) -> Path:
    st = os.stat(path)
    key = f"{Path(path).resolve()}|{st.st_size}|{st.st_mtime_ns}|transformers {version}"
    root = os.environ.get("JAXLLM_TOKENIZER_CACHE") or TOKENIZER_CACHE
    return Path(root) / hashlib.sha256(key.encode()).hexdigest()[:32]


def _convert_tokenizer(path: Path):
    """(tokenizers.Tokenizer, PreTrainedTokenizerFast keyword arguments) from the file's metadata."""
    try:
        from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer
    except ImportError:  # transformers before the gguf package split
        from transformers.integrations.ggml import GGUF_TOKENIZER_MAPPING, convert_gguf_tokenizer

    fields = read_header(path).fields
    _check_vocabulary(path, fields)
    try:
        architecture, tokenizer_dict, config = _tokenizer_parts(fields, GGUF_TOKENIZER_MAPPING)
        backend, extra = convert_gguf_tokenizer(architecture, tokenizer_dict)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:  # what transformers' converter raises on odd metadata
        kind = fields.get("tokenizer.ggml.model")
        what = f"{type(err).__name__}: {str(err).splitlines()[0][:120]}" if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot build the tokenizer of {path} (tokenizer.ggml.model {kind!r}; {what}): the file's "
                              "tokenizer metadata is incomplete or of a kind transformers does not convert; use a GGUF "
                              "whose tokenizer transformers reads, or load with tokenizer=False and pass token ids") from None
    return backend, {**config, **extra}


# tokenizer.ggml.model -> the tokenizer.ggml arrays its vocabulary is built from, each as the keys any of which serves
# (transformers' converters: a byte-level vocabulary without merges has them rebuilt from its scores)
_VOCABULARY = {"llama": (("tokens",), ("scores",)), "gpt2": (("tokens",), ("merges", "scores"))}
_SPECIAL_IDS = ("bos_token_id", "eos_token_id", "unknown_token_id", "padding_token_id")


def _check_vocabulary(path: Path, fields: dict) -> None:
    """A CheckpointError naming a vocabulary array the file's tokenizer kind needs that it lacks (or
    holds as something else), or a special token id outside the vocabulary, before transformers'
    converter meets it as a bare KeyError or IndexError."""
    kind = fields.get("tokenizer.ggml.model")
    for keys in _VOCABULARY.get(kind, ()):
        if not any(isinstance(fields.get(f"tokenizer.ggml.{key}"), list) for key in keys):
            names = " or ".join(f"tokenizer.ggml.{key}" for key in keys)
            raise CheckpointError(f"{path.name}: the file's {kind!r} tokenizer has no {names} array, which it is built from: the "
                                  "file's tokenizer is incomplete; re-convert it, or load with tokenizer=False and pass token ids")
    n = len(fields.get("tokenizer.ggml.tokens") or ())
    for key in _SPECIAL_IDS:
        token_id = fields.get(f"tokenizer.ggml.{key}")
        if token_id is not None and not (isinstance(token_id, int) and 0 <= token_id < n):
            raise CheckpointError(f"{path.name}: GGUF tokenizer.ggml.{key} is {str(token_id)[:40]}, not one of the file's {n} "
                                  "token ids: the file is damaged; re-convert it, or load with tokenizer=False and pass token ids")


def _save_tokenizer(folder: Path, tok, kwargs: dict) -> None:
    """Write the cache entry (transformers' tokenizer's backend as it holds it, its keyword
    arguments and tokenizing.describe's account of it) under a temporary name and rename it, so an
    entry is complete or absent; a cache that cannot be written is skipped (the next load builds again)."""
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        tok.backend_tokenizer.save(str(tmp / "tokenizer.json"))
        (tmp / "kwargs.json").write_text(json.dumps(kwargs), encoding="utf-8")
        (tmp / tokenizing.META).write_text(json.dumps(tokenizing.describe(tok)), encoding="utf-8")
        shutil.rmtree(folder, ignore_errors=True)  # an entry that did not load
        os.replace(tmp, folder)
    except (OSError, TypeError):  # TypeError: a keyword argument JSON cannot hold
        shutil.rmtree(tmp, ignore_errors=True)


def _tokenizer_parts(fields: dict, mapping: dict) -> tuple[str, dict, dict]:
    """(architecture, tokenizer dict, tokenizer config) from a GGUF's metadata, named as `mapping`
    (transformers' GGUF_TOKENIZER_MAPPING) says."""
    groups = {group: {} for group in mapping}
    for group, renames in mapping.items():
        for key, name in renames.items():
            value = fields.get(f"tokenizer.{key}")
            if value is not None:
                groups[group][name] = value
    tokenizer, config = groups["tokenizer"], groups["tokenizer_config"]
    if tokenizer.get("tokenizer_type") == "llama":  # llama.cpp adds BOS to sentencepiece vocabularies
        config.setdefault("add_bos_token", True)
    for name in ("bos", "eos", "unk", "pad"):
        token_id = tokenizer.get(f"{name}_token_id")
        config[f"{name}_token"] = tokenizer["tokens"][token_id] if token_id is not None else None
    return fields.get("general.architecture"), tokenizer, config
