"""A tokenizer that starts without `import transformers` (about a second of every start on a small
CPU): the Rust `tokenizers` library, which transformers' fast tokenizers wrap, for token ids and
text, and jinja2 for the chat template, rendered as transformers renders it. Over the same files it
gives transformers' token ids, text and chat-template text (tests/test_startup.py); anything else
asked of it (save_pretrained, batch_decode, ...) goes to transformers' tokenizer, built on first use.

Made from a cache entry that transformers wrote (jaxllm.gguf: tokenizer.json as transformers'
tokenizer holds it, and META, what it said of itself), or around a transformers tokenizer.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any, Callable

META = "jaxllm_tokenizer.json"
_GENERATION_TAG = re.compile(r"\{\%-?\s*generation\s*-?\%\}")  # transformers' assistant-mask extension
_REASONING = ("reasoning_content", "thinking", "reasoning")  # message fields transformers renames
# Every replacement transformers' clean_up_tokenization makes: where decode gives this unchanged, it cleans nothing.
_CLEANUP_PROBE = "a . b ? c ! d , e ' f n't g 'm h 's i 've j 're k"


def transformers_version() -> str | None:
    """transformers' version, read without importing it; None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version("transformers")
    except metadata.PackageNotFoundError:
        return None


def describe(hf) -> dict:
    """What a cache entry keeps of a transformers tokenizer besides its tokenizer.json: whether
    ours can stand in for it (it is a tokenizers one, and its decode cleans up nothing) and the
    attributes ours gives."""
    backend = getattr(hf, "backend_tokenizer", None)
    fast = backend is not None
    if fast and hf.clean_up_tokenization_spaces:
        ids = backend.encode(_CLEANUP_PROBE, add_special_tokens=False).ids
        fast = hf.decode(ids) == backend.decode(ids)
    return {"fast": fast, "chat_template": hf.chat_template,
            "special_tokens_map": hf.special_tokens_map, "all_special_ids": list(hf.all_special_ids)}


def load(folder: Path, build: Callable[[], Any]):
    """The tokenizer of a cache entry: ours where it can stand in for transformers', else `build()`
    (transformers' of the entry). Raises when the entry is absent or unreadable."""
    meta = json.loads((Path(folder) / META).read_text(encoding="utf-8"))
    if not meta["fast"] or not _jinja_ok():
        return build()
    from tokenizers import Tokenizer as Backend

    return Tokenizer(Backend.from_file(str(Path(folder) / "tokenizer.json")), meta, build)


def wrap(hf):
    """Ours around a transformers tokenizer (its own backend), or that tokenizer where ours cannot
    stand in for it."""
    meta = describe(hf)
    return Tokenizer(hf.backend_tokenizer, meta, lambda: hf) if meta["fast"] and _jinja_ok() else hf


class Tokenizer:
    """transformers' tokenizer, as jaxllm uses it, over a `tokenizers.Tokenizer`: calling it and
    `encode` give token ids, `decode` text, `apply_chat_template(..., tokenize=False)` the
    template's text; other calls and attributes are transformers' tokenizer's (`transformers`),
    built on first use."""

    def __init__(self, backend, meta: dict, build: Callable[[], Any]):
        # transformers turns a tokenizer.json's own truncation and padding off for each call that does
        # not ask for them (a file saved with them on would cut prompts and pad them); off once here,
        # so encoding never changes the backend's settings (threads encode and decode at once)
        backend.no_truncation()
        backend.no_padding()
        self.backend_tokenizer = backend
        self.chat_template = meta["chat_template"]
        self.special_tokens_map = meta["special_tokens_map"]
        self.all_special_ids = meta["all_special_ids"]
        self.clean_up_tokenization_spaces = False  # describe() found that decode cleans nothing up
        self._build, self._transformers = build, None

    @property
    def transformers(self):
        """transformers' tokenizer of the same files."""
        if self._transformers is None:
            self._transformers = self._build()
        return self._transformers

    def __getattr__(self, name: str):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.transformers, name)

    def __len__(self) -> int:
        return len(self.transformers)

    def __repr__(self) -> str:
        return f"jaxllm.tokenizing.Tokenizer(vocabulary {self.backend_tokenizer.get_vocab_size()})"

    def __call__(self, text, add_special_tokens: bool = True, **kwargs):
        if kwargs or not isinstance(text, str):
            return self.transformers(text, add_special_tokens=add_special_tokens, **kwargs)
        ids = self.encode(text, add_special_tokens)
        return {"input_ids": ids, "attention_mask": [1] * len(ids)}

    def encode(self, text, add_special_tokens: bool = True, **kwargs) -> list[int]:
        if kwargs or not isinstance(text, str):
            return self.transformers.encode(text, add_special_tokens=add_special_tokens, **kwargs)
        return self.backend_tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, token_ids, skip_special_tokens: bool = False, clean_up_tokenization_spaces=None, **kwargs) -> str:
        if kwargs or clean_up_tokenization_spaces:
            return self.transformers.decode(token_ids, skip_special_tokens=skip_special_tokens,
                                            clean_up_tokenization_spaces=clean_up_tokenization_spaces, **kwargs)
        one = not hasattr(token_ids, "__len__") or getattr(token_ids, "ndim", None) == 0  # an id: int, numpy scalar, 0-d array
        ids = [int(token_ids)] if one else [int(t) for t in token_ids]
        return self.backend_tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, conversation, tokenize: bool = True, add_generation_prompt: bool = False, **kwargs):
        """The template's text for one conversation of {"role": str, "content": str} messages
        (tokenize=False, template variables of JSON values in `kwargs`) as transformers renders it;
        anything else through transformers."""
        plain = (not tokenize and all(k not in APPLY_OPTIONS and _json_plain(v) for k, v in kwargs.items())
                 and isinstance(self.chat_template, str) and isinstance(conversation, list)
                 and conversation and not _GENERATION_TAG.search(self.chat_template)
                 and all(type(m) is dict and all(type(k) is str and type(v) is str and k not in _REASONING
                                                 for k, v in m.items()) for m in conversation))
        if not plain:
            return self.transformers.apply_chat_template(conversation, tokenize=tokenize,
                                                         add_generation_prompt=add_generation_prompt, **kwargs)
        # transformers: the special tokens' map, then messages with plain copies of their values
        return _template(self.chat_template).render(**{
            **self.special_tokens_map, **kwargs, "messages": [dict(m) for m in conversation], "tools": None, "documents": None,
            "add_generation_prompt": add_generation_prompt})


