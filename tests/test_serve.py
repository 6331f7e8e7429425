"""The OpenAI-compatible server over loopback: the real ``openai`` client (sync, async,
streaming), continuous batching, disconnects, limits, timeouts and keep-alive."""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import openai
import pytest
import torch

from biomamba.data.tokenizer import load_tokenizer
from biomamba.generate import SamplingConfig, generate_text
from biomamba.model import MambaLM, model_preset, save_model
from biomamba.serve import DEFAULT_CHAT_TEMPLATE, make_server
from biomamba.serve.protocol import DEFAULT_CHAT_STOP, ChatTemplate, load_chat_template
from biomamba.serve.scheduler import Overloaded, Row, Scheduler
from helpers import randomize_weights

READ_TIMEOUT_S = 1.0
LONG = 2000  # tokens of a request that must still be decoding while something else happens


@pytest.fixture(scope="module")
def served(neox_tokenizer_path):
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=5).eval()
    tok = load_tokenizer(neox_tokenizer_path)
    server = make_server(model, tok, port=0, model_name="tiny", max_batch=64, max_new_tokens=LONG,
                         max_prompts_per_request=8, max_body_bytes=64 * 1024, read_timeout_s=READ_TIMEOUT_S,
                         idle_timeout_s=5.0).start()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
    yield SimpleNamespace(url=server.url, port=server.port, model=model, tok=tok, server=server, client=client)
    client.close()
    server.stop()


def request(s, method: str, path: str, body=None, raw: bytes | None = None, conn=None):
    """(status, headers, parsed JSON or text) over ``conn`` (kept open by the caller) or a new connection."""
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", s.port, timeout=30)
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"} if data is not None else {})
    resp = conn.getresponse()
    text = resp.read().decode()
    if own:
        conn.close()
    try:
        return resp.status, dict(resp.getheaders()), json.loads(text)
    except json.JSONDecodeError:
        return resp.status, dict(resp.getheaders()), text


def metrics(s) -> dict:
    return request(s, "GET", "/metrics")[2]["scheduler"]


def wait_for(predicate, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def greedy(s, prompt: str, n: int, stop: list[str] | None = None) -> str:
    return generate_text(s.model, s.tok, [prompt], SamplingConfig(max_new_tokens=n, stop=stop or []))[0]


# ---- the OpenAI surface --------------------------------------------------------------------------
def test_health_models_and_metrics(served):
    status, _, health = request(served, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["model"] == "tiny"
    assert [m.id for m in served.client.models.list()] == ["tiny"]
    assert served.client.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        served.client.models.retrieve("gpt-4")
    assert {"steps", "running", "waiting", "rows_cancelled", "rows_joined_running_batch"} <= set(metrics(served))


def test_completion_equals_local_greedy_generation(served):
    out = served.client.completions.create(model="tiny", prompt="Metformin is", max_tokens=8, temperature=0)
    assert out.choices[0].text == greedy(served, "Metformin is", 8)
    assert out.usage.prompt_tokens == len(served.tok.encode("Metformin is")) and out.usage.completion_tokens == 8
    assert out.object == "text_completion" and out.model == "tiny" and out.choices[0].finish_reason == "length"


def test_sampling_with_a_seed_equals_local_sampling(served):
    # each row samples from its own seeded generator, so batching with others does not change it
    cfg = SamplingConfig(max_new_tokens=10, temperature=0.8, top_p=0.9, seed=7)
    expected = generate_text(served.model, served.tok, ["Aspirin"], cfg)[0]
    got = served.client.completions.create(model="tiny", prompt="Aspirin", max_tokens=10, temperature=0.8,
                                           top_p=0.9, seed=7)
    assert got.choices[0].text == expected


def test_streaming_sends_the_same_text_as_events(served):
    full = served.client.completions.create(model="tiny", prompt="Insulin resistance", max_tokens=10,
                                            temperature=0).choices[0].text
    chunks = list(served.client.completions.create(model="tiny", prompt="Insulin resistance", max_tokens=10,
                                                   temperature=0, stream=True,
                                                   stream_options={"include_usage": True}))
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert len(texts) >= 3 and "".join(texts) == full
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 10


def test_async_client_and_several_prompts_in_one_request(served):
    prompts = [f"Case {i}: the patient" for i in range(3)]
    expected = generate_text(served.model, served.tok, prompts, SamplingConfig(max_new_tokens=6))

    async def main():
        async with openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0) as client:
            batched = await client.completions.create(model="tiny", prompt=prompts, max_tokens=6, temperature=0)
            stream = await client.completions.create(model="tiny", prompt=prompts[0], max_tokens=6, temperature=0,
                                                     stream=True)
            streamed = "".join([c.choices[0].text async for c in stream])
            return batched, streamed

    batched, streamed = asyncio.run(main())
    assert [c.text for c in sorted(batched.choices, key=lambda c: c.index)] == expected
    assert streamed == expected[0]


def test_stop_string_ends_with_stop_and_is_never_streamed(served):
    full = greedy(served, "Heparin", 12)
    stop = full[len(full) // 2:len(full) // 2 + 3]
    out = served.client.completions.create(model="tiny", prompt="Heparin", max_tokens=12, temperature=0, stop=stop)
    assert out.choices[0].text == full[:full.index(stop)] and out.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in served.client.completions.create(
        model="tiny", prompt="Heparin", max_tokens=12, temperature=0, stop=[stop], stream=True))
    assert streamed == full[:full.index(stop)]


def test_two_hundred_concurrent_clients_all_succeed(served):
    prompts = [f"Patient {i} presented with" for i in range(200)]

    async def one(client, i: int) -> str:
        if i % 2:  # half stream, half wait for the whole answer
            stream = await client.completions.create(model="tiny", prompt=prompts[i], max_tokens=6, temperature=0,
                                                     stream=True)
            return "".join([c.choices[0].text async for c in stream])
        out = await client.completions.create(model="tiny", prompt=prompts[i], max_tokens=6, temperature=0)
        return out.choices[0].text

    async def main():
        async with openai.AsyncOpenAI(base_url=served.url + "/v1", api_key="unused", max_retries=0,
                                      timeout=120) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)), return_exceptions=True)

    before = metrics(served)["max_running"]
    results = asyncio.run(main())
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} of 200 failed, e.g. {failures[0]!r}"
    assert results[:4] == generate_text(served.model, served.tok, prompts[:4], SamplingConfig(max_new_tokens=6))
    assert max(before, metrics(served)["max_running"]) > 1  # they were decoded together


