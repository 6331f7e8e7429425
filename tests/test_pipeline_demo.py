"""The embedded demo pipeline end to end at an even smaller size, and the report against the stage outputs."""

from __future__ import annotations

import json
import re

import pytest

from biomamba.cli import main as cli
from biomamba.pipeline import CONFIGS_DIR

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
