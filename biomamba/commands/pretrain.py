"""`biomamba pretrain --config RECIPE.yaml --out RUN [--key=value …] [--resume[=auto|PATH]]`

Continued pretraining of a Mamba checkpoint (or a random init) on token shards from
`biomamba data build`. The same command runs on one device or under torchrun:

    torchrun --nproc_per_node 8 -m biomamba.cli pretrain --config configs/pretrain/mamba2-130m.yaml \\
        --out runs/bio-130m --data data/paper --train.strategy=fsdp

RUN receives config.yaml, environment.json, metrics.jsonl, checkpoints/, the exported
weights (best/, final/, final_ema/) and summary.json when training is done.
"""

from __future__ import annotations

from biomamba.commands import parse_verb_args, verb_parser


def main(argv: list[str]) -> int:
    from biomamba.train.config import PretrainConfig
    from biomamba.train.pretrain import run_pretrain

    parser = verb_parser("pretrain", __doc__)
    parser.add_argument("--data", help="token-shard directory (overrides data:)")
    parser.add_argument("--init-from", dest="init_from", help="starting weights: checkpoint dir or hub id")
    parser.add_argument("--resume", nargs="?", const="true", default=None,
                        help="continue the run in --out from its latest checkpoint (or =auto, =PATH)")
    v = parse_verb_args(parser, argv, PretrainConfig,
                        flag_fields={"data": "data", "init_from": "model.init_from", "resume": "resume"})
    if v.out is None:
        parser.error("--out DIR (the run directory) is required")
    run_pretrain(v.config, v.out)
    return 0
