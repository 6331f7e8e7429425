"""An OpenAI-compatible completions server over the recurrent decoder.

Endpoints: ``GET /health``, ``GET /v1/models``, ``POST /v1/completions`` (``stream: true``
answers with server-sent events, ending in ``data: [DONE]``). Requests that arrive together
are decoded together: a single worker thread owns the model and collects whatever is queued
(up to ``max_batch``) into one batch, grouped by sampling settings. A bad request gets a 4xx
with a JSON error; a failure while decoding gets a 500 for that request only.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from biomamba.generate import SamplingConfig, generate_ids

_DONE = object()


class BadRequest(ValueError):
    pass


@dataclass
class CompletionRequest:
    prompt: str
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingConfig
    stream: bool
    events: queue.Queue = field(default_factory=queue.Queue)  # text deltas, then a final dict or an Exception


def _field(body: dict, name: str, types: type | tuple, default: Any) -> Any:
    value = body.get(name, default)
    if value is None:
        return default
    if isinstance(value, bool) and types in (int, float, (int, float)):
        raise BadRequest(f"'{name}' must be a number")
    if not isinstance(value, types):
        raise BadRequest(f"'{name}' has the wrong type")
    return value


def parse_completion_request(body: Any, tokenizer, max_prompt_tokens: int,
                             max_new_tokens_limit: int) -> list[CompletionRequest]:
    """Validate an OpenAI completions body; one CompletionRequest per prompt."""
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    prompt = body.get("prompt")
    prompts = [prompt] if isinstance(prompt, str) else prompt
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        raise BadRequest("'prompt' must be a string or a non-empty list of strings")
    if _field(body, "n", int, 1) != 1 or _field(body, "best_of", int, 1) != 1:
        raise BadRequest("only n = 1 and best_of = 1 are supported")
    max_tokens = _field(body, "max_tokens", int, 16)
    if not 0 <= max_tokens <= max_new_tokens_limit:
        raise BadRequest(f"'max_tokens' must be between 0 and {max_new_tokens_limit}")
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise BadRequest("'stop' must be a string or a list of non-empty strings")
    try:
        sampling = SamplingConfig(max_new_tokens=max_tokens, temperature=float(_field(body, "temperature", (int, float), 1.0)),
                                  top_p=float(_field(body, "top_p", (int, float), 1.0)), top_k=_field(body, "top_k", int, 0),
                                  seed=_field(body, "seed", int, 42), stop=stop)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    stream = _field(body, "stream", bool, False)
    if stream and len(prompts) > 1:
        raise BadRequest("streaming supports a single prompt per request")
    requests = []
    for p in prompts:
        ids = tokenizer.encode(p)
        if len(ids) > max_prompt_tokens:
            raise BadRequest(f"prompt has {len(ids)} tokens; the limit is {max_prompt_tokens}")
        requests.append(CompletionRequest(p, ids, max_tokens, sampling, stream))
    return requests


class BatchingWorker(threading.Thread):
    """Owns the model; decodes queued requests in batches of equal sampling settings."""

    def __init__(self, model, tokenizer, max_batch: int = 16, wait_s: float = 0.01):
        super().__init__(daemon=True)
        self.model, self.tokenizer = model, tokenizer
        self.max_batch, self.wait_s = max_batch, wait_s
        self.inbox: queue.Queue[CompletionRequest] = queue.Queue()
        self.batches_run: list[int] = []  # batch sizes, for observability and tests

    def submit(self, request: CompletionRequest) -> None:
        self.inbox.put(request)

    def run(self) -> None:
        while True:
            pending = [self.inbox.get()]
            deadline = time.monotonic() + self.wait_s
            while len(pending) < self.max_batch:
                try:
                    pending.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
                except queue.Empty:
                    break
            groups: dict[tuple, list[CompletionRequest]] = {}
            for r in pending:
                s = r.sampling
                groups.setdefault((s.temperature, s.top_k, s.top_p, s.seed), []).append(r)
            for group in groups.values():
                self._decode(group)

    def _decode(self, group: list[CompletionRequest]) -> None:
        tok = self.tokenizer
        longest = max(r.max_tokens for r in group)
        base = group[0].sampling
        sampling = SamplingConfig(max_new_tokens=longest, temperature=base.temperature, top_k=base.top_k,
                                  top_p=base.top_p, seed=base.seed)
        sent = [""] * len(group)
        hit_stop = [False] * len(group)

        def visible(row: int, ids: list[int]) -> str:
            text = tok.decode(ids)
            cuts = [text.index(s) for s in group[row].sampling.stop if s in text]
            if cuts:
                hit_stop[row] = True
                return text[:min(cuts)]
            return text

        def should_stop(row: int, ids: list[int]) -> bool:
            return len(ids) >= group[row].max_tokens or hit_stop[row]

        ids_by_row: list[list[int]] = [[] for _ in group]

        def on_token(row: int, token_id: int) -> None:
            ids = ids_by_row[row]
            ids.append(token_id)
            text = visible(row, ids)
            if group[row].stream and not text.endswith("\ufffd") and len(text) > len(sent[row]):
                group[row].events.put(text[len(sent[row]):])
                sent[row] = text

        try:
            self.batches_run.append(len(group))
            outputs = generate_ids(self.model, [r.prompt_ids for r in group], sampling, tok.eos_id,
                                   should_stop=should_stop, on_token=on_token)
        except Exception as exc:  # noqa: BLE001 - reported to each waiting client as a 500
            for r in group:
                r.events.put(exc)
            return
        for row, (r, ids) in enumerate(zip(group, outputs)):
            text = visible(row, ids)
            if r.stream and len(text) > len(sent[row]):
                r.events.put(text[len(sent[row]):])
            finish = "stop" if hit_stop[row] or len(ids) < r.max_tokens else "length"
            r.events.put({"text": text, "finish_reason": finish, "prompt_tokens": len(r.prompt_ids),
                          "completion_tokens": len(ids)})


def make_handler(worker: BatchingWorker, model_name: str, tokenizer, max_prompt_tokens: int,
                 max_new_tokens_limit: int, request_timeout_s: float):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt: str, *args: Any) -> None:  # keep prompts out of logs
            pass

        def _json(self, status: int, obj: Any) -> None:
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _error(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
            self._json(status, {"error": {"message": message, "type": kind, "code": status}})

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                self._json(200, {"status": "ok", "model": model_name})
            elif self.path == "/v1/models":
                self._json(200, {"object": "list", "data": [{"id": model_name, "object": "model",
                                                             "owned_by": "biomamba", "created": 0}]})
            else:
                self._error(404, f"no route {self.path}", "not_found")

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/v1/completions":
                self._error(404 if self.path not in ("/health", "/v1/models") else 405, f"no POST route {self.path}",
                            "not_found")
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw or b"null")
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise BadRequest(f"the body is not valid JSON ({exc})") from None
                requests = parse_completion_request(body, tokenizer, max_prompt_tokens, max_new_tokens_limit)
            except BadRequest as exc:
                self._error(400, str(exc))
                return
            except ValueError:
                self._error(400, "bad Content-Length")
                return
            for r in requests:
                worker.submit(r)
            cid, created = f"cmpl-{uuid.uuid4().hex[:24]}", int(time.time())
            if requests[0].stream:
                self._stream(requests[0], cid, created)
                return
            finals = []
            for r in requests:
                try:
                    item = self._next_final(r)
                except Exception as exc:  # noqa: BLE001
                    self._error(500, f"generation failed: {type(exc).__name__}: {exc}", "server_error")
                    return
                finals.append(item)
            usage_p = sum(f["prompt_tokens"] for f in finals)
            usage_c = sum(f["completion_tokens"] for f in finals)
            self._json(200, {
                "id": cid, "object": "text_completion", "created": created, "model": model_name,
                "choices": [{"text": f["text"], "index": i, "logprobs": None, "finish_reason": f["finish_reason"]}
                            for i, f in enumerate(finals)],
                "usage": {"prompt_tokens": usage_p, "completion_tokens": usage_c, "total_tokens": usage_p + usage_c},
            })

        def _next_final(self, r: CompletionRequest) -> dict:
            while True:
                item = r.events.get(timeout=request_timeout_s)
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, dict):
                    return item

        def _stream(self, r: CompletionRequest, cid: str, created: int) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True

            def event(text: str, finish: str | None) -> None:
                chunk = {"id": cid, "object": "text_completion", "created": created, "model": model_name,
                         "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            try:
                while True:
                    item = r.events.get(timeout=request_timeout_s)
                    if isinstance(item, Exception):
                        err = {"error": {"message": f"generation failed: {item}", "type": "server_error"}}
                        self.wfile.write(f"data: {json.dumps(err)}\n\n".encode())
                        break
                    if isinstance(item, dict):
                        event("", item["finish_reason"])
                        break
                    event(item, None)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client went away; the worker finishes the batch regardless

    return Handler


def make_server(model, tokenizer, host: str = "127.0.0.1", port: int = 8000, model_name: str = "biomamba",
                max_batch: int = 16, max_prompt_tokens: int = 4096, max_new_tokens_limit: int = 2048,
                request_timeout_s: float = 600.0) -> tuple[ThreadingHTTPServer, BatchingWorker]:
    worker = BatchingWorker(model, tokenizer, max_batch=max_batch)
    worker.start()
    handler = make_handler(worker, model_name, tokenizer, max_prompt_tokens, max_new_tokens_limit, request_timeout_s)
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server, worker
