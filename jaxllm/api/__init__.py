"""OpenAI-compatible serving (`python -m jaxllm.serve`; needs the `serve` extra):

  engine_loop.py  the one thread that owns the engine: submissions and cancellations in,
                  token events out to each HTTP request's asyncio queue
  protocol.py     OpenAI's request bodies, their checks, and library errors as 400s
  parsing.py      a body into its request model; pydantic's errors as one-line 400s naming the field's path
  tool_checks.py  a chat request's tools and tool_choice checked
  unserved_fields.py  fields this server does not serve, refused unless they change nothing; misspelt names
  constraints.py  the structured-output fields (response_format, guided_*, structured_outputs) as jaxllm.Structured
  forced_tools.py tool_choice 'required' or a named function: the answer constrained to the calls, read back
  errors.py       APIError: OpenAI's error body as an exception
  responses.py    OpenAI's response objects (whole and streamed)
  tool_calls.py   tool calls read from an answer's text (--tool-call-parser), as it streams
  app.py          the Starlette app: /v1/models, /health, /v1/completions, /v1/chat/completions
"""

from jaxllm.api.app import build_app
from jaxllm.api.engine_loop import EngineLoop

__all__ = ["build_app", "EngineLoop"]
