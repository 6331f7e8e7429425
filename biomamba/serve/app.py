"""The HTTP side: routes, limits, timeouts and streaming, on starlette + uvicorn.

uvicorn parses HTTP (h11), discards the unread rest of a request body before the next request
on a keep-alive connection (so an unknown route does not poison the connection), and closes
idle keep-alive connections (``idle_timeout_s``). Two things it does not do are added here: a deadline for a
request's head (``_H11WithHeadDeadline``: a client that connects and sends half a request line
is dropped after ``read_timeout_s``) and for its body (``_read_body``: 408, connection closed).

A completion is queued as one ``Row`` per prompt on the ``Scheduler`` thread; its events come
back onto the event loop in one hop per decode step. A client that leaves (a closed stream,
or a dropped connection while waiting for a non-streamed answer) cancels its rows, which leave
the batch before the next step.
"""

from __future__ import annotations

import asyncio
import functools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from biomamba.serve.protocol import (
    APIError,
    ChatTemplate,
    Sampling,
    ServeSettings,
    TokenScores,
    bad,
    completion_logprobs,
    error_body,
    load_chat_template,
    new_id,
    now,
    parse_chat,
    parse_completion,
    usage,
)
from biomamba.serve.scheduler import Failed, Finished, Overloaded, Row, Scheduler, TextDelta

# the listen queue: a burst of connections waits here instead of being reset (the standard
# library's server kept 5); the kernel caps it at net.core.somaxconn
BACKLOG = 2048


class _H11WithHeadDeadline(H11Protocol):
    """uvicorn's h11 protocol with a deadline for each request's head.

    uvicorn arms its keep-alive timer only after a response and cancels it on any byte, so a
    client that connects and never finishes its request line (or sends a byte now and then)
    would hold a connection forever. Here the head must be complete ``read_timeout_s`` after the
    connection opens, or after the first byte that follows a finished response."""

    read_timeout_s = 30.0  # set per server by a subclass
    _deadline: asyncio.TimerHandle | None = None
    _deadline_cycle: object = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.cycle is None or self.cycle.response_complete:  # these bytes begin a new request's head
            self._arm()
        super().data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._deadline is not None and self._deadline_cycle is self.cycle:
            return  # this head already has its deadline
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline_cycle = self.cycle  # a completed head replaces ``self.cycle``
        self._deadline = self.loop.call_later(self.read_timeout_s, self._overdue)

    def _overdue(self) -> None:
        self._deadline = None
        if self.cycle is self._deadline_cycle and not self.transport.is_closing():
            self.transport.close()


class _ClientGone(Exception):
    pass


def _error_response(exc: APIError) -> JSONResponse:
    headers = {"Connection": "close"} if exc.close else None
    return JSONResponse(exc.body(), status_code=exc.status, headers=headers)


async def _read_body(request: Request, settings: ServeSettings) -> bytes:
    """The whole body, within ``max_body_bytes`` and ``read_timeout_s``."""
    limit = settings.max_body_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the body is {declared} bytes; the limit is {limit}", close=True)
    chunks: list[bytes] = []

    async def read() -> None:
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise APIError(413, f"the body is over the limit of {limit} bytes", close=True)
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read(), settings.read_timeout_s)
    except asyncio.TimeoutError:
        raise APIError(408, f"the request body did not arrive within {settings.read_timeout_s:g} s",
                       close=True) from None
    except ClientDisconnect:
        raise _ClientGone from None
    return b"".join(chunks)


async def _read_json(request: Request, settings: ServeSettings) -> Any:
    raw = await _read_body(request, settings)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise bad(f"the body is not valid JSON ({exc})") from None


