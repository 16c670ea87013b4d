"""Tokenizers come from transformers' AutoTokenizer (tokenizers and chat templates only)."""

from __future__ import annotations

from pathlib import Path

from jaxllm.errors import CheckpointError

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer, or None when it ships none. `path` is a folder or a .gguf file."""
    path = Path(path)
    try:
        from transformers import AutoTokenizer
    except ImportError:  # pragma: no cover - transformers is a dependency
        raise CheckpointError("transformers is needed for tokenizers: pip install transformers") from None
    try:
        if path.is_file():  # GGUF: transformers builds the tokenizer from the file's metadata
            return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        if not any((path / f).exists() for f in _TOKENIZER_FILES):
            return None
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:
        raise CheckpointError(f"the tokenizer in {path} could not be loaded ({type(err).__name__}: {str(err)[:200]})") from None
