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
            from jaxllm import gguf

            return gguf.load_tokenizer(path)
        if not any((path / f).exists() for f in _TOKENIZER_FILES):
            return None
        return AutoTokenizer.from_pretrained(str(path))
    except Exception as err:
        raise CheckpointError(f"the tokenizer in {path} could not be loaded ({type(err).__name__}: {str(err)[:200]})") from None


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def encode(tokenizer, prompt: str, *, chat: bool, system: str | None = None) -> list[int]:
    """Token ids of a prompt: through the chat template (as one user turn, after an optional
    system turn) when `chat`, else plain text with the tokenizer's own special tokens."""
    if chat:
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])
    return list(tokenizer(prompt)["input_ids"])


class TextStream:
    """Incremental detokenization for one sequence, with stop strings.

    `push(tokens)` returns only text that is final: never half of a multi-byte character (the
    decoder shows those as U+FFFD until the rest arrives) and never a tail that might still grow
    into a stop string. A stop string ends the text just before it.
    """

    def __init__(self, tokenizer, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.stop = tuple(stop)
        self.tokens: list[int] = []
        self.text = ""  # everything decoded so far, stop string excluded once found
        self.emitted = 0
        self.stopped = False

    def push(self, tokens: list[int]) -> str:
        if self.stopped:
            return ""
        self.tokens += tokens
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
        hits = [text.find(s) for s in self.stop if s in text]
        if hits:
            self.text, self.stopped = text[: min(hits)], True
            return self.flush()
        self.text = text
        safe = len(text)
        while safe > self.emitted and text[safe - 1] == "\ufffd":
            safe -= 1
        for s in self.stop:  # hold back a tail that is the start of a stop string
            for k in range(min(len(s) - 1, safe - self.emitted), 0, -1):
                if text[safe - k : safe] == s[:k]:
                    safe -= k
                    break
        out, self.emitted = text[self.emitted : safe], max(self.emitted, safe)
        return out

    def flush(self) -> str:
        """The rest of the text, at the end of the sequence."""
        out, self.emitted = self.text[self.emitted :], len(self.text)
        return out
