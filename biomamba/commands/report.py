"""`biomamba report RUN_DIR [RUN_DIR …] [--out DIR]`: reports as Markdown + self-contained HTML.

One pipeline run: its report.md / report.html. A study directory (it holds study.json): the
study's cross-run tables and figures again, from what the runs wrote. Several run
directories: one comparison (a row per run, the metrics they share) into --out.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="biomamba report", description=__doc__)
    parser.add_argument("run_dirs", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, help="where a comparison of several runs is written (default: "
                                                  "runs/comparison)")
    args = parser.parse_args(argv)
    if len(args.run_dirs) > 1:
        from biomamba.study.aggregate import compare_runs

        md, page = compare_runs(args.run_dirs, args.out or Path("runs") / "comparison")
    elif (args.run_dirs[0] / "study.json").is_file():
        from biomamba.config import from_dict
        from biomamba.study.aggregate import write_study_report
        from biomamba.study.runner import expand
        from biomamba.study.spec import StudyConfig
        from biomamba.utils.io import read_json

        study_dir = args.run_dirs[0]
        cfg = from_dict(StudyConfig, read_json(study_dir / "study.json")["config"])
        md, page = write_study_report(cfg, expand(cfg, study_dir), study_dir)
    else:
        from biomamba.study.report import write_report

        md, page = write_report(args.run_dirs[0])
    print(f"wrote {md} and {page}")
    return 0