def test_a_burst_of_raw_connections_is_queued_not_reset(served):
    # the standard library's server had a listen queue of 5: a burst of connects got resets
    barrier = threading.Barrier(100)
    statuses: list = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=60)
        barrier.wait()
        try:
            statuses.append(request(served, "POST", "/v1/completions",
                                    {"prompt": f"Dose {i}", "max_tokens": 2, "temperature": 0}, conn=conn)[0])
        except OSError as exc:
            statuses.append(repr(exc))
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 100


# ---- continuous batching and disconnects ----------------------------------------------------------
def test_a_later_short_request_finishes_while_a_long_one_decodes(served):
    before = metrics(served)
    long_done = threading.Event()
    got_first = threading.Event()

    def long_request() -> None:
        stream = served.client.completions.create(model="tiny", prompt="A long discharge summary", max_tokens=LONG,
                                                  temperature=0, stream=True, extra_body={"ignore_eos": True})
        for i, _ in enumerate(stream):
            got_first.set()
            if i == 600:  # far enough to show it kept going; closing frees its row
                break
        stream.close()
        long_done.set()

    worker = threading.Thread(target=long_request)
    worker.start()
    assert got_first.wait(30)
    short = served.client.completions.create(model="tiny", prompt="Short", max_tokens=4, temperature=0)
    long_still_running = not long_done.is_set()
    worker.join(60)
    assert short.choices[0].text == greedy(served, "Short", 4)
    assert long_still_running  # the short one did not wait for the long one's 2,000 tokens
    assert metrics(served)["rows_joined_running_batch"] > before["rows_joined_running_batch"]


