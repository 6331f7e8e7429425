"""`biomamba generate`: text from a prompt (streamed) or a JSONL file of prompts (batched)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from biomamba.commands import ModelArgs, parse_verb_args, verb_parser
from biomamba.model.checkpoint import load_model_and_tokenizer
from biomamba.utils.io import atomic_path


@dataclass
class GenerateConfig(ModelArgs):
    prompt: str | None = None
    file: str | None = None  # JSONL with a "prompt" field per line
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 42
    stop: list[str] = field(default_factory=list)
    batch_size: int = 16

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("--model is required (a checkpoint directory or hub id)")
        if (self.prompt is None) == (self.file is None):
            raise ValueError("give exactly one of --prompt TEXT or --file prompts.jsonl")


def read_prompts(path: Path) -> list[str]:
    prompts = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
                raise ValueError(f"{path}:{lineno}: expected an object with a string field \"prompt\"")
            prompts.append(record["prompt"])
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def main(argv: list[str]) -> int:
    from biomamba.generate import SamplingConfig, generate_text

    parser = verb_parser("generate", __doc__)
    parser.add_argument("--model")
    parser.add_argument("--prompt")
    parser.add_argument("--file")
    parser.add_argument("--max-new-tokens", dest="max_new_tokens", type=int)
    v = parse_verb_args(parser, argv, GenerateConfig,
                        flag_fields={"model": "model", "prompt": "prompt", "file": "file",
                                     "max_new_tokens": "max_new_tokens"})
    cfg: GenerateConfig = v.config
    model, tokenizer = load_model_and_tokenizer(cfg.model, cfg.tokenizer, cfg.device, cfg.dtype, cfg.backend,
                                                cfg.state_dtype)
    sampling = SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                              top_p=cfg.top_p, seed=cfg.seed, stop=cfg.stop)
    if cfg.prompt is not None:
        def stream(row: int, text: str) -> None:
            sys.stdout.write(text)
            sys.stdout.flush()

        sys.stdout.write(cfg.prompt)
        generate_text(model, tokenizer, [cfg.prompt], sampling, on_text=stream)
        sys.stdout.write("\n")
        return 0
    prompts = read_prompts(Path(cfg.file))
    records = []
    for start in range(0, len(prompts), cfg.batch_size):
        batch = prompts[start:start + cfg.batch_size]
        for prompt, completion in zip(batch, generate_text(model, tokenizer, batch, sampling)):
            records.append({"prompt": prompt, "completion": completion})
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if v.out is None:
        sys.stdout.write(lines)
    else:
        v.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(v.out / "generations.jsonl") as tmp:
            tmp.write_text(lines)
        print(f"wrote {len(records)} completions to {v.out / 'generations.jsonl'}")
    return 0
