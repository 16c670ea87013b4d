"""The fields of a request that this server does not serve (protocol.py's _Common.check): OpenAI's
and vLLM's that it does not implement (_UNSUPPORTED), refused unless at the value that changes
nothing; those that change no answer here (a request class's NO_OP: billing, storage, caching),
refused only when of a type OpenAI's API refuses; and any other name, as OpenAI's API refuses it
("Unrecognized request argument supplied"), with the field it is likely a misspelling of."""

from __future__ import annotations

import difflib

from jaxllm.api.errors import APIError


def check(request) -> None:
    """Refuse (400) the fields of `request` (a protocol.py request, its extras kept) that this server does not serve."""
    fields, extra, no_op = type(request).model_fields, request.model_extra or {}, request.NO_OP
    known = set(fields) | set(_UNSUPPORTED) | set(no_op)
    for name in extra:
        kind = no_op.get(name, object)
        if extra[name] is not None and not isinstance(extra[name], kind):  # user: 5, parallel_tool_calls: "x"
            noun = {str: "a string", bool: "a boolean", dict: "an object"}[kind]
            raise APIError(400, f"invalid value for '{name}': OpenAI's API takes {noun} here (this server ignores the "
                           "field, which changes no answer)", name)
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.75)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise APIError(400, f"Unrecognized request argument supplied: {name}{hint}: fix its name, or leave it out",
                           name)
    for name, (neutral, fix) in _UNSUPPORTED.items():
        if name in fields:
            value = getattr(request, name)
        elif name in extra:
            value = extra[name]
        else:
            continue
        if not neutral(value, request):
            raise APIError(400, f"{name} is not supported by this server: {fix}", name)


# OpenAI's fields (and vLLM's) that this server does not implement: name -> (does this value change nothing
# (value, request), what to do instead). Each is refused (400) rather than silently ignored,
# except at the value that changes nothing, which clients may send as their default (the openai
# client itself sends only what its caller passes): best_of = n, functions [], ...
_UNSUPPORTED = {
    "suffix": (lambda v, body: not v, "leave it out; this server does not fill in the middle"),
    "best_of": (lambda v, body: v is None or (type(v) is int and v == body.n),
                "leave it out (or send n's value): choices are not ranked here; use n for more choices"),
    "functions": (lambda v, body: v in (None, []), "it is OpenAI's deprecated form of tools: send tools"),
    "function_call": (lambda v, body: v in (None, "none", "auto"), "it is OpenAI's deprecated form of tool_choice: send "
                      "tool_choice"),
    "modalities": (lambda v, body: v in (None, ["text"]), 'answers are text only: leave it out (or send ["text"])'),
    "audio": (lambda v, body: v is None, "answers are text only: leave it out"),
    "web_search_options": (lambda v, body: v is None, "it searches nothing: leave it out"),
    "moderation": (lambda v, body: v is None, "nothing is moderated here: leave it out"),
    "reasoning_effort": (lambda v, body: v is None, "the model's reasoning is not controlled here: leave it out"),
    "verbosity": (lambda v, body: v in (None, "medium"), "leave it out (or send 'medium'): ask for brevity in the messages"),
    # vLLM's extensions beside the ones served here (top_k, min_p, repetition_penalty, ignore_eos, min_tokens, ...):
    # a client written for vLLM that sends one gets a 400, not an answer that ignored it.
    "spaces_between_special_tokens": (lambda v, body: v in (None, True),
                                      "leave it out: special tokens' text is joined as the tokenizer's decode joins it"),
    "bad_words": (lambda v, body: v in (None, []), "leave it out"),
    "allowed_token_ids": (lambda v, body: v is None, "leave it out"),
    "truncate_prompt_tokens": (lambda v, body: v is None, "leave it out and shorten the prompt yourself"),
    "use_beam_search": (lambda v, body: v in (None, False), "leave it out: answers are sampled (temperature 0: greedy)"),
    "continue_final_message": (lambda v, body: v in (None, False),
                               "leave it out: a last assistant message is a finished turn, and the answer a new one"),
    "add_generation_prompt": (lambda v, body: v in (None, True), "leave it out: the answer is the assistant's next turn"),
    "chat_template": (lambda v, body: v is None, "leave it out: the model's own chat template is used"),
}
