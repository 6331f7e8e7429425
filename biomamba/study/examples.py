"""Side-by-side examples: the same test items through several models (the papers' case-study
tables), with the reference, read from the generations the evaluation stages saved.

Generated text is saved only when an evaluation keeps it (``keep_text``; on for QA, off by
default for clinical notes, whose text may be credentialed data): a stage without saved text
contributes no examples, and the table says so rather than showing counts in its place.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Sequence

from biomamba.study.tables import Table
from biomamba.utils.io import read_json


def _texts(run_dir: Path, stage: str) -> dict[str, dict[str, Any]]:
    """id -> {"text", "reference"} of one stage's saved generations."""
    path = run_dir / stage / "results.json"
    if not path.is_file():
        return {}
    out = {}
    for row in read_json(path).get("predictions", []):
        text = row.get("text")
        if text is None and isinstance(row.get("generate"), dict):  # choice tasks keep theirs per mode
            text = row["generate"].get("text")
        if row.get("id") is None or text is None:
            continue
        out[str(row["id"])] = {"text": text, "reference": row.get("reference", row.get("gold"))}
    return out


def _clip(text: Any, max_chars: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


def side_by_side(run_dir: Path, stages: Sequence[str], labels: Sequence[str] | None = None, n: int = 3,
                 max_chars: int = 300, seed: int = 0, title: str = "Side-by-side examples") -> Table | None:
    """``n`` items (seeded choice among those every stage generated) as rows: the item, the
    reference, then each stage's output. None when no item has text in every stage."""
    labels = list(labels or stages)
    if len(labels) != len(stages):
        raise ValueError(f"{len(labels)} labels for {len(stages)} stages")
    texts = [_texts(run_dir, s) for s in stages]
    common = sorted(set.intersection(*(set(t) for t in texts))) if texts else []
    if not common:
        return None
    chosen = sorted(random.Random(seed).sample(common, min(n, len(common))))
    rows = []
    for item in chosen:
        reference = next((t[item]["reference"] for t in texts if t[item]["reference"] is not None), None)
        rows.append([item, _clip(reference, max_chars) if reference is not None else None]
                    + [_clip(t[item]["text"], max_chars) for t in texts])
    note = (f"{len(chosen)} of the {len(common)} test items every stage generated (seeded choice, seed {seed}); "
            f"text cut to {max_chars} characters.")
    return Table(title, ["item", "reference", *labels], rows, note)
