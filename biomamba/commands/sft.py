"""`biomamba sft --config configs/sft/….yaml --model M --out RUN [--key=value …] [--resume]`

Full-parameter supervised fine-tuning for a task (yes/no QA, factoid QA, clinical notes):
the task's template renders each example, the instruction tokens are masked out of the loss
(label -100), and the best checkpoint is chosen on the validation split carved from the
training data. RUN receives the same files as `biomamba pretrain` (metrics.jsonl,
checkpoints/, best/, final/, summary.json) plus sft_data.json (what was read and dropped).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biomamba.commands import explain_missing_task_files, parse_verb_args, verb_parser


def finetune_config(cfg: Any, out: Path) -> dict[str, Any]:
    """What ``biomamba sft`` runs once its config is resolved (and ``biomamba.finetune``): ``run_sft``,
    with a task file that is not there named by its role and what to pass."""
    from biomamba.sft import run_sft

    with explain_missing_task_files(cfg.task, cfg.paths, cfg.data_root):
        return run_sft(cfg, out)


def main(argv: list[str]) -> int:
    from biomamba.sft import SFTConfig

    parser = verb_parser("sft", __doc__)
    parser.add_argument("--model", help="starting checkpoint (directory or hub id)")
    parser.add_argument("--task", help="yesno_mix | pubmedqa | bioasq_yesno | bioasq_factoid | clinical_* | a task YAML")
    parser.add_argument("--resume", nargs="?", const="true", default=None,
                        help="continue the run in --out from its latest checkpoint (or =auto, =PATH)")
    v = parse_verb_args(parser, argv, SFTConfig, flag_fields={"model": "model", "task": "task", "resume": "resume"})
    if v.out is None:
        parser.error("--out DIR (the run directory) is required")
    finetune_config(v.config, v.out)
    return 0