async def _until_disconnected(request: Request) -> None:
    """Returns when the client drops the connection (the body must have been read)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _sse(obj: Any) -> str:
    return f"data: {json.dumps(obj)}\n\n"


class _EventStream(StreamingResponse):
    """Server-sent events; ``on_close`` runs however the response ends: finished, the client
    gone (starlette cancels the stream), or cancelled before its first event."""

    def __init__(self, events: AsyncIterator[str], on_close: Any):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


class _Counting:
    """ASGI middleware: responses by status code, and streams now open, for ``/metrics``."""

    def __init__(self, app: Any, stats: dict):
        self.app, self.stats = app, stats

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        self.stats["requests"] += 1

        async def counted_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                key = str(message["status"])
                self.stats["responses_by_status"][key] = self.stats["responses_by_status"].get(key, 0) + 1
            await send(message)

        await self.app(scope, receive, counted_send)


def create_app(scheduler: Scheduler, tokenizer, settings: ServeSettings, chat_template: ChatTemplate) -> Starlette:
    """The ASGI app over a (started) ``scheduler``."""
    vocab = scheduler.vocab
    stats: dict[str, Any] = {"requests": 0, "responses_by_status": {}, "streams_open": 0}
    model_card = {"id": settings.model_name, "object": "model", "created": 0, "owned_by": "biomamba"}

    @functools.lru_cache(maxsize=65536)
    def token_text(token: int) -> str:
        return tokenizer.decode([token], skip_special_tokens=False)

    async def run_rows(request: Request, rows: list[Row]) -> list[Finished]:
        """Queue ``rows`` and wait for all of them, or for the client to leave."""
        events: asyncio.Queue = asyncio.Queue()
        for i, row in enumerate(rows):
            row.on_event = functools.partial(lambda i, e: events.put_nowait((i, e)), i)
        submit(rows)
        results: list[Finished | None] = [None] * len(rows)
        gone = asyncio.ensure_future(_until_disconnected(request))
        try:
            while any(r is None for r in results):
                get = asyncio.ensure_future(events.get())
                await asyncio.wait({get, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not get.done():
                    get.cancel()
                    raise _ClientGone
                i, event = get.result()
                if isinstance(event, Failed):
                    raise APIError(500, event.message)
                if isinstance(event, Finished):
                    results[i] = event
        finally:
            gone.cancel()
            for row in rows:
                row.cancel()  # no-op for finished rows; the others leave the batch before the next step
        return results  # type: ignore[return-value]

    def submit(rows: list[Row]) -> None:
        try:
            scheduler.submit(rows)
        except Overloaded as exc:
            raise APIError(503, f"the server is overloaded: {exc}; retry later") from None

    def stream_rows(row: Row, first: list[dict], delta: Callable[[str], dict],
                    finish: Callable[[str | None], dict], include_usage: bool) -> StreamingResponse:
        """SSE for one row: the ``first`` events, ``delta(text)`` per piece of text, ``finish(reason)``
        (and a usage event when asked), then ``[DONE]``."""
        events: asyncio.Queue = asyncio.Queue()
        row.on_event = events.put_nowait
        submit([row])
        stats["streams_open"] += 1

        async def body() -> AsyncIterator[str]:
            for event in first:
                yield _sse(event)
            while True:
                event = await events.get()
                if isinstance(event, TextDelta):
                    yield _sse(delta(event.text))
                elif isinstance(event, Finished):
                    yield _sse(finish(event.finish_reason))
                    if include_usage:  # OpenAI's form: one more chunk, no choices, the request's usage
                        yield _sse({**finish(None), "choices": [],
                                    "usage": usage(len(event.prompt_ids), len(event.completion_ids))})
                    break
                else:
                    yield _sse(error_body(event.message, "server_error"))
                    break
            yield "data: [DONE]\n\n"

        def closed() -> None:
            row.cancel()  # no-op once finished; otherwise the client left and the row leaves the batch
            stats["streams_open"] -= 1

        return _EventStream(body(), closed)

    def new_row(prompt: list[int], sampling: Sampling, stream: bool, logprobs: int | None = None, echo: bool = False) -> Row:
        return Row(prompt_ids=prompt, sampling=sampling.config(), on_event=lambda e: None, stream=stream,
                   logprobs=logprobs, echo=echo, ignore_eos=sampling.ignore_eos)

    async def completions(request: Request) -> Response:
        body = await _read_json(request, settings)
        req = await asyncio.to_thread(parse_completion, body, settings, tokenizer.encode, vocab)  # tokenising is slow
        cid, created = new_id("cmpl"), now()

        def chunk(text: str, finish: str | None = None) -> dict:
            return {"id": cid, "object": "text_completion", "created": created, "model": settings.model_name,
                    "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}

        if req.sampling.stream:
            row = new_row(req.prompts[0], req.sampling, True, echo=req.echo)
            first = [chunk(tokenizer.decode(req.prompts[0]))] if req.echo else []
            return stream_rows(row, first, chunk, lambda reason: chunk("", reason), req.sampling.include_usage)
        rows = [new_row(p, req.sampling, False, req.logprobs, req.echo) for p in req.prompts]
        finals = await run_rows(request, rows)
        choices = []
        for i, f in enumerate(finals):
            prefix = tokenizer.decode(f.prompt_ids) if req.echo else ""
            logprobs = None
            if req.logprobs is not None:
                scores = TokenScores(ids=f.completion_ids, logprobs=list(f.logprobs), top=list(f.top))
                if req.echo:
                    scores = TokenScores(ids=f.prompt_ids + scores.ids, logprobs=f.prompt_logprobs + scores.logprobs,
                                         top=f.prompt_top + scores.top)
                limit = len(prefix) + len(f.text) if f.stopped_by_string else None
                logprobs = completion_logprobs(scores, token_text, limit)
            choices.append({"text": prefix + f.text, "index": i, "logprobs": logprobs,
                            "finish_reason": f.finish_reason})
        return JSONResponse({
            "id": cid, "object": "text_completion", "created": created, "model": settings.model_name,
            "choices": choices,
            "usage": usage(sum(len(f.prompt_ids) for f in finals), sum(len(f.completion_ids) for f in finals)),
        })

    async def chat_completions(request: Request) -> Response:
        body = await _read_json(request, settings)
        req = await asyncio.to_thread(parse_chat, body, settings, chat_template, tokenizer.encode)
        cid, created = new_id("chatcmpl"), now()

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": cid, "object": "chat.completion.chunk", "created": created, "model": settings.model_name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        if req.sampling.stream:
            return stream_rows(new_row(req.prompt, req.sampling, True), [chunk({"role": "assistant", "content": ""})],
                               lambda text: chunk({"content": text}), lambda reason: chunk({}, reason),
                               req.sampling.include_usage)
        (f,) = await run_rows(request, [new_row(req.prompt, req.sampling, False)])
        return JSONResponse({
            "id": cid, "object": "chat.completion", "created": created, "model": settings.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": f.text}, "logprobs": None,
                         "finish_reason": f.finish_reason}],
            "usage": usage(len(f.prompt_ids), len(f.completion_ids)),
        })

    async def models(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": [model_card]})

    async def model(request: Request) -> Response:
        name = request.path_params["name"]
        if name != settings.model_name:
            raise APIError(404, f"the model '{name}' does not exist", param="model", code="model_not_found")
        return JSONResponse(model_card)

    async def health(request: Request) -> Response:
        m = scheduler.metrics()
        return JSONResponse({"status": "ok" if scheduler.is_alive() else "stopped", "model": settings.model_name,
                             "running": m["running"], "waiting": m["waiting"]})

    async def metrics(request: Request) -> Response:
        return JSONResponse({"scheduler": scheduler.metrics(), "http": stats})

    # vLLM's tokenizer endpoints: lm-evaluation-harness's local-completions finds them and then
    # tokenises with the served model's own tokenizer, with no hub download
    async def tokenizer_info(request: Request) -> Response:
        return JSONResponse({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": tokenizer.eos_token,
                             "bos_token": tokenizer.eos_token, "pad_token": token_text(tokenizer.pad_id),
                             "model_max_length": settings.max_prompt_tokens, "chat_template": chat_template.text})

    async def tokenize(request: Request) -> Response:
        body = await _read_json(request, settings)
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise bad("'prompt' must be a string", "prompt")
        text = body["prompt"]
        # text is never parsed for special tokens, as in completions, except the EOS token on its
        # own: clients (lm-evaluation-harness) find the EOS id by tokenising its text
        ids = [tokenizer.eos_id] if text == tokenizer.eos_token else await asyncio.to_thread(tokenizer.encode, text)
        return JSONResponse({"tokens": ids, "count": len(ids), "max_model_len": settings.max_prompt_tokens})

    async def detokenize(request: Request) -> Response:
        body = await _read_json(request, settings)
        tokens = body.get("tokens") if isinstance(body, dict) else None
        if (not isinstance(tokens, list) or len(tokens) > settings.max_prompt_tokens
                or not all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < vocab for t in tokens)):
            raise bad(f"'tokens' must be a list of at most {settings.max_prompt_tokens} ids in [0, {vocab})", "tokens")
        return JSONResponse({"prompt": tokenizer.decode(tokens)})

    async def on_api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, APIError)
        return _error_response(exc)

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        return Response(status_code=499)  # nobody reads it; the connection is gone

    async def on_http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(message, code="not_found" if exc.status_code == 404 else None),
                            status_code=exc.status_code, headers=exc.headers)

    async def on_crash(request: Request, exc: Exception) -> Response:
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"), status_code=500)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()

        def dispatch(events: list) -> None:
            for row, event in events:
                row.on_event(event)

        def deliver(events: list) -> None:  # on the scheduler's thread: one wake-up of the loop per step
            try:
                loop.call_soon_threadsafe(dispatch, events)
            except RuntimeError:  # the loop has closed: the server is gone
                pass

        scheduler.deliver = deliver
        yield
        scheduler.stop()

    routes = [
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/tokenizer_info", tokenizer_info, methods=["GET"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan, middleware=[Middleware(_Counting, stats=stats)],
                     exception_handlers={APIError: on_api_error, _ClientGone: on_client_gone,
                                         HTTPException: on_http_error, Exception: on_crash})


class Server:
    """The scheduler thread plus uvicorn. ``start()`` serves from a background thread (tests,
    benchmarks); ``serve_forever()`` serves from this one until Ctrl-C / SIGTERM."""

    def __init__(self, model, tokenizer, settings: ServeSettings, host: str = "127.0.0.1", port: int = 8000,
                 checkpoint_dir: Path | None = None):
        self.settings = settings
        self.scheduler = Scheduler(model, tokenizer, max_batch=settings.max_batch, max_waiting=settings.max_waiting,
                                   prefill_tokens_per_step=settings.prefill_tokens_per_step,
                                   fixed_slots=settings.fixed_slots)
        template = ChatTemplate(load_chat_template(settings.chat_template, checkpoint_dir), tokenizer.eos_token)
        self.app = create_app(self.scheduler, tokenizer, settings, template)
        protocol = type("H11Protocol", (_H11WithHeadDeadline,), {"read_timeout_s": settings.read_timeout_s})
        self.config = uvicorn.Config(self.app, host=host, port=port, http=protocol, lifespan="on",
                                     log_level="warning", access_log=False, backlog=BACKLOG,
                                     timeout_keep_alive=settings.idle_timeout_s,  # type: ignore[arg-type]
                                     timeout_graceful_shutdown=5)
        self.server = uvicorn.Server(self.config)
        self._socket: socket.socket | None = None
        self._thread: threading.Thread | None = None

    def bind(self) -> socket.socket:
        """The listening socket (bound on first call, so that ``port`` is known before serving)."""
        if self._socket is None:
            host = self.config.host
            self._socket = socket.create_server((host, self.config.port), backlog=BACKLOG,
                                                family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        return self._socket

    @property
    def port(self) -> int:
        return self.bind().getsockname()[1]

    @property
    def url(self) -> str:
        host = self.config.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> Server:
        sockets = [self.bind()]
        self.scheduler.start()
        self._thread = threading.Thread(target=self.server.run, args=(sockets,), daemon=True, name="biomamba-http")
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started and self._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError(f"the server did not start on {self.config.host}:{self.config.port}")
        return self

    def serve_forever(self) -> None:
        sockets = [self.bind()]
        self.scheduler.start()
        try:
            self.server.run(sockets)
        finally:
            self.scheduler.stop()

    def stop(self) -> None:
        self.scheduler.stop()  # running requests end with an error instead of holding the shutdown
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)


def make_server(model, tokenizer, host: str = "127.0.0.1", port: int = 8000, checkpoint_dir: Path | None = None,
                **settings: Any) -> Server:
    """A ``Server`` for ``model``; ``settings`` are ``ServeSettings`` fields (``model_name``,
    ``max_batch``, limits, timeouts, ``chat_template``)."""
    return Server(model, tokenizer, ServeSettings(**settings), host=host, port=port, checkpoint_dir=checkpoint_dir)
