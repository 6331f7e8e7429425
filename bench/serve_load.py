"""Load generator for `biomamba serve`: many concurrent OpenAI clients, half streaming.

    python bench/serve_load.py                      # starts a tiny random-weight model itself
    python bench/serve_load.py --url http://127.0.0.1:8000 --model-name NAME

Without ``--url`` it writes a random-weight checkpoint of ``--preset`` (default ``tiny``: d_model
64, 2 layers, 3.3 M parameters of which 3.2 M are the 50,277-token GPT-NeoX embedding) with the
GPT-NeoX tokenizer into a temporary directory and runs ``biomamba serve`` on it in a subprocess, so the clients and the server do
not share an interpreter. On a CPU with a tiny model this measures the server's scheduling
and HTTP path (queueing, batching, streaming), not the speed of a real model.

Every client sends ``--requests`` completions one after another (odd clients stream, even
ones wait for the whole answer), with ``ignore_eos`` so that each asks for exactly
``--max-tokens`` tokens, and no retries: a failure is counted, never hidden. Printed: success
rate, latency p50/p95/max (request sent → last byte), time to first token for the streams,
generated tokens per second, and the server's scheduler counters.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def start_server(args: argparse.Namespace, workdir: Path) -> tuple[subprocess.Popen, str]:
    """A random-weight ``--preset`` checkpoint served by ``biomamba serve`` in a subprocess."""
    sys.path.insert(0, str(REPO))
    import torch

    from biomamba.data.tokenizer import load_tokenizer
    from biomamba.model import MambaLM, model_preset, save_model

    torch.manual_seed(0)
    save_model(MambaLM(model_preset(args.preset)).eval(), workdir / "model", tokenizer=load_tokenizer(args.tokenizer))
    cmd = [sys.executable, "-m", "biomamba.cli", "serve", "--model", str(workdir / "model"), "--port", "0",
           f"--model_name={args.model_name}", f"--max_batch={args.max_batch}", "--device=cpu",
           *shlex.split(args.serve_args)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    line = proc.stdout.readline()
    if "serving" not in line:
        raise RuntimeError(f"the server did not start: {line}{proc.stderr.read()}")
    return proc, line.split(" on ")[1].split("/v1/")[0]


async def run_load(args: argparse.Namespace, url: str) -> dict:
    import openai

    latencies: list[float] = []
    first_token: list[float] = []
    failures: list[str] = []
    tokens = 0

    async def client_loop(client: openai.AsyncOpenAI, c: int) -> None:
        nonlocal tokens
        for r in range(args.requests):
            body = {"model": args.model_name, "prompt": f"Patient {c}.{r} was admitted with", "max_tokens":
                    args.max_tokens, "temperature": args.temperature, "extra_body": {"ignore_eos": True}}
            start = time.perf_counter()
            try:
                if c % 2:
                    stream = await client.completions.create(**body, stream=True)
                    n = 0
                    async for chunk in stream:
                        if n == 0 and chunk.choices and chunk.choices[0].text:
                            first_token.append(time.perf_counter() - start)
                        n += 1
                    tokens += args.max_tokens
                else:
                    out = await client.completions.create(**body)
                    tokens += out.usage.completion_tokens
                latencies.append(time.perf_counter() - start)
            except Exception as exc:  # noqa: BLE001 - counted and reported, the load goes on
                failures.append(f"{type(exc).__name__}: {exc}")

    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=600) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client, c) for c in range(args.clients)))
        wall = time.perf_counter() - start
    total = args.clients * args.requests
    return {"requests": total, "succeeded": len(latencies), "success_pct": 100.0 * len(latencies) / total,
            "failures": failures[:5], "wall_s": wall, "p50_s": percentile(latencies, 0.5),
            "p95_s": percentile(latencies, 0.95), "max_s": max(latencies, default=float("nan")),
            "mean_s": statistics.fmean(latencies) if latencies else float("nan"),
            "ttft_p50_s": percentile(first_token, 0.5), "ttft_p95_s": percentile(first_token, 0.95),
            "tokens_per_s": tokens / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--model-name", default="tiny")
    parser.add_argument("--preset", default="tiny", help="model preset of the random-weight model started here")
    parser.add_argument("--tokenizer", default=str(REPO.parent / "shared/data/tokenizers/gpt-neox-20b/tokenizer.json"))
    parser.add_argument("--max-batch", type=int, default=64)
    parser.add_argument("--serve-args", default="", help="more `biomamba serve` flags, e.g. '--cpu_threads=2'")
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=3, help="completions per client, one after another")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=0.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = (None, args.url) if args.url else start_server(args, Path(tmp))
        try:
            result = asyncio.run(run_load(args, url))
            try:
                with urllib.request.urlopen(url + "/metrics", timeout=30) as resp:
                    result["server"] = json.loads(resp.read())["scheduler"]
            except urllib.error.HTTPError:  # a server without /metrics (the standard-library one before it)
                result["server"] = {}
        finally:
            if proc is not None:
                proc.terminate()
                proc.wait(timeout=30)
    print(json.dumps(result, indent=2))
    s = result["server"]
    print(f"| {datetime.date.today()} | {args.clients} clients × {args.requests} | {args.max_tokens} | "
          f"{args.temperature:g} | {result['success_pct']:.1f} % | {result['p50_s'] * 1e3:.0f} / "
          f"{result['p95_s'] * 1e3:.0f} ms | {result['ttft_p50_s'] * 1e3:.0f} / {result['ttft_p95_s'] * 1e3:.0f} ms "
          f"| {result['tokens_per_s']:,.0f} | {s.get('max_running', '–')} | {s.get('steps', '–')} |")
    return 0 if result["success_pct"] == 100.0 else 1


if __name__ == "__main__":
    sys.exit(main())
