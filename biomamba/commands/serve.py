"""`biomamba serve --model M --host 127.0.0.1 --port P`: an OpenAI-compatible API
(/v1/completions, /v1/chat/completions) with continuous batching; limits and timeouts are
``--key=value`` overrides (``--max_batch``, ``--read_timeout_s``, ``--chat_template`` …)."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields

import torch

from biomamba.commands import ModelArgs, parse_verb_args, verb_parser
from biomamba.model.checkpoint import load_model_and_tokenizer, resolve_checkpoint_dir
from biomamba.serve.protocol import ServeSettings


@dataclass
class ServeConfig(ServeSettings, ModelArgs):
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = ""  # the id clients pass and /v1/models lists; default: the --model value
    # torch's threads when the model is on the CPU; 0: one fewer than the cores (OMP_NUM_THREADS if
    # set). Decoding is a stream of small ops that stall whenever a core is busy (the HTTP event
    # loop, other processes): 200 clients on 2 busy cores ran 4-7x faster on 1 thread (bench/RESULTS.md)
    cpu_threads: int = 0

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required (a checkpoint directory or hub id)")
        ServeSettings.__post_init__(self)
        if self.cpu_threads < 0:
            raise ValueError("cpu_threads must be ≥ 0 (0: automatic)")


def _default_cpu_threads() -> int:
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1)  # one core left to the event loop


def main(argv: list[str]) -> int:
    from biomamba.serve import make_server

    parser = verb_parser("serve", __doc__)
    parser.add_argument("--model")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    v = parse_verb_args(parser, argv, ServeConfig, flag_fields={"model": "model", "host": "host", "port": "port"})
    cfg: ServeConfig = v.config
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.tokenizer, cfg.device, cfg.dtype, cfg.backend,
                                                cfg.state_dtype)
    if model.backbone.embedding.weight.device.type == "cpu":
        torch.set_num_threads(cfg.cpu_threads or _default_cpu_threads())
    settings = {f.name: getattr(cfg, f.name) for f in fields(ServeSettings)}
    settings["model_name"] = cfg.model_name or cfg.model
    server = make_server(model, tokenizer, cfg.host, cfg.port, checkpoint_dir=resolve_checkpoint_dir(cfg.model),
                         **settings)
    print(f"serving {cfg.model} on {server.url}/v1/completions (Ctrl-C to stop)", flush=True)
    server.serve_forever()
    return 0
