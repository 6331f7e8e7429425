"""The embedded demo pipeline end to end at an even smaller size, and the report against the stage outputs."""

from __future__ import annotations

import json
import re

import pytest

from biomamba.cli import main as cli
from biomamba.eval import stats
from biomamba.pipeline import CONFIGS_DIR
from biomamba.study.report import paired_table

SMOKE = ("--stage_overrides={pretrain: {train.max_steps: 6, eval.every: 3, checkpoint.every: 3, eval.max_sequences: 16}, "
         "sft: {train.max_steps: 3, eval.at_start: false}, eval ppl: {max_sequences: 8}, "
         "eval yesno: {max_examples: 12, batch_size: 4}, "
         "eval clinical: {max_examples: 3, max_new_tokens: 8}}")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("demo") / "run"
    assert cli(["pipeline", "--out", str(run), SMOKE]) == 0
    return run


def _md_table(md: str, title: str) -> list[list[str]]:
    block = md.split(f"## {title}")[1].split("\n## ")[0]
    lines = [ln for ln in block.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]


def test_every_stage_finished_and_wrote_its_contract(demo_run):
    record = json.loads((demo_run / "pipeline.json").read_text())
    assert all(info["status"] == "done" for info in record["stages"].values())
    assert len(record["stages"]) == 14
    for stage in ("base", "adapted"):
        summary = json.loads((demo_run / stage / "summary.json").read_text())
        assert summary["steps"] == 6 and (demo_run / stage / "best" / "model.safetensors").is_file()
        assert json.loads((demo_run / stage / "metrics.jsonl").read_text().splitlines()[1])["step"] > 0
    assert json.loads((demo_run / "data-mix" / "manifest.json").read_text())["sources"]["pubmed"]["ratio_target"] == 0.8
    assert (demo_run / "report.html").read_text().count("data:image/png;base64,") >= 3


def test_report_numbers_equal_the_stage_outputs(demo_run):
    md = (demo_run / "report.md").read_text()
    ppl_rows = {row[0]: row for row in _md_table(md, "Perplexity per held-out source")}
    base = json.loads((demo_run / "ppl-base" / "results.json").read_text())["per_source"]
    adapted = json.loads((demo_run / "ppl-adapted" / "results.json").read_text())["per_source"]
    assert set(ppl_rows) == {"pubmed", "c4", "wikipedia"}
    for source, row in ppl_rows.items():
        assert float(row[1].replace(",", "")) == pytest.approx(base[source]["perplexity"], abs=5e-3)
        assert float(row[3].replace(",", "")) == pytest.approx(adapted[source]["perplexity"], abs=5e-3)
        assert int(row[2].replace(",", "")) == base[source]["tokens"]  # ints print with thousands separators
    yesno = json.loads((demo_run / "yesno-adapted" / "results.json").read_text())["metrics"]
    rows = [r for r in _md_table(md, "Yes/no QA") if r[0] == "BioMamba2 + SFT" and r[2] == "all"]
    assert {r[1] for r in rows} == set(yesno)
    for r in rows:
        # fixed 3 decimals a column: equal to the stage's number to within half a unit in the last place
        assert float(r[4]) == pytest.approx(yesno[r[1]]["accuracy"], abs=5e-4) and int(r[3]) == yesno[r[1]]["n"]
        assert float(r[6]) == pytest.approx(yesno[r[1]]["macro_f1"], abs=5e-4)
    rouge = json.loads((demo_run / "clinical-adapted" / "results.json").read_text())["metrics"]["rouge"]
    row = next(r for r in _md_table(md, "Clinical generation") if r[0] == "BioMamba2 + SFT")
    assert float(row[3]) == pytest.approx(rouge["rouge1"], abs=5e-4)
    assert re.search(r"\| data-mix \| pubmed \| [\d,]+ \|", md)
    assert (demo_run / "plots" / "val_loss.svg").is_file() and (demo_run / "plots" / "val_loss.pdf").is_file()


def _predictions(run, stage: str) -> dict[str, dict]:
    return {row["id"]: row for row in json.loads((run / stage / "results.json").read_text())["predictions"]}


def _close(cell: str, value: float) -> bool:
    return float(cell) == pytest.approx(value, abs=5e-4)  # 3 decimals in the table