def test_a_disconnected_stream_frees_its_row(served):
    assert wait_for(lambda: metrics(served)["running"] == 0)
    before = metrics(served)
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    body = json.dumps({"prompt": "Gone", "max_tokens": LONG, "temperature": 0, "stream": True, "ignore_eos": True})
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\n\r\n{body}".encode())
    received = b""
    while b"data: " not in received:  # decoding has started
        received += sock.recv(4096)
    sock.close()
    assert wait_for(lambda: metrics(served)["running"] == 0)
    after = metrics(served)
    assert after["rows_cancelled"] == before["rows_cancelled"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < LONG  # it stopped early
    assert wait_for(lambda: request(served, "GET", "/metrics")[2]["http"]["streams_open"] == 0)


def test_a_client_that_leaves_a_non_streamed_request_frees_its_row(served):
    before = metrics(served)
    sock = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    body = json.dumps({"prompt": "Gone too", "max_tokens": LONG, "temperature": 0, "ignore_eos": True})
    sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n{body}".encode())
    assert wait_for(lambda: metrics(served)["running"] == 1)
    sock.close()
    assert wait_for(lambda: metrics(served)["running"] == 0)
    after = metrics(served)
    assert after["rows_cancelled"] == before["rows_cancelled"] + 1
    assert after["tokens_generated"] - before["tokens_generated"] < LONG


def test_idle_connections_close_and_a_full_queue_gets_503(served):
    server = make_server(served.model, served.tok, port=0, model_name="tiny", max_batch=1, max_waiting=1,
                         max_new_tokens=LONG, idle_timeout_s=0.5).start()
    try:
        s = SimpleNamespace(port=server.port)
        idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        assert request(s, "GET", "/health", conn=idle)[0] == 200
        assert recv_all(idle.sock) == b""  # the server closed the idle keep-alive connection
        idle.close()
        long = {"prompt": "Busy", "max_tokens": LONG, "temperature": 0, "ignore_eos": True}
        threading.Thread(target=lambda: request(s, "POST", "/v1/completions", long), daemon=True).start()
        assert wait_for(lambda: request(s, "GET", "/metrics")[2]["scheduler"]["running"] == 1)
        threading.Thread(target=lambda: request(s, "POST", "/v1/completions", long), daemon=True).start()
        assert wait_for(lambda: request(s, "GET", "/metrics")[2]["scheduler"]["waiting"] == 1)
        status, _, out = request(s, "POST", "/v1/completions", {"prompt": "x", "max_tokens": 1})
        assert status == 503 and "overloaded" in out["error"]["message"] and out["error"]["type"] == "server_error"
    finally:
        server.stop()


def test_scheduler_refuses_rows_beyond_max_waiting(served):
    scheduler = Scheduler(served.model, served.tok, max_waiting=2)  # not started: nothing leaves the queue
    rows = [Row([1, 2], SamplingConfig(max_new_tokens=1), on_event=lambda e: None) for _ in range(3)]
    scheduler.submit(rows[:2])
    with pytest.raises(Overloaded):
        scheduler.submit(rows[2:])
    assert scheduler.metrics()["waiting"] == 2


# ---- logprobs and echo, as lm-evaluation-harness uses them ---------------------------------------
def local_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        logits = model(torch.tensor([ids]))[0, :, :model.config.vocab_size]
    return torch.log_softmax(logits.float(), -1)


def test_echo_with_logprobs_scores_the_prompt(served):
    ids = served.tok.encode("Biopsy showed adenocarcinoma of the colon")
    lp = local_logprobs(served.model, ids)
    expected = [None] + [lp[i - 1, t].item() for i, t in enumerate(ids) if i > 0]
    # max_tokens 0 (loglikelihood) and 1 (what lm-eval 0.4 sends): the prompt's scores, then the new token's
    for max_tokens in (0, 1):
        out = served.client.completions.create(model="tiny", prompt=[ids, ids[:3]], max_tokens=max_tokens,
                                               temperature=0, echo=True, logprobs=1)
        first, second = sorted(out.choices, key=lambda c: c.index)
        got = first.logprobs.token_logprobs
        assert len(got) == len(ids) + max_tokens and got[0] is None
        assert got[1:len(ids)] == pytest.approx(expected[1:], abs=1e-4)
        assert first.text.startswith(served.tok.decode(ids)) and len(second.logprobs.tokens) == 3 + max_tokens
        assert first.logprobs.text_offset[:2] == [0, len(first.logprobs.tokens[0])]
        for i, top in enumerate(first.logprobs.top_logprobs[1:], 1):  # the chosen token is always listed
            is_greedy = ids[i] == int(lp[i - 1].argmax()) if i < len(ids) else True
            assert (max(top.values()) == got[i]) == is_greedy


def test_logprobs_of_generated_tokens(served):
    out = served.client.completions.create(model="tiny", prompt="Sepsis", max_tokens=5, temperature=0, logprobs=3)
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == 5 and all(len(t) >= 3 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == out.choices[0].text
    ids = served.tok.encode("Sepsis") + served.tok.encode(out.choices[0].text)
    local = local_logprobs(served.model, ids)
    p = len(served.tok.encode("Sepsis"))
    assert lp.token_logprobs == pytest.approx([local[p - 1 + i].max().item() for i in range(5)], abs=1e-4)


def test_tokenizer_endpoints_match_the_served_tokenizer(served):
    _, _, info = request(served, "GET", "/tokenizer_info")
    assert info["eos_token"] == served.tok.eos_token and info["chat_template"] == DEFAULT_CHAT_TEMPLATE
    _, _, out = request(served, "POST", "/tokenize", {"prompt": "Tamoxifen <|endoftext|>"})
    assert out["tokens"] == served.tok.encode("Tamoxifen <|endoftext|>")  # text stays text
    assert request(served, "POST", "/tokenize", {"prompt": served.tok.eos_token})[2]["tokens"] == [served.tok.eos_id]
    assert request(served, "POST", "/detokenize", {"tokens": out["tokens"]})[2]["prompt"] == "Tamoxifen <|endoftext|>"


# ---- chat ----------------------------------------------------------------------------------------
def test_chat_uses_the_default_template_and_streams_the_same_text(served):
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Define sepsis."}]
    rendered = "System: You are terse.\nUser: Define sepsis.\nAssistant:"
    assert ChatTemplate(DEFAULT_CHAT_TEMPLATE, served.tok.eos_token).render(messages) == rendered
    out = served.client.chat.completions.create(model="tiny", messages=messages, max_tokens=12, temperature=0)
    assert out.choices[0].message.role == "assistant" and out.object == "chat.completion"
    assert out.choices[0].message.content == greedy(served, rendered, 12, stop=DEFAULT_CHAT_STOP)
    assert out.usage.prompt_tokens == len(served.tok.encode(rendered))
    chunks = list(served.client.chat.completions.create(model="tiny", messages=messages, max_tokens=12,
                                                        temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason is not None
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == out.choices[0].message.content


def test_chat_template_comes_from_the_checkpoint_or_the_option(tmp_path):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"chat_template": "{{ messages[0]['content'] }}!"}))
    assert load_chat_template(None, tmp_path) == "{{ messages[0]['content'] }}!"
    assert load_chat_template("<<{{ messages | length }}>>", tmp_path) == "<<{{ messages | length }}>>"
    assert load_chat_template(None, tmp_path / "elsewhere") == DEFAULT_CHAT_TEMPLATE
    # a template is data: the sandbox refuses attribute tricks
    with pytest.raises(Exception, match="chat template failed"):
        ChatTemplate("{{ messages.__class__.__mro__ }}", "</s>").render([{"role": "user", "content": "x"}])


# ---- validation, limits, timeouts, keep-alive ----------------------------------------------------
@pytest.mark.parametrize("body,param,message", [
    ({"prompt": "x", "temperature": 1e-300}, "temperature", "must be 0 (greedy) or between"),
    ({"prompt": "x", "temperature": 3}, "temperature", "must be 0 (greedy) or between"),
    ({"prompt": "x", "temperature": "hot"}, "temperature", "must be a number"),
    ({"prompt": "x", "top_p": 0}, "top_p", "must be in (0, 1]"),
    ({"prompt": "x", "top_p": 1.5}, "top_p", "must be in (0, 1]"),
    ({"prompt": "x", "seed": 2**70}, "seed", "between 0 and 9223372036854775807"),
    ({"prompt": "x", "seed": -1}, "seed", "between 0 and"),
    ({"prompt": "x", "max_tokens": 10_000}, "max_tokens", "between 0 and 2000"),
    ({"prompt": "x", "max_tokens": True}, "max_tokens", "must be an integer"),
    ({"prompt": "x", "n": 2}, "n", "only n = 1 is supported"),
    ({"prompt": "x", "best_of": 3}, "best_of", "only best_of = 1"),
    ({"prompt": "x", "suffix": "end"}, "suffix", "not supported"),
    ({"prompt": "x", "stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream"),
    ({"prompt": "x", "logprobs": 50}, "logprobs", "between 0 and 20"),
    ({"prompt": "x", "logprobs": 1, "stream": True}, "logprobs", "not supported with stream"),
    ({"prompt": "x", "presence_penalty": 0.5}, "presence_penalty", "not supported"),
    ({"prompt": "x", "logit_bias": {"1": 5}}, "logit_bias", "not supported"),
    ({"prompt": "x", "frobnicate": 1}, "frobnicate", "unsupported parameter 'frobnicate'"),
    ({"prompt": "x", "stop": [""]}, "stop", "non-empty strings"),
    ({"prompt": [[1, 2], [10**9]]}, "prompt", "token id outside"),
    ({"prompt": ["p"] * 9}, "prompt", "9 prompts in one request; the limit is 8"),
    ({"prompt": 3}, "prompt", "'prompt' must be"),
    ({"prompt": ["a", "b"], "stream": True}, "prompt", "single prompt"),
    ({"max_tokens": 3}, "prompt", "'prompt' must be"),
])
def test_bad_parameters_get_400_naming_the_field(served, body, param, message):
    status, _, out = request(served, "POST", "/v1/completions", body)
    assert status == 400 and out["error"]["param"] == param and message in out["error"]["message"]
    assert out["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("raw,message", [
    (b'{"prompt": "x", "temperature": NaN}', "'temperature' must be a finite number"),
    (b'{"prompt": "x", "top_p": Infinity}', "'top_p' must be a finite number"),
    (b"{not json", "not valid JSON"),
    (b"", "must be a JSON object"),
    (b'["a list"]', "must be a JSON object"),
])
def test_bad_bodies_get_400(served, raw, message):
    status, _, out = request(served, "POST", "/v1/completions", raw=raw)
    assert status == 400 and message in out["error"]["message"]


def test_openai_client_sees_400_and_404_as_its_errors(served):
    with pytest.raises(openai.BadRequestError, match="top_p"):
        served.client.completions.create(model="tiny", prompt="x", top_p=2.0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        served.client.completions.create(model="gpt-4", prompt="x")
    with pytest.raises(openai.BadRequestError, match="role"):
        served.client.chat.completions.create(model="tiny", messages=[{"role": "wizard", "content": "x"}])


def test_a_body_over_the_limit_gets_413_and_the_connection_closes(served):
    status, headers, out = request(served, "POST", "/v1/completions", {"prompt": "x" * 70_000})
    assert status == 413 and "limit" in out["error"]["message"] and headers.get("connection") == "close"


def test_unknown_route_then_completion_on_the_same_keep_alive_connection(served):
    conn = http.client.HTTPConnection("127.0.0.1", served.port, timeout=30)
    first = request(served, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2}, conn=conn)
    sock = conn.sock
    missing = request(served, "POST", "/v1/embeddings", {"input": "x" * 5000}, conn=conn)  # body never read
    wrong_method = request(served, "GET", "/v1/completions", conn=conn)
    again = request(served, "POST", "/v1/completions", {"prompt": "a", "max_tokens": 2}, conn=conn)
    assert first[0] == 200 and again[0] == 200 and conn.sock is sock  # one connection throughout
    assert missing[0] == 404 and missing[2]["error"]["message"] == "no route POST /v1/embeddings"
    assert wrong_method[0] == 405 and "error" in wrong_method[2]
    conn.close()
    # the tester's sequence with the openai client (pooled keep-alive): 200, 404, then 200 again
    assert served.client.completions.create(model="tiny", prompt="a", max_tokens=2).choices
    with pytest.raises(openai.NotFoundError, match="no route POST"):
        served.client.post("/embeddings", cast_to=object, body={"model": "tiny", "input": "x" * 5000})
    assert served.client.completions.create(model="tiny", prompt="a", max_tokens=2).choices


def recv_all(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_half_sent_requests_are_dropped_after_the_read_timeout(served):
    head_only = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    head_only.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")  # the head never ends
    body_short = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    body_short.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"prompt\"")
    silent = socket.create_connection(("127.0.0.1", served.port), timeout=30)  # connects, sends nothing
    negative = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    negative.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
    # meanwhile a normal client is served
    assert served.client.completions.create(model="tiny", prompt="ok", max_tokens=2).choices[0].text is not None
    assert recv_all(head_only) == b""  # closed by the server, no answer owed
    timed_out = recv_all(body_short)
    assert timed_out.startswith(b"HTTP/1.1 408") and b"did not arrive within" in timed_out
    assert recv_all(silent) == b""
    assert recv_all(negative).startswith(b"HTTP/1.1 400")
    for s in (head_only, body_short, silent, negative):
        s.close()


def test_thirty_half_sent_requests_do_not_block_others(served):
    stalled = []
    for _ in range(30):
        s = socket.create_connection(("127.0.0.1", served.port), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
        stalled.append(s)
    out = served.client.completions.create(model="tiny", prompt="Still served", max_tokens=3, temperature=0)
    assert out.choices[0].text == greedy(served, "Still served", 3)
    assert all(recv_all(s).startswith(b"HTTP/1.1 408") for s in stalled)  # each answered, then closed
    for s in stalled:
        s.close()


def test_serve_cli_starts_and_answers(tmp_path, neox_tokenizer_path):
    save_model(MambaLM(model_preset("tiny")), tmp_path / "m", tokenizer=load_tokenizer(neox_tokenizer_path))
    proc = subprocess.Popen([sys.executable, "-m", "biomamba.cli", "serve", "--model", str(tmp_path / "m"),
                             "--port", "0", "--model_name=tiny", "--max_batch=8"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" on ")[1].split("/v1/")[0]
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
        out = client.completions.create(model="tiny", prompt="Aspirin", max_tokens=3)
        assert out.usage.completion_tokens <= 3 and out.model == "tiny"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
    assert proc.returncode is not None
