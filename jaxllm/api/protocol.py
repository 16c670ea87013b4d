"""OpenAI's wire format for jaxllm.serve: the request bodies (pydantic, strict types), their
translation into prompts and SamplingParams, and their errors as 400s (APIError: errors.py; a body
parsed, its pydantic errors as 400s: parsing.py; the structured-output fields' translation:
constraints.py; the response objects: responses.py).

Values are validated where the library validates them (`SamplingParams.resolved`, `Engine.check`);
this module checks only types and the fields that exist in the API alone (n, logprobs, ...).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, PrivateAttr, model_validator

from jaxllm.api import constraints, forced_tools, tool_checks, unserved_fields
from jaxllm.api.errors import APIError
from jaxllm.chat_template import check_template_kwargs, encode, encode_messages
from jaxllm.errors import InputError, JaxllmError, StructuredError
from jaxllm.sampling import TOP_LOGPROBS_MAX, SamplingParams
from jaxllm.structured import Structured

# -- library errors as 400s --------------------------------------------------------------------

_API_NAMES = {"max_new_tokens": "max_tokens"}  # SamplingParams field -> the API's name for it
_PARAM_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


def bad_request(err: JaxllmError, names: dict[str, str] | None = None) -> APIError:
    """A library error as a 400, in the API's names ("max_new_tokens=0 is invalid" -> param
    max_tokens); `names`: the request's own names where they differ (a chat request's
    max_completion_tokens)."""
    names = {**_API_NAMES, **(names or {})}
    message = str(err)
    for ours, theirs in names.items():
        message = message.replace(ours, theirs)
    name = str(err).split("=", 1)[0]
    if isinstance(err, InputError) and message.startswith("prompt"):  # "prompt holds no token ids", ids beyond the vocabulary
        return APIError(400, message, "prompt")
    return APIError(400, message, names.get(name, name) if name in _PARAM_FIELDS else None)


# -- requests ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_means_default(cls, data):
        """OpenAI's optional fields are nullable ("n": null, "stream": null, "presence_penalty":
        null, "logprobs": null, "echo": null are valid there): null takes the field's default.
        A required field (prompt, messages, role) stays null, and is refused as a bad value."""
        if isinstance(data, dict):
            fields = cls.model_fields
            return {k: v for k, v in data.items() if v is not None or k not in fields or fields[k].is_required()}
        return data


class StreamOptions(_Strict):
    include_usage: bool = False


class _Common(_Strict):
    """Fields both endpoints take. top_k, min_p, repetition_penalty, ignore_eos, return_token_ids,
    min_tokens, stop_token_ids, include_stop_str_in_output, skip_special_tokens and prompt_logprobs are extensions
    (vLLM's; the openai client sends them through `extra_body`). Other
    fields are kept (extra="allow") so that check() can refuse them: those of _UNSUPPORTED (unserved_fields.py) unless
    at their neutral value, NO_OP's never, any other as OpenAI's API does ("Unrecognized request
    argument supplied"): a misspelt field ("temprature": 0, "max_token": 5) was ignored, and the
    answer sampled, or ran to the end of the context, with nothing to tell the client why."""

    model_config = ConfigDict(strict=True, extra="allow")
    # OpenAI's fields of this endpoint that change no answer here (billing, storage, caching, routing), each with the
    # type OpenAI's API takes: another type is refused as it refuses it (object: not checked)
    NO_OP: ClassVar[dict[str, type]] = {"user": str}

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    return_token_ids: bool = False  # each choice (and stream chunk) carries its new tokens' ids
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: Any = None  # token ids (JSON's string keys) -> a bias in [-100, 100], as OpenAI's
    min_tokens: int = 0  # vLLM's: not generation_config.json's min_new_tokens (vLLM's server does not read it either)
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # Structured outputs (one of them): OpenAI's response_format, vLLM's guided_* and structured_outputs
    response_format: Any = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    structured_outputs: Any = None
    prompt_logprobs: int | None = None  # vLLM's: the prompt tokens' log-probabilities, ranks and k likeliest (responses.py)

    def check(self) -> None:
        """Refuse (400) what exists in the API alone and is out of range or not served here."""
        if self.n < 1:
            raise APIError(400, f"n={self.n} is invalid: use a whole number >= 1", "n")
        self._check_prompt_logprobs()
        if self.stream_options is not None and not self.stream:  # OpenAI's and vLLM's 400 too
            raise APIError(400, "stream_options is only allowed when stream is true: send stream: true, or leave "
                           "stream_options out", "stream_options")
        if self.seed is not None and not -2**63 <= self.seed < 2**63:
            raise APIError(400, f"seed={self.seed} is invalid: use a whole number that fits 64 bits", "seed")
        _check_stop(self.stop)
        unserved_fields.check(self)

    def _check_prompt_logprobs(self) -> None:
        k = self.prompt_logprobs
        if k is not None and not 0 <= k <= TOP_LOGPROBS_MAX:
            raise APIError(400, f"prompt_logprobs={k} is invalid: use a whole number from 0 to {TOP_LOGPROBS_MAX} (the most "
                           "likely tokens given beside each prompt token's own)", "prompt_logprobs")
        if k is not None and self.stream:  # vLLM's 400 too: they would go in no chunk
            raise APIError(400, "prompt_logprobs is not available with stream: true: leave one of them out", "prompt_logprobs")

    def api_names(self) -> dict[str, str]:
        """SamplingParams' field names as this request spelled them (errors name what was sent)."""
        return {}

    def refusal(self, err: JaxllmError) -> APIError:
        """A library error about this request as a 400 in its names: one about its structured output (llguidance
        compiles the grammar for the model's tokenizer as the engine takes the request: 100,000 guided_choice
        strings fail there) on the field that sent it, as constraints.one names it."""
        fields = [field for field, _ in self.constraints()] if isinstance(err, StructuredError) else []
        if fields:
            return APIError(400, f"{fields[0]}: {err}", fields[0])
        return bad_request(err, self.api_names())

    def _seed(self) -> int | None:
        if self.seed is None or 0 <= self.seed < 2**32:
            return self.seed
        return int(np.random.SeedSequence(self.seed % 2**64).generate_state(1)[0])

    def logprob_fields(self) -> dict:
        """The SamplingParams log-probability fields this request asks for (logprobs, top_logprobs, prompt_logprobs)."""
        return {}

    def constraints(self) -> list[tuple[str, Structured]]:
        """(field, Structured) of each structured-output field sent (constraints.py; at most one may be: `structured`)."""
        return constraints.sent(self)

    def structured(self) -> Structured | None:
        """The structured output asked for (checked: a 400 naming the field), or None."""
        return constraints.one(self.constraints())

    def sampling(self, generation_config: dict, max_tokens: int | None) -> list[SamplingParams]:
        """Resolved SamplingParams of each of the n choices: choice 0 samples with `seed`, choice
        i > 0 with a seed mixed from (seed, i), so that no choice repeats another request's (seed
        + 1 would be the next seed's choice 0); each a random one when no seed is given. A seed
        outside the engine's 32 bits (OpenAI and vLLM take 64-bit ones, negative too) is mixed
        down to 32 bits, the same way every time."""
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        structured = self.structured()
        logprobs = self.logprob_fields()
        if self.prompt_logprobs is not None:  # the prompt scored; one top width for both: each use takes its own k of it
            logprobs.update(prompt_logprobs=True, top_logprobs=max(logprobs.get("top_logprobs", 0), self.prompt_logprobs))
        try:
            params = SamplingParams(
                max_new_tokens=max_tokens if self.max_tokens is None else self.max_tokens, temperature=self.temperature,
                top_k=0 if self.top_k == -1 else self.top_k,  # -1: vLLM's spelling of 'no top-k'
                top_p=self.top_p, min_p=self.min_p, repetition_penalty=self.repetition_penalty, seed=self._seed(),
                presence_penalty=self.presence_penalty, frequency_penalty=self.frequency_penalty, logit_bias=self.logit_bias,
                stop=stop, ignore_eos=self.ignore_eos, **logprobs, min_tokens=self.min_tokens,
                stop_token_ids=tuple(self.stop_token_ids or ()), include_stop_str_in_output=self.include_stop_str_in_output,
                skip_special_tokens=self.skip_special_tokens, structured=structured,
            ).resolved(_server_defaults(generation_config))
        except JaxllmError as err:
            raise self.refusal(err) from None
        if self.seed is None:  # the engine draws one per sequence
            return [params] * self.n
        return [params] + [dataclasses.replace(params, seed=int(np.random.SeedSequence([params.seed, i]).generate_state(1)[0]))
                           for i in range(1, self.n)]


def _server_defaults(generation_config: dict) -> dict:
    """The generation config a request's unset values come from: the checkpoint's temperature,
    top_p, top_k, min_p and repetition penalty where it names them, else OpenAI's defaults
    (temperature 1, no top-p, top-k or min-p), as vLLM's server does; its `do_sample` is not
    read, so a request without `temperature` samples, as OpenAI's API does, instead of the
    greedy default that transformers (and jaxllm.generate) give a config without do_sample."""
    gen = dict(generation_config or {})
    return {**gen, "do_sample": True, "top_k": gen.get("top_k") or 0}


class CompletionRequest(_Common):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: int | None = None
    echo: bool = False
    suffix: str | None = None
    best_of: Any = None

    def check(self) -> None:
        super().check()
        if self.max_tokens == 0 and not self.echo:  # OpenAI's rule: the prompt alone is an answer only when echoed
            raise APIError(400, "max_tokens=0 asks for nothing without echo: ask for 1 or more, or send echo: true to get "
                           "the prompt back (with logprobs: its log-probabilities)", "max_tokens")

    def api_names(self) -> dict[str, str]:
        return {"top_logprobs": "logprobs"}

    def logprob_fields(self) -> dict:
        """logprobs k: each new token's log-probability and its k most likely; with echo, the prompt's too
        (computed for max_tokens 0 as well, which the engine serves as a prompt scored alone)."""
        asked = self.logprobs is not None
        return dict(logprobs=asked, top_logprobs=self.logprobs or 0,
                    prompt_logprobs=self.echo and (asked or self.max_tokens == 0))

    def echo_texts(self) -> list[str] | None:
        """With echo, each prompt's text (its token ids decoded for a prompt given as ids by the caller); else None."""
        return [p if isinstance(p, str) else None for p in self.batch()] if self.echo else None

    def batch(self) -> list:
        """The prompts, one an item (text or token ids), not yet encoded."""
        many = isinstance(self.prompt, list) and self.prompt and not isinstance(self.prompt[0], int)
        return self.prompt if many else [self.prompt]

    def texts(self) -> list[str]:
        """The prompts given as text (each is checked for length before it is encoded)."""
        return [p for p in self.batch() if isinstance(p, str)]

    def prompts(self, tokenizer) -> list[list[int]]:
        """Each prompt's token ids: as given, or the text encoded as plain text (no chat template)."""
        batch = self.batch()
        if any(isinstance(p, str) for p in batch) and tokenizer is None:
            raise APIError(400, "this model has no tokenizer: give the prompt as token ids", "prompt")
        return [encode(tokenizer, p, chat=False) if isinstance(p, str) else p for p in batch]


class ContentPart(_Strict):
    type: str
    text: str | None = None


class FunctionDef(_Strict):
    name: str
    description: str | None = None
    parameters: dict | None = None  # a JSON schema of type "object"; {} or none: no arguments
    strict: bool | None = None  # accepted; the schema is enforced where tool_choice forces a call (forced_tools.py)


class Tool(_Strict):
    """A tool offered to the model (OpenAI's `tools` item): given to the chat template as sent."""

    type: str
    function: FunctionDef


class CallFunction(_Strict):
    name: str
    arguments: str | dict  # OpenAI's: a JSON object as text; a dict is taken too


class ToolCall(_Strict):
    """A call an earlier assistant turn made (OpenAI's message.tool_calls item)."""

    id: str | None = None
    type: str = "function"
    function: CallFunction

    def arguments(self) -> dict:
        """The arguments as a dict, as chat templates read them (Qwen2.5's and Llama 3.1's `arguments | tojson`
        would quote a string again); ValueError when they are not a JSON object."""
        args = self.function.arguments
        if isinstance(args, str):
            args = json.loads(args)
        if not isinstance(args, dict):
            raise ValueError(f"it holds a JSON {type(args).__name__}")
        return args

    def template(self) -> dict:
        call = {"type": "function", "function": {"name": self.function.name, "arguments": self.arguments()}}
        return call if self.id is None else {"id": self.id, **call}


class Message(_Strict):
    role: str
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's calls, rendered by the chat template
    tool_call_id: str | None = None  # a tool message's: the call it answers
    function_call: Any = None  # OpenAI's deprecated form of tool_calls: refused (check)

    def text(self) -> str:
        if not isinstance(self.content, list):
            return self.content or ""
        return "\n".join(part.text or "" for part in self.content)  # as vLLM joins text parts

    def template(self) -> dict:
        """This message as transformers' chat templates read it."""
        out = {"role": ROLE_ALIASES.get(self.role, self.role), "content": self.text()}
        if self.tool_calls:
            out["tool_calls"] = [call.template() for call in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        return out


class ChatRequest(_Common):
    """A chat completion. Roles are those chat templates render (ROLES); OpenAI's 'developer'
    (the system message's newer name) is read as 'system', which templates know."""

    messages: list[Message]
    logprobs: bool = False
    top_logprobs: int | None = None
    max_completion_tokens: int | None = None  # the newer name of max_tokens
    _given_max_tokens: int | None = PrivateAttr(None)  # max_tokens as sent (model_post_init fills it from the newer name)
    NO_OP: ClassVar[dict[str, type]] = {"user": str, "metadata": dict, "store": bool, "service_tier": str, "safety_identifier": str,
                                        "prompt_cache_key": str, "prompt_cache_options": object, "prompt_cache_retention": str,
                                        "parallel_tool_calls": bool, "prediction": dict}
    tools: list[Tool] | None = None  # given to the chat template (with any tool_choice, as vLLM)
    tool_choice: Any = None  # 'none', 'auto' (the default with tools: calls are read from the answer); check()
    functions: Any = None  # these: unserved_fields.py's _UNSUPPORTED
    function_call: Any = None
    chat_template_kwargs: dict | None = None  # variables the chat template reads (vLLM's field): enable_thinking, ...
    echo: bool = False  # vLLM's: the answer's content begins with the last message's, when it is the assistant's

    def model_post_init(self, _context) -> None:
        self._given_max_tokens = self.max_tokens
        if self.max_tokens is None:
            self.max_tokens = self.max_completion_tokens

    def api_names(self) -> dict[str, str]:
        newer = self._given_max_tokens is None and self.max_completion_tokens is not None
        return {"max_new_tokens": "max_completion_tokens"} if newer else {}

    def logprob_fields(self) -> dict:
        return dict(logprobs=self.logprobs, top_logprobs=self.top_logprobs or 0)

    def echoed(self) -> str:
        """With echo, the text the answer's content begins with: the last message's when it has the answer's
        role (assistant), as vLLM's echo; else ''."""
        last = self.messages[-1] if self.echo and self.messages else None
        return last.text() if last is not None and last.role == "assistant" else ""

    def check(self) -> None:
        given, newer = self._given_max_tokens, self.max_completion_tokens
        if given is not None and newer is not None and given != newer:
            raise APIError(400, f"max_tokens={given} and max_completion_tokens={newer} disagree: send one of them "
                           "(max_completion_tokens is max_tokens' newer name)", "max_completion_tokens")
        super().check()
        if self.top_logprobs and not self.logprobs:  # OpenAI's and vLLM's 400 too
            raise APIError(400, f"top_logprobs={self.top_logprobs} needs logprobs: send logprobs: true with it", "top_logprobs")
        if self.max_tokens == 0:
            name = next(iter(self.api_names().values()), "max_tokens")
            raise APIError(400, f"{name}=0 is invalid: a chat answer needs a token or more: ask for 1 or more (/v1/completions "
                           "takes 0 with echo, to score a prompt)", name)
        for i, message in enumerate(self.messages):
            if message.role not in ROLES and message.role not in ROLE_ALIASES:
                raise APIError(400, f"messages[{i}].role '{message.role}' is not a role this server takes: use "
                               f"{', '.join(ROLES)} (or developer, read as system)", f"messages[{i}].role")
            if message.content is None and message.role != "assistant":  # OpenAI's API requires it there too
                raise APIError(400, f"messages[{i}] ({message.role}) has no content: give its text as \"content\"",
                               f"messages[{i}].content")
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                where = f"messages[{i}].content[{j}]"
                if part.type != "text":
                    raise APIError(400, f"{where} is a '{part.type}' part: this server reads text only: give text parts "
                                   '({"type": "text", "text": "..."}) or the content as a string', f"{where}.type")
                if part.text is None:
                    raise APIError(400, f'{where} is a text part without text: add its text ("text": "...")', f"{where}.text")
            if message.function_call is not None:
                raise APIError(400, f"messages[{i}].function_call is OpenAI's deprecated form of tool_calls: send the call "
                               "as tool_calls", f"messages[{i}].function_call")
            for j, call in enumerate(message.tool_calls or []):
                where = f"messages[{i}].tool_calls[{j}]"
                if call.type != "function":
                    raise APIError(400, f"{where}.type '{call.type}' is not a call this server knows: use \"function\"",
                                   f"{where}.type")
                try:
                    call.arguments()
                except ValueError as err:
                    raise APIError(400, f"{where}.function.arguments is not a JSON object ({err}): send the arguments the "
                                   "call was made with, as the API returned them", f"{where}.function.arguments") from None
            if message.role == "tool" and not message.tool_call_id:
                raise APIError(400, f"messages[{i}] (tool) has no tool_call_id: give the id of the call it answers",
                               f"messages[{i}].tool_call_id")
        tool_checks.check(self.tools, self.tool_choice)

    def constraints(self) -> list[tuple[str, Structured]]:
        """Besides the structured-output fields: tool_choice 'required' or a named function (forced_tools.py)."""
        forced = self.tools and forced_tools.forces(self.tool_choice)
        return super().constraints() + ([("tool_choice", forced_tools.constraint(self.tools, self.tool_choice))] if forced else [])

    def reads_tool_calls(self) -> bool:
        """Whether the answer is read for tool calls: tools offered and tool_choice 'auto' (its default with
        tools, as OpenAI's); with 'none' the tools reach the template but the answer stays text, as vLLM serves it."""
        return bool(self.tools) and self.tool_choice in (None, "auto")

    def texts(self) -> list[str]:
        """The messages' text, all of it one prompt (checked for length before it is encoded)."""
        return ["".join(m.text() for m in self.messages)]

    def prompt(self, tokenizer, template_defaults: dict | None = None) -> list[int]:
        """The messages through the tokenizer's chat template, ready for the assistant's turn, its
        variables `chat_template_kwargs` over the server's `template_defaults`."""
        if tokenizer is None or not getattr(tokenizer, "chat_template", None):
            raise APIError(400, "this model's tokenizer has no chat template: use /v1/completions", "messages")
        if not self.messages:
            raise APIError(400, "messages is empty: give at least one message", "messages")
        messages = [m.template() for m in self.messages]
        try:
            variables = {**(template_defaults or {}), **check_template_kwargs(self.chat_template_kwargs)}
        except JaxllmError as err:
            raise APIError(400, str(err), "chat_template_kwargs") from None
        try:
            return encode_messages(tokenizer, messages, variables, [t.model_dump(exclude_none=True) for t in self.tools or []])
        except JaxllmError as err:  # encode_messages: the template refused them, or does not parse
            raise APIError(400, str(err), "messages") from None


ROLES = ("system", "user", "assistant", "tool")  # those chat templates render (a tool's answer: "tool")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name of the system message; templates know only "system"


# Every choice's text is searched for each stop string at each token, on the event loop that
# serves every client: a list of 2 million stop strings held it for 2 s a token. OpenAI takes
# at most 4 strings; this leaves room for clients that send a few more (vLLM sets no limit).
MAX_STOPS = 16
MAX_STOP_CHARS = 1000


def _check_stop(stop: str | list[str] | None) -> None:
    stops = [stop] if isinstance(stop, str) else stop or []
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop holds {len(stops):,} strings, more than the {MAX_STOPS} this server takes: "
                       f"send at most {MAX_STOPS}", "stop")
    for i, s in enumerate(stops):
        if len(s) > MAX_STOP_CHARS:
            where = "stop" if isinstance(stop, str) else f"stop[{i}]"
            raise APIError(400, f"{where} is {len(s):,} characters long, more than the {MAX_STOP_CHARS:,} this server "
                           f"takes: shorten it", "stop")
