"""`biomamba sft --config configs/sft/….yaml --model M --out RUN [--key=value …] [--resume]`

Full-parameter supervised fine-tuning for a task (yes/no QA, factoid QA, clinical notes):
the task's template renders each example, the instruction tokens are masked out of the loss
(label -100), and the best checkpoint is chosen on the validation split carved from the
training data. RUN receives the same files as `biomamba pretrain` (metrics.jsonl,
checkpoints/, best/, final/, summary.json) plus sft_data.json (what was read and dropped).
"""

from __future__ import annotations

from biomamba.commands import parse_verb_args, verb_parser


def main(argv: list[str]) -> int:
    from biomamba.sft import SFTConfig, run_sft

    parser = verb_parser("sft", __doc__)
    parser.add_argument("--model", help="starting checkpoint (directory or hub id)")
    parser.add_argument("--task", help="yesno_mix | pubmedqa | bioasq_yesno | bioasq_factoid | clinical_* | a task YAML")
    parser.add_argument("--resume", nargs="?", const="true", default=None,
                        help="continue the run in --out from its latest checkpoint (or =auto, =PATH)")
    v = parse_verb_args(parser, argv, SFTConfig, flag_fields={"model": "model", "task": "task", "resume": "resume"})
    if v.out is None:
        parser.error("--out DIR (the run directory) is required")
    run_sft(v.config, v.out)
    return 0