def test_paired_table_equals_eval_stats_on_the_stages_predictions(demo_run):
    rows = _md_table((demo_run / "report.md").read_text(), "Base+SFT vs adapted+SFT (paired, same test items)")
    base, adapted = _predictions(demo_run, "yesno-base"), _predictions(demo_run, "yesno-adapted")
    gold = {i: r["gold"] for i, r in base.items()}
    yesno = {r[2]: r for r in rows if r[1] == "accuracy"}
    assert set(yesno) == {"loglikelihood", "generate"}
    for mode, row in yesno.items():
        c = stats.mcnemar(stats.correctness(gold, {i: r[mode]["pred"] for i, r in base.items()}),
                          stats.correctness(gold, {i: r[mode]["pred"] for i, r in adapted.items()}))
        assert row[0] == "yesno_mix" and int(row[3]) == c.n == 12
        assert _close(row[4], c.baseline) and _close(row[5], c.candidate) and _close(row[6], c.difference)
        low, high = row[7].strip("[]").split(", ")
        assert _close(low, c.low) and _close(high, c.high)
        assert row[8] == stats.format_p(c.p_value)
        assert row[9] == f"McNemar exact (b={c.details['b']}, c={c.details['c']})"
    (rouge,) = [r for r in rows if r[1] == "ROUGE-L"]
    scores = [{i: r["rouge"]["rougeL"] for i, r in _predictions(demo_run, stage).items()}
              for stage in ("clinical-base", "clinical-adapted")]
    c = stats.paired_bootstrap_mean(*scores)
    assert rouge[0] == "clinical_discharge" and int(rouge[3]) == c.n == 3
    assert _close(rouge[4], c.baseline) and _close(rouge[5], c.candidate) and _close(rouge[6], c.difference)
    assert rouge[8] == stats.format_p(c.p_value) and rouge[9] == "paired bootstrap"


def test_paired_table_names_arms_scored_on_different_items(tmp_path):
    # a report must not fail, nor pair items by position, when one arm was re-scored on fewer items
    record = {"name": "t", "order": ["yesno-base", "yesno-adapted"], "verbs": {s: "eval" for s in ("yesno-base", "yesno-adapted")},
              "stages": {s: {"argv": ["eval", "yesno"], "status": "done"} for s in ("yesno-base", "yesno-adapted")}}
    (tmp_path / "pipeline.json").write_text(json.dumps(record))
    for stage, ids in (("yesno-base", ["a", "b", "c"]), ("yesno-adapted", ["a", "b"])):
        rows = [{"id": i, "gold": "yes", "generate": {"pred": "yes"}} for i in ids]
        (tmp_path / stage).mkdir()
        (tmp_path / stage / "results.json").write_text(json.dumps(
            {"task": "yesno_mix", "metrics": {"generate": {"n": len(ids), "accuracy": 1.0}}, "predictions": rows}))
    table = paired_table(tmp_path, record)
    assert len(table.rows) == 1 and table.rows[0][3] is None
    assert table.rows[0][-1].startswith("not paired:") and "'c'" in table.rows[0][-1]


def test_rerun_skips_finished_stages(demo_run, capsys):
    before = json.loads((demo_run / "pipeline.json").read_text())
    assert cli(["pipeline", "--out", str(demo_run), SMOKE]) == 0
    out = capsys.readouterr().out
    assert out.count("finished earlier") == 14
    assert json.loads((demo_run / "pipeline.json").read_text())["stages"] == before["stages"]


def test_paper_recipe_offline_stops_before_any_work(tmp_path, capsys):
    assert cli(["pipeline", "--config", str(CONFIGS_DIR / "paper" / "biomamba2-130m.yaml"), "--out", str(tmp_path / "p")]) == 1
    err = capsys.readouterr().err
    assert "nothing was done" in err and "state-spaces/mamba2-130m" in err and "discharge.csv" in err
    assert not (tmp_path / "p").exists()


def test_report_shows_side_by_side_examples_from_saved_generations(demo_run):
    """The case-study table: the same test notes through base+SFT and adapted+SFT, each cell the
    stage's own saved text (synthetic demo notes: the demo keeps the text)."""
    md = (demo_run / "report.md").read_text()
    rows = _md_table(md, "Side-by-side examples: clinical")
    assert rows, "no side-by-side table"
    texts = {}
    for stage in ("clinical-base", "clinical-adapted"):
        preds = json.loads((demo_run / stage / "results.json").read_text())["predictions"]
        texts[stage] = {str(p["id"]): " ".join(p["text"].split()) for p in preds}
    for row in rows:
        item = row[0]
        assert row[2] != row[3] or texts["clinical-base"][item] == texts["clinical-adapted"][item]
        for cell, stage in zip(row[2:4], ("clinical-base", "clinical-adapted")):
            assert texts[stage][item].startswith(cell.rstrip("…").replace("\\|", "|")[:40]), (stage, item)