# apply_chat_template's arguments that are not template variables (transformers 5.24), beside those
# jaxllm's own calls always pass (tokenize, add_generation_prompt)
APPLY_OPTIONS = ("tools", "documents", "chat_template", "continue_final_message", "sanitize_control_tokens", "padding",
                  "truncation", "max_length", "return_tensors", "return_dict", "return_assistant_tokens_mask", "tokenizer_kwargs")


def _json_plain(value) -> bool:
    """Whether a template variable is made of exact JSON types, which transformers hands the template
    as they are (its _plain_template_data rebuilds anything else)."""
    if value is None or type(value) in (str, int, float, bool):
        return True
    if type(value) is dict:
        return all(type(k) is str and _json_plain(v) for k, v in value.items())
    return type(value) is list and all(map(_json_plain, value))


def _jinja_ok() -> bool:
    """jinja2 of a version that transformers renders chat templates with (>= 3.1.6: sandbox fixes)."""
    try:
        import jinja2
    except ImportError:
        return False
    return tuple(int(p) for p in re.findall(r"\d+", jinja2.__version__)[:3]) >= (3, 1, 6)


@functools.lru_cache(maxsize=8)
def _template(source: str):
    """A chat template compiled in transformers' environment (utils/chat_template_utils.py,
    _cached_compile_jinja_template, transformers 5.24): sandboxed, trim_blocks and lstrip_blocks,
    loop controls, its tojson, raise_exception, strftime_now, dict and namespace."""
    from datetime import datetime

    import jinja2
    from jinja2.ext import loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    class TemplateDict:  # dict() and dict.fromkeys only
        def __call__(self, *args, **kwargs):
            return dict(*args, **kwargs)

        def fromkeys(self, *args, **kwargs):
            return dict.fromkeys(*args, **kwargs)

    class TemplateNamespace(jinja2.utils.Namespace):  # no underscore-prefixed attributes
        def __init__(*args, **kwargs):
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            TemplateNamespace._check_name(name)
            jinja2.utils.Namespace.__setitem__(self, name, value)

        @staticmethod
        def _check_name(name):
            if isinstance(name, str) and name.startswith("_"):
                raise jinja2.exceptions.SecurityError(f"Chat templates cannot store underscore-prefixed attributes on a "
                                                      f"namespace, but got {name!r}. Please rename the attribute.")

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = tojson
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=TemplateDict(), namespace=TemplateNamespace)
    return env.from_string(source)


def byte_reader(tokenizer) -> Callable[[int], bytes]:
    """A function from a token id to the bytes of text it stands for (what OpenAI's logprobs call
    `bytes`: a character split over tokens gives each token its part, where decode gives U+FFFD).
    Byte-level BPE tokens (GPT-2's alphabet) map their characters back to bytes; byte-fallback
    tokens (<0xE2>) are their byte, "▁" a space; other tokenizers, and tokens these rules do not
    cover, give the UTF-8 of their decoded text."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return lambda token: tokenizer.decode([token]).encode()
    kinds = _decoder_kinds(json.loads(backend.to_str()).get("decoder"))
    table = _byte_level_table() if "ByteLevel" in kinds else None
    fallback = "ByteFallback" in kinds
    special = set(getattr(tokenizer, "all_special_ids", None) or ())

    def read(token: int) -> bytes:
        piece = backend.id_to_token(int(token))
        if piece is not None and token not in special:
            if table is not None and all(c in table for c in piece):
                return bytes(table[c] for c in piece)
            if fallback and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", piece):
                return bytes([int(piece[3:5], 16)])
            if fallback or "Metaspace" in kinds:
                return piece.replace("\u2581", " ").encode()
        return backend.decode([int(token)], skip_special_tokens=False).encode()

    return read


def _decoder_kinds(decoder) -> set[str]:
    """The types of a tokenizer.json decoder and of every decoder a Sequence holds."""
    if not isinstance(decoder, dict):
        return set()
    return {decoder.get("type")} | {k for d in decoder.get("decoders") or () for k in _decoder_kinds(d)}


@functools.cache
def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable Latin-1 bytes stand for
    themselves, the other 68 for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table
