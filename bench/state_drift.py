"""How far decoding with the SSM state stored in bf16 drifts from decoding with it in fp32, on a
trained checkpoint (``MambaLM.ssm_state_dtype``, ``--state_dtype=bfloat16``).

Two measures over the same prompts, the weights in the dtype they load in (fp32 on the CPU, so
that only the state's rounding differs):
- greedy: the tokens each state dtype decodes, and after how many the first difference comes;
- teacher-forced: the fp32-state run's tokens fed to both, the logits' relative difference and
  how often the two argmaxes differ, step by step (the drift of the state itself, without a
  changed token compounding it).

    python bench/state_drift.py --model runs/demo/adapted/best [--prompts F.jsonl] [--new 64]

Prompts default to the PubMedQA questions of the embedded demo data.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

def demo_prompts(limit: int) -> list[str]:
    from biomamba.demo_corpus import DEMO_DATA
    from biomamba.tasks.yesno import load_pubmedqa

    pubmedqa = DEMO_DATA / "pubmedqa"
    items = load_pubmedqa(pubmedqa / "demo-pqal.json", pubmedqa / "demo-test-ids.json", "test", binary=False)
    return [f"Question: {ex['question']}\nAnswer:" for ex in items[:limit]]


def teacher_forced_step_logits(model, prompt_ids: list[list[int]], tokens, state_dtype):
    """Logits (steps, rows, vocab) of the decode steps fed ``tokens`` (rows, steps) after the prompts
    (the prefill's own logits left out: they do not read a stored state)."""
    import torch

    from biomamba.generate import prefill

    model.ssm_state_dtype = state_dtype
    cache, _ = prefill(model, prompt_ids)
    return torch.stack([model.step(tokens[:, i], cache) for i in range(tokens.shape[1] - 1)])


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="checkpoint directory (any layout) or hub id")
    parser.add_argument("--prompts", help="JSONL with a \"prompt\" field per line (default: demo PubMedQA questions)")
    parser.add_argument("--limit", type=int, default=32, help="prompts used")
    parser.add_argument("--new", type=int, default=64, help="new tokens a prompt")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    import torch

    from biomamba.commands.generate import read_prompts
    from biomamba.generate import SamplingConfig, generate_ids
    from biomamba.model.checkpoint import load_model_and_tokenizer

    model, tok = load_model_and_tokenizer(args.model, device=args.device)
    prompts = read_prompts(Path(args.prompts))[:args.limit] if args.prompts else demo_prompts(args.limit)
    ids = [tok.encode(p) for p in prompts]
    cfg = SamplingConfig(max_new_tokens=args.new)
    with torch.no_grad():
        greedy = {}
        for dtype in (torch.float32, torch.bfloat16):
            model.ssm_state_dtype = dtype
            greedy[dtype] = generate_ids(model, ids, cfg, eos_id=None)
        same_until = [next((i for i, (a, b) in enumerate(zip(x, y)) if a != b), len(x))
                      for x, y in zip(greedy[torch.float32], greedy[torch.bfloat16])]
        tokens = torch.tensor(greedy[torch.float32], device=model.backbone.embedding.weight.device)
        ref = teacher_forced_step_logits(model, ids, tokens, torch.float32)
        low = teacher_forced_step_logits(model, ids, tokens, torch.bfloat16)
        rel = ((low - ref).norm(dim=-1) / ref.norm(dim=-1)).flatten().tolist()
        flips, steps = int((low.argmax(-1) != ref.argmax(-1)).sum()), ref.shape[0] * ref.shape[1]
    model.ssm_state_dtype = torch.float32
    row = {
        "model": args.model, "prompts": len(ids), "new_tokens": args.new,
        "weights_dtype": str(model.backbone.embedding.weight.dtype).replace("torch.", ""),
        "greedy_identical_rows": sum(s == args.new for s in same_until),
        "greedy_tokens_before_first_difference": {"min": min(same_until), "median": statistics.median(same_until)},
        "teacher_forced_logits_rel_diff": {"median": statistics.median(rel), "max": max(rel)},
        "teacher_forced_argmax_differs": f"{flips} of {steps} steps",
    }
    print(json.dumps(row))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
