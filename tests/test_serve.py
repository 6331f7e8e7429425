"""The completions server over loopback, with a real HTTP client."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from biomamba.data.tokenizer import load_tokenizer
from biomamba.generate import SamplingConfig, generate_text
from biomamba.model import MambaLM, model_preset, save_model
from biomamba.serve import make_server
from helpers import randomize_weights


@pytest.fixture(scope="module")
def served(neox_tokenizer_path):
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=5).eval()
    tok = load_tokenizer(neox_tokenizer_path)
    server, worker = make_server(model, tok, port=0, model_name="tiny", max_new_tokens_limit=64)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    yield url, model, tok, worker
    server.shutdown()
    server.server_close()


def post(url: str, body, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url + "/v1/completions", data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.status, json.loads(resp.read())


def test_health_and_models(served):
    url = served[0]
    assert get(url + "/health") == (200, {"status": "ok", "model": "tiny"})
    status, models = get(url + "/v1/models")
    assert status == 200 and models["data"][0]["id"] == "tiny"


def test_completion_equals_local_greedy_generation(served):
    url, model, tok, _ = served
    status, text = post(url, {"prompt": "Metformin is", "max_tokens": 8, "temperature": 0})
    assert status == 200
    body = json.loads(text)
    expected = generate_text(model, tok, ["Metformin is"], SamplingConfig(max_new_tokens=8))[0]
    assert body["choices"][0]["text"] == expected
    assert body["usage"]["prompt_tokens"] == len(tok.encode("Metformin is"))
    assert body["object"] == "text_completion" and body["choices"][0]["finish_reason"] in ("length", "stop")


def test_streaming_sends_the_same_text_as_events(served):
    url = served[0]
    _, full = post(url, {"prompt": "Insulin resistance", "max_tokens": 10, "temperature": 0})
    status, raw = post(url, {"prompt": "Insulin resistance", "max_tokens": 10, "temperature": 0, "stream": True})
    assert status == 200
    events = [line[len("data: "):] for line in raw.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) >= 2 and chunks[-1]["choices"][0]["finish_reason"] is not None
    assert "".join(c["choices"][0]["text"] for c in chunks) == json.loads(full)["choices"][0]["text"]


def test_concurrent_requests_are_batched_and_answered_correctly(served):
    url, model, tok, worker = served
    prompts = [f"Case {i}: the patient" for i in range(8)]
    expected = generate_text(model, tok, prompts, SamplingConfig(max_new_tokens=6))
    before = len(worker.batches_run)
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: post(url, {"prompt": p, "max_tokens": 6, "temperature": 0}), prompts))
    assert all(status == 200 for status, _ in results)
    assert [json.loads(t)["choices"][0]["text"] for _, t in results] == expected
    assert max(worker.batches_run[before:]) > 1  # at least two requests shared a batch
    status, text = post(url, {"prompt": prompts[:3], "max_tokens": 6, "temperature": 0})
    assert [c["text"] for c in json.loads(text)["choices"]] == expected[:3]


def test_stop_string_finishes_with_stop(served):
    url = served[0]
    _, text = post(url, {"prompt": "Heparin", "max_tokens": 12, "temperature": 0})
    full = json.loads(text)["choices"][0]["text"]
    stop = full[len(full) // 2:len(full) // 2 + 3]
    _, text = post(url, {"prompt": "Heparin", "max_tokens": 12, "temperature": 0, "stop": stop})
    choice = json.loads(text)["choices"][0]
    assert choice["text"] == full[:full.index(stop)] and choice["finish_reason"] == "stop"


@pytest.mark.parametrize("body,raw,status,message", [
    (None, b"{not json", 400, "not valid JSON"),
    (None, b"", 400, "must be a JSON object"),
    ({"max_tokens": 3}, None, 400, "'prompt' must be"),
    ({"prompt": "x", "max_tokens": 10_000}, None, 400, "'max_tokens' must be between"),
    ({"prompt": "x", "temperature": "hot"}, None, 400, "'temperature' has the wrong type"),
    ({"prompt": "x", "n": 2}, None, 400, "only n = 1"),
    ({"prompt": ["a", "b"], "stream": True}, None, 400, "single prompt"),
])
def test_bad_requests_get_4xx_json_and_the_server_lives_on(served, body, raw, status, message):
    url = served[0]
    code, text = post(url, body, raw)
    assert code == status and message in json.loads(text)["error"]["message"]
    assert get(url + "/health")[0] == 200


def test_unknown_route_is_404(served):
    url = served[0]
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(url + "/v2/nothing", timeout=5)
    assert err.value.code == 404 and "error" in json.loads(err.value.read())


def test_serve_cli_starts_and_answers(tmp_path, neox_tokenizer_path):
    save_model(MambaLM(model_preset("tiny")), tmp_path / "m", tokenizer=load_tokenizer(neox_tokenizer_path))
    proc = subprocess.Popen([sys.executable, "-m", "biomamba.cli", "serve", "--model", str(tmp_path / "m"),
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert "serving" in line, proc.stderr.read() if proc.poll() is not None else line
        url = line.split(" on ")[1].split("/v1/")[0]
        assert get(url + "/health")[0] == 200
        status, text = post(url, {"prompt": "Aspirin", "max_tokens": 3})
        assert status == 200 and json.loads(text)["usage"]["completion_tokens"] <= 3
    finally:
        proc.terminate()
        proc.wait(timeout=10)
