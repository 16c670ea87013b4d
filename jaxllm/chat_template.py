"""Prompts through the tokenizer's chat template: text or a conversation to token ids, with the
template's own variables (chat_template_kwargs) checked and its failures refused in one line."""

from __future__ import annotations

from collections.abc import Mapping

from jaxllm.errors import GenerationError, InputError, shown
from jaxllm.tokenizing import APPLY_OPTIONS


def has_chat_template(tokenizer) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def check_template_inputs(tok, prompts, chat: bool, system, template_kwargs: dict) -> None:
    """A system message and template variables go through the chat template: refused in one line
    where it would not run (chat=False, no template) or token-id prompts skip it."""
    if system is not None and not isinstance(system, str):
        raise InputError(f"system must be the system message's text (a string), got {type(system).__name__}")
    for what, the, given in (("a system message", "the system message", system is not None),
                             ("chat_template_kwargs", "chat_template_kwargs", bool(template_kwargs))):
        if given and any(not isinstance(p, str) for p in prompts):  # token ids skip the template: it would be dropped
            raise GenerationError(f"{what} goes through the chat template, which token-id prompts skip: pass the "
                                  "prompt as text" + (", or put the system turn into the token ids" if system is not None else ""))
        if given and not chat:  # it would be dropped without a word
            raise GenerationError(f"{what} goes through the chat template: " + (
                f"this checkpoint's tokenizer has none; drop {the}" if not has_chat_template(tok)
                else f"drop chat=False (--no-chat), or {the}"))


def encode(tokenizer, prompt: str, *, chat: bool, system: str | None = None, template_kwargs: dict | None = None) -> list[int]:
    """Token ids of a prompt: through the chat template (as one user turn, after a system turn
    when `system` is not None, even "") when `chat`, else plain text with the tokenizer's own special tokens."""
    if chat:
        # an empty system message is a turn too: it is how a template's default system prompt is left out
        messages = ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": prompt}]
        return encode_messages(tokenizer, messages, template_kwargs)
    return list(tokenizer(prompt)["input_ids"])


# apply_chat_template's own arguments and the names it gives the template itself: not template variables
_TEMPLATE_OWN = APPLY_OPTIONS + ("messages", "conversation", "tokenize", "add_generation_prompt")


def check_template_kwargs(kwargs) -> dict:
    """`chat_template_kwargs` (variables the chat template reads, as transformers' apply_chat_template
    passes them: Qwen3's enable_thinking, gpt-oss's reasoning_effort), checked in one line; {} for None."""
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict) or not all(isinstance(k, str) and k.isidentifier() for k in kwargs):
        raise InputError(f"chat_template_kwargs must map the chat template's variable names to values, e.g. "
                         f'{{"enable_thinking": false}}, got {str(kwargs)[:80]}')
    own = [k for k in kwargs if k in _TEMPLATE_OWN]
    if own:
        raise InputError(f"chat_template_kwargs {own[0]!r} is not a template variable but how the template is applied, "
                         "which jaxllm decides: leave it out")
    return dict(kwargs)


# where a checkpoint's chat template lies (transformers reads chat_template.jinja first)
TEMPLATE_FILES = "(chat_template in tokenizer_config.json, or a GGUF's tokenizer.chat_template), or chat_template.jinja where the folder has one"


def encode_messages(tokenizer, messages: list[dict], template_kwargs: dict | None = None, tools: list[dict] | None = None) -> list[int]:
    """Token ids of a conversation ({"role", "content"} dicts; an assistant's "tool_calls", a tool's
    "tool_call_id") through the chat template, ready for the assistant's turn; `template_kwargs` the
    template's own variables (check_template_kwargs); `tools` the functions offered (OpenAI's `tools`
    items: transformers' `tools=`; a template that reads none leaves them out)."""
    import jinja2  # what transformers and jaxllm.tokenizing render templates with

    check_messages(messages, tools)
    offered = {"tools": tools} if tools else {}  # none at all: templates test `tools is not none`, and [] is not
    variables = check_template_kwargs(template_kwargs)  # its error is the caller's, not the template's
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **offered, **variables)
    except jinja2.TemplateSyntaxError as err:  # the template itself does not parse
        raise InputError(f"the tokenizer's chat template is invalid (line {err.lineno}: {err.message}): fix the template "
                         f"{TEMPLATE_FILES}, or generate without it "
                         "(--no-chat, chat=False)") from None
    except jinja2.TemplateError as err:  # the template's raise_exception(...): these messages are not for it
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise InputError(f"the chat template refused the messages: {first}") from None
    except Exception as err:  # the template failed while rendering (a TypeError inside it, ...)
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise InputError(f"the chat template failed on these messages ({type(err).__name__}: {first}): fix the template "
                         f"{TEMPLATE_FILES}, or generate without it "
                         "(--no-chat, chat=False)") from None
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def check_messages(messages, tools=None) -> None:
    """An InputError naming what is wrong with a conversation before the template renders it (whose failure would
    blame the template): not a non-empty list of dicts, a message without a role (a string) or whose content is
    neither text nor a list of parts (none only beside an assistant's tool_calls); tools not a list of dicts."""
    shape = 'a non-empty list of {"role": ..., "content": ...} dicts'
    if not isinstance(messages, (list, tuple)) or not messages:
        raise InputError(f"messages must be {shape}, got {shown(messages, 60)}")
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise InputError(f"messages[{i}] must be a dict with a role and content, got {shown(m, 60)}")
        role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or not role:
            raise InputError(f'messages[{i}] needs a "role", a string ("system", "user", "assistant", "tool"), got '
                             f"{shown(role, 40)}")
        if content is None and not m.get("tool_calls"):
            raise InputError(f'messages[{i}] ({role}) has no content: give its text as "content"')
        if content is not None and not isinstance(content, (str, list)):
            raise InputError(f"messages[{i}].content must be text (a string) or a list of parts, got {type(content).__name__} "
                             f"{shown(content, 40)}")
    if tools is not None and (not isinstance(tools, (list, tuple)) or not all(isinstance(t, Mapping) for t in tools)):
        raise InputError(f'tools must be a list of tool dicts ({{"type": "function", "function": {{"name": ...}}}}), got '
                         f"{shown(tools, 60)}")
