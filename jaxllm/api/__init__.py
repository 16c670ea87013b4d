"""OpenAI-compatible serving (`python -m jaxllm.serve`; needs the `serve` extra):

  engine_loop.py  the one thread that owns the engine: submissions and cancellations in,
                  token events out to each HTTP request's asyncio queue
  protocol.py     OpenAI's request bodies and errors
  responses.py    OpenAI's response objects (whole and streamed)
  tool_calls.py   tool calls read from an answer's text (--tool-call-parser), as it streams
  app.py          the Starlette app: /v1/models, /health, /v1/completions, /v1/chat/completions
"""

from jaxllm.api.app import build_app
from jaxllm.api.engine_loop import EngineLoop

__all__ = ["build_app", "EngineLoop"]
