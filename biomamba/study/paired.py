"""Paired tests between two stages of one run on the same test items (matched by id): the
papers' controlled comparison, base+SFT (baseline) against adapted+SFT (candidate).

Used by the per-run report (``biomamba.study.report``) and by study tables
(``biomamba.study.aggregate``); it reads only the stages' ``results.json`` "predictions" rows
and leaves the statistics to :mod:`biomamba.eval.stats`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from biomamba.study.spec import Paired
from biomamba.utils.io import read_json


def stage_predictions(run_dir: Path, stage: str) -> dict[str, dict[str, Any]]:
    """A stage's per-item prediction rows by id ({} when it has written none)."""
    path = run_dir / stage / "results.json"
    if not path.is_file():
        return {}
    return {str(row["id"]): row for row in read_json(path).get("predictions", []) if row.get("id") is not None}


def paired_comparison(run_dir: Path, spec: Paired) -> Any:
    """The ``Comparison`` of two stages' per-item predictions in one run, or None when either
    stage has not written them."""
    from biomamba.eval import stats

    base, cand = stage_predictions(run_dir, spec.baseline), stage_predictions(run_dir, spec.candidate)
    if not base or not cand:
        return None
    if spec.test.startswith("rouge"):
        return stats.paired_bootstrap_mean({i: r["rouge"][spec.test] for i, r in base.items()},
                                           {i: r["rouge"][spec.test] for i, r in cand.items()},
                                           metric=spec.test, seed=spec.seed)
    gold = {i: r["gold"] for i, r in base.items()}
    b_pred = {i: r[spec.mode]["pred"] for i, r in base.items()}
    c_pred = {i: r[spec.mode]["pred"] for i, r in cand.items()}
    if spec.test == "mcnemar":
        return stats.mcnemar(stats.correctness(gold, b_pred), stats.correctness(gold, c_pred), seed=spec.seed)
    return stats.paired_bootstrap_classification(gold, b_pred, c_pred, spec.test, seed=spec.seed)
