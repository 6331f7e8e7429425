"""`biomamba serve --model M --host 127.0.0.1 --port P`: an OpenAI-compatible completions API."""

from __future__ import annotations

from dataclasses import dataclass

from biomamba.commands import ModelArgs, parse_verb_args, verb_parser
from biomamba.model.checkpoint import load_model_and_tokenizer


@dataclass
class ServeConfig(ModelArgs):
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str | None = None  # the id reported by /v1/models; default: the --model value
    max_batch: int = 16
    max_prompt_tokens: int = 4096
    max_new_tokens: int = 2048  # upper limit a request may ask for

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required (a checkpoint directory or hub id)")


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
    server, _ = make_server(model, tokenizer, cfg.host, cfg.port, model_name=cfg.model_name or cfg.model,
                            max_batch=cfg.max_batch, max_prompt_tokens=cfg.max_prompt_tokens,
                            max_new_tokens_limit=cfg.max_new_tokens)
    host, port = server.server_address[:2]
    print(f"serving {cfg.model} on http://{host}:{port}/v1/completions (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
