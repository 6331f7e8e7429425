"""An OpenAI-compatible server over the recurrent decoder, with continuous batching.

Endpoints: ``POST /v1/completions`` (string, token-id or batched prompts; ``logprobs`` and
``echo`` as lm-evaluation-harness's ``local-completions`` uses them; SSE streaming),
``POST /v1/chat/completions`` (a chat template; streaming too), ``GET /v1/models``,
``GET /health``, ``GET /metrics`` (the scheduler's and the HTTP counters, JSON), and vLLM's
``/tokenizer_info``, ``/tokenize``, ``/detokenize``.

- ``protocol.py``: request validation (4xx in OpenAI's error shape, naming the field), limits,
  response bodies, the chat template.
- ``scheduler.py``: the worker thread that owns the model; requests join the running decode
  batch at the next step and leave it the step after their client does.
- ``app.py``: starlette routes on uvicorn, read / idle timeouts, streaming, disconnects.

The HTTP stack is the ``serve`` extra (``pip install 'biomamba[serve]'``); it is imported only
when ``make_server`` / ``Server`` / ``create_app`` are first used, so the rest of the package
(and ``biomamba --help``) works without it.
"""

from __future__ import annotations

from typing import Any

from biomamba.serve.protocol import DEFAULT_CHAT_TEMPLATE, APIError, ServeSettings
from biomamba.serve.scheduler import Row, Scheduler

_APP_NAMES = ("Server", "create_app", "make_server")


def __getattr__(name: str) -> Any:
    if name not in _APP_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from biomamba.serve import app
    except ModuleNotFoundError as exc:
        if exc.name in ("uvicorn", "starlette", "jinja2", "h11", "anyio"):
            raise ModuleNotFoundError(f"biomamba serve needs {exc.name}: pip install 'biomamba[serve]'",
                                      name=exc.name) from exc
        raise
    return getattr(app, name)


__all__ = ["DEFAULT_CHAT_TEMPLATE", "APIError", "Row", "Scheduler", "ServeSettings", "Server", "create_app", "make_server"]
