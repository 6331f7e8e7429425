"""Side-by-side examples from saved generations: the same items through each stage, with the
reference; a seeded choice of items every stage generated; nothing invented where a stage kept
no text."""

from __future__ import annotations

from biomamba.study.examples import side_by_side
from biomamba.utils.io import write_json


def _stage(run, name, rows):
    write_json(run / name / "results.json", {"predictions": rows})


def test_rows_are_the_stages_own_texts(tmp_path):
    run = tmp_path / "run"
    refs = {f"n{i}": f"Discharged home on day {i}." for i in range(6)}
    _stage(run, "base", [{"id": i, "text": f"base says {i}", "reference": r} for i, r in refs.items()])
    _stage(run, "adapted", [{"id": i, "text": f"adapted says {i}", "reference": r}
                            for i, r in refs.items() if i != "n0"])  # n0 not generated here
    table = side_by_side(run, ["base", "adapted"], ["Mamba2+SFT", "BioMamba2+SFT"], n=3, seed=1)
    assert table.columns == ["item", "reference", "Mamba2+SFT", "BioMamba2+SFT"] and len(table.rows) == 3
    for item, reference, base, adapted in table.rows:
        assert item != "n0" and reference == refs[item]
        assert base == f"base says {item}" and adapted == f"adapted says {item}"
    again = side_by_side(run, ["base", "adapted"], n=3, seed=1)
    assert [r[0] for r in again.rows] == [r[0] for r in table.rows]  # seeded
    assert "3 of the 5 test items" in table.note


def test_choice_tasks_and_stages_without_text(tmp_path):
    run = tmp_path / "run"
    _stage(run, "yesno-a", [{"id": "q1", "gold": "yes", "generate": {"pred": "yes", "text": " yes, it does"}}])
    _stage(run, "yesno-b", [{"id": "q1", "gold": "yes", "generate": {"pred": "no", "text": " no"}}])
    table = side_by_side(run, ["yesno-a", "yesno-b"], n=5)
    assert table.rows == [["q1", "yes", "yes, it does", "no"]]
    _stage(run, "counts-only", [{"id": "q1", "generated_chars": 12}])  # keep_text was off
    assert side_by_side(run, ["yesno-a", "counts-only"]) is None
    long = "word " * 200
    _stage(run, "long", [{"id": "q1", "text": long, "reference": long}])
    clipped = side_by_side(run, ["long"], max_chars=50).rows[0]
    assert len(clipped[1]) == 50 and clipped[1].endswith("…")


def test_study_report_lays_out_each_runs_examples(tmp_path):
    from biomamba.study.aggregate import study_report
    from biomamba.study.runner import RunPlan
    from biomamba.study.spec import ExamplesSpec, Point, StudyConfig

    plans = []
    for size in ("130M", "370M"):
        run = tmp_path / size
        for stage in ("discharge-base", "discharge-adapted"):
            _stage(run, stage, [{"id": "n1", "text": f"{stage} at {size}", "reference": "ref"}])
        plans.append(RunPlan(f"size={size}", {"size": size}, {}, run))
    cfg = StudyConfig(name="s", pipeline="-", axes={"size": [Point("130M"), Point("370M")]},
                      examples=[ExamplesSpec("Discharge", ["discharge-base", "discharge-adapted"], ["base", "adapted"])])
    tables = [t for t in study_report(cfg, plans, tmp_path).tables if t.title.startswith("Discharge")]
    assert [t.title for t in tables] == ["Discharge (130M)", "Discharge (370M)"]
    assert tables[1].rows == [["n1", "ref", "discharge-base at 370M", "discharge-adapted at 370M"]]
