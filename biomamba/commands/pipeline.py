"""`biomamba pipeline [--config RECIPE.yaml] [--out RUN_DIR]`: the whole method, stage by stage.

With no arguments it runs the embedded demo on the CPU (configs/pipeline/demo.yaml) into
runs/demo. Re-running skips finished stages and resumes a half-finished one.
"""

from __future__ import annotations

from pathlib import Path

from biomamba.commands import parse_verb_args, verb_parser


def main(argv: list[str]) -> int:
    from biomamba.cli import main as cli
    from biomamba.pipeline import CONFIGS_DIR, PipelineConfig, run_pipeline
    from biomamba.study.report import write_report

    parser = verb_parser("pipeline", __doc__)
    if not any(a == "--config" or a.startswith("--config=") for a in argv):  # not parsed here: --help lists the fields
        argv = ["--config", str(CONFIGS_DIR / "pipeline" / "demo.yaml"), *argv]
    v = parse_verb_args(parser, argv, PipelineConfig)
    cfg: PipelineConfig = v.config
    run_dir = v.out or Path("runs") / cfg.name
    run_pipeline(cfg, run_dir, invoke=cli)
    if cfg.report:
        md, page = write_report(run_dir)
        print(f"[pipeline] done. Report: {page.resolve()} (and {md.name})")
    return 0
