"""`biomamba generate`: text from a prompt (streamed) or a JSONL file of prompts (batched)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from biomamba.commands import ModelArgs, Progress, parse_verb_args, verb_parser
from biomamba.model.checkpoint import load_model_and_tokenizer
from biomamba.utils.io import atomic_path


@dataclass
class GenerateConfig(ModelArgs):
    prompt: str | None = None  # one prompt, streamed to stdout after itself
    file: str | None = None  # JSONL with a "prompt" field per line (completions as JSONL: stdout or OUT)
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy; above: sampling at this temperature
    top_k: int = 0  # sample among the k likeliest tokens only (0: no limit)
    top_p: float = 1.0  # nucleus sampling: the smallest set of tokens with this much probability (1: off)
    seed: int = 42  # of the sampling generator (each batch starts from it)
    stop: list[str] = field(default_factory=list)  # strings that end a completion (cut from it)
    batch_size: int = 16  # prompts decoded together (file mode)

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


class StreamPrinter:
    """Streams a completion to stdout so that what is printed in the end is exactly the completion
    ``generate_text`` returns: text that may be the start of a stop string is held back until it
    is not, nothing from a stop string on is printed, and the end (an incomplete character the
    stream waited on, for one) is printed from the final completion."""

    def __init__(self, stop: Sequence[str], out: Any = None):
        self.stop = [s for s in stop if s]
        self.out = out or sys.stdout
        self.text = ""  # everything streamed so far
        self.printed = 0  # characters of it written

    def _write(self, upto: int) -> None:
        if upto > self.printed:
            self.out.write(self.text[self.printed:upto])
            self.out.flush()
            self.printed = upto

    def add(self, piece: str) -> None:
        self.text += piece
        cuts = [self.text.index(s) for s in self.stop if s in self.text]
        if cuts:
            self._write(min(cuts))
            return
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.text.endswith(s[:k])), default=0)
        self._write(len(self.text) - hold)

    def finish(self, completion: str) -> None:
        if completion.startswith(self.text[:self.printed]):
            self.text = completion
            self._write(len(completion))


def generate_batched(model: Any, tokenizer: Any, prompts: Sequence[str], sampling: Any, batch_size: int,
                     progress: Progress | None = None) -> list[str]:
    """Completions of ``prompts``, ``batch_size`` at a time (the file mode, and ``biomamba.load(...).generate``)."""
    from biomamba.generate import generate_text

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        out.extend(generate_text(model, tokenizer, list(prompts[start:start + batch_size]), sampling))
        if progress is not None:
            progress.set(len(out))
    return out


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
        sys.stdout.write(cfg.prompt)
        printer = StreamPrinter(cfg.stop)
        (completion,) = generate_text(model, tokenizer, [cfg.prompt], sampling,
                                      on_text=lambda _, text: printer.add(text))
        printer.finish(completion)
        sys.stdout.write("\n")
        return 0
    prompts = read_prompts(Path(cfg.file))
    with Progress("generate", total=len(prompts), unit="prompts") as progress:
        completions = generate_batched(model, tokenizer, prompts, sampling, cfg.batch_size, progress)
    records = [{"prompt": p, "completion": c} for p, c in zip(prompts, completions)]
    lines = "".join(json.dumps(r) + "\n" for r in records)
    if v.out is None:
        sys.stdout.write(lines)
    else:
        v.out.mkdir(parents=True, exist_ok=True)
        with atomic_path(v.out / "generations.jsonl") as tmp:
            tmp.write_text(lines)
        print(f"wrote {len(records)} completions to {v.out / 'generations.jsonl'}")
    return 0
