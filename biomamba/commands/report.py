"""`biomamba report RUN_DIR`: report.md + self-contained report.html from a pipeline run."""

from __future__ import annotations

import argparse
from pathlib import Path


def main(argv: list[str]) -> int:
    from biomamba.study.report import write_report

    parser = argparse.ArgumentParser(prog="biomamba report", description=__doc__)
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    md, page = write_report(args.run_dir)
    print(f"wrote {md} and {page}")
    return 0
