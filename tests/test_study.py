"""`biomamba study`: a pipeline recipe over a grid, runs skipped when done, one command per run
for a scheduler, selection on the validation split with the test stage run for the winner
alone, and cross-run tables (Markdown / CSV / LaTeX, fixed decimals) and figures (SVG / PDF /
PNG) whose numbers equal the runs' own files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from biomamba.cli import main as cli
from biomamba.config import ConfigError, load_config
from biomamba.pipeline import CONFIGS_DIR
from biomamba.study.aggregate import get_path
from biomamba.study.spec import StudyConfig

# the demo corpus → one data build → a 4-step tiny LM → perplexity on validation and on train
PIPELINE = {
    "name": "mini", "demo_corpus": True, "report": False,
    "stages": [
        {"name": "data", "verb": "data", "args": ["build"], "config": "{configs}/pipeline/demo/data.yaml",
         "overrides": {"tokenizer": "{corpus}/tokenizer.json",
                       "sources.pubmed.paths": ["{corpus}/medline/demo-baseline.xml.gz"],
                       "sources.c4.paths": ["{corpus}/c4/c4-demo.jsonl"],
                       "sources.wikipedia.paths": ["{corpus}/wikitext/wiki-demo.raw"]}},
        {"name": "lm", "verb": "pretrain", "config": "{configs}/pretrain/tiny.yaml",
         "overrides": {"data": "{run}/data", "train.max_steps": 4, "eval.every": 2, "eval.max_sequences": 8,
                       "checkpoint.every": 2, "train.log_every": 1,
                       "model.overrides": {"d_model": 32, "n_layer": 2, "d_state": 8, "headdim": 8}}},
        {"name": "ppl-val", "verb": "eval", "args": ["ppl"],
         "overrides": {"model": "{run}/lm/best", "data": "{run}/data", "max_sequences": 8, "label": "lm"}},
        {"name": "ppl-train", "verb": "eval", "args": ["ppl"],
         "overrides": {"model": "{run}/lm/best", "data": "{run}/data", "split": "train", "max_sequences": 8}},
    ],
}


def _study(tmp_path: Path, **extra) -> Path:
    (tmp_path / "mini.yaml").write_text(yaml.safe_dump(PIPELINE, sort_keys=False))
    study = {
        "name": "lr-sweep", "pipeline": str(tmp_path / "mini.yaml"),
        "axes": {"lr": [{"label": "1e-3", "stage_overrides": {"pretrain": {"optim.lr": 1.0e-3}},
                         "values": {"lr": 1e-3}},
                        {"label": "1e-2", "stage_overrides": {"pretrain": {"optim.lr": 1.0e-2}},
                         "values": {"lr": 1e-2}}]},
        "tables": [{"title": "Perplexity by learning rate", "row_axis": "lr",
                    "columns": [{"label": "val ppl", "stage": "ppl-val", "key": "per_source.pubmed.perplexity",
                                 "decimals": 2},
                                {"label": "train ppl", "stage": "ppl-train", "key": "per_source.pubmed.perplexity",
                                 "decimals": 2},
                                {"label": "gap %", "of": "train ppl", "relative_to": "val ppl", "decimals": 1}]}],
        "figures": [{"title": "Validation loss", "kind": "curve", "stage": "lm", "key": "val/all/loss"},
                    {"title": "Validation perplexity by lr", "kind": "axis", "stage": "ppl-val",
                     "key": "per_source.pubmed.perplexity", "x_axis": "lr", "x_value": "lr", "log_x": True}],
        **extra,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


def test_get_path_matches_dotted_names_whole():
    doc = {"per_source": {"pubmed": {"perplexity": 3.5}}, "runs": {"mamba2-1.3b": {"x": 1}}, "l": [{"a": 2}]}
    assert get_path(doc, "per_source.pubmed.perplexity") == 3.5
    assert get_path(doc, "runs.mamba2-1.3b.x") == 1 and get_path(doc, "l.0.a") == 2
    assert get_path(doc, "per_source.c4.perplexity") is None


def test_study_config_errors_name_the_problem(tmp_path):
    path = _study(tmp_path)
    with pytest.raises(ConfigError, match="not an earlier column"):
        load_config(StudyConfig, path, ["--tables=[{title: t, columns: [{label: d, of: a, relative_to: b}]}]"])
    with pytest.raises(ConfigError, match="point labels must be unique"):
        load_config(StudyConfig, path, ["--axes={lr: [{label: a}, {label: a}]}"])


def test_emit_writes_one_command_per_run(tmp_path, capsys):
    out = tmp_path / "study"
    assert cli(["study", "--config", str(_study(tmp_path)), "--out", str(out), "--emit"]) == 0
    lines = [ln for ln in (out / "commands.sh").read_text().splitlines() if ln.startswith("biomamba")]
    assert len(lines) == 2 and all("pipeline --config" in ln for ln in lines)
    recipe = yaml.safe_load((out / "runs" / "lr=1e-2" / "study_pipeline.yaml").read_text())
    assert recipe["stage_overrides"]["pretrain"]["optim.lr"] == 1.0e-2
    assert not (out / "runs" / "lr=1e-2" / "pipeline.json").exists()  # nothing ran


def test_study_runs_selects_and_aggregates(tmp_path, capsys):
    select = {"select": {"stage": "ppl-val", "key": "per_source.pubmed.perplexity", "mode": "min",
                         "final_stages": ["ppl-train"]}}
    config, out = _study(tmp_path, **select), tmp_path / "study"
    assert cli(["study", "--config", str(config), "--out", str(out)]) == 0
    runs = {name: out / "runs" / name for name in ("lr=1e-3", "lr=1e-2")}
    record = json.loads((out / "study.json").read_text())
    sel = record["selection"]
    vals = {name: json.loads((d / "ppl-val" / "results.json").read_text())["per_source"]["pubmed"]["perplexity"]
            for name, d in runs.items()}
    assert sel["values"] == vals and sel["winner"] == min(vals, key=vals.get)
    # the test-side stage ran for the winner only
    loser = next(n for n in runs if n != sel["winner"])
    assert (runs[sel["winner"]] / "ppl-train" / "results.json").is_file()
    assert not (runs[loser] / "ppl-train").exists()

    # the table's numbers are the runs' own, at the column's decimals; the gap is computed from them
    rows = {r["lr"]: r for r in csv.DictReader((out / "tables" / "perplexity-by-learning-rate.csv").open())}
    for name, d in runs.items():
        assert float(rows[name.split("=")[1]]["val ppl"]) == pytest.approx(vals[name])
    md = (out / "tables" / "perplexity-by-learning-rate.md").read_text()
    winner_row = next(ln for ln in md.splitlines() if ln.startswith(f"| {sel['winner'].split('=')[1]} |"))
    cells = [c.strip() for c in winner_row.strip("|").split("|")]
    train = json.loads((runs[sel["winner"]] / "ppl-train" / "results.json").read_text())["per_source"]["pubmed"]
    assert cells[1] == f"{vals[sel['winner']]:,.2f}" and cells[2] == f"{train['perplexity']:,.2f}"
    assert cells[3] == f"{(train['perplexity'] - vals[sel['winner']]) / vals[sel['winner']] * 100:,.1f}"
    loser_row = next(ln for ln in md.splitlines() if ln.startswith(f"| {loser.split('=')[1]} |"))
    assert loser_row.count("–") == 2  # not run: a dash, never a zero
    tex = (out / "tables" / "perplexity-by-learning-rate.tex").read_text()
    assert "\\toprule" in tex and "gap \\%" in tex
    for stem in ("validation-loss", "validation-perplexity-by-lr"):
        for ext in ("svg", "pdf", "png"):
            assert (out / "figures" / f"{stem}.{ext}").stat().st_size > 1000
    from PIL import Image

    with Image.open(out / "figures" / "validation-loss.png") as im:
        assert im.info["dpi"][0] == pytest.approx(200, abs=1)
    assert "selected" in (out / "report.md").read_text()

    # `biomamba report` on the study directory writes the same tables again from the runs' files;
    # on two run directories, a comparison of what they share (a row per run)
    (out / "tables" / "perplexity-by-learning-rate.md").unlink()
    assert cli(["report", str(out)]) == 0
    assert (out / "tables" / "perplexity-by-learning-rate.md").read_text() == md
    assert cli(["report", *(str(d) for d in runs.values()), "--out", str(tmp_path / "cmp")]) == 0
    compared = {r["run"]: r for r in csv.DictReader((tmp_path / "cmp" / "tables" /
                                                     "perplexity-per-held-out-source.csv").open())}
    assert set(compared) == set(runs)
    for name in runs:
        assert float(compared[name]["ppl-val pubmed"]) == pytest.approx(vals[name])
    lm_best = json.loads((runs[loser] / "lm" / "summary.json").read_text())["best"]
    training = {r["run"]: r for r in csv.DictReader((tmp_path / "cmp" / "tables" / "training.csv").open())}
    assert float(training[loser]["lm best val/all/loss"]) == pytest.approx(lm_best["value"])

    # again: every stage of every run is found finished and skipped
    capsys.readouterr()
    assert cli(["study", "--config", str(config), "--out", str(out)]) == 0
    assert capsys.readouterr().out.count("finished earlier") == 3 + 3 + 4  # 3 + 3 stages, then the winner's 4


def test_shipped_study_recipes_expand(tmp_path):
    from biomamba.study.runner import expand

    recipes = sorted((CONFIGS_DIR / "study").glob("*.yaml"))
    assert recipes, "configs/study/ holds the papers' studies"
    for path in recipes:
        cfg = load_config(StudyConfig, path)
        plans = expand(cfg, tmp_path / path.stem)
        assert plans and len({p.name for p in plans}) == len(plans), path.name


def test_paired_columns_equal_the_reference_tests(tmp_path):
    """A paired column of a study table: McNemar (exact) between two arms' yes/no predictions
    equals statsmodels on the same 2x2 table; ROUGE-L's paired bootstrap difference equals the
    mean of per-item differences. Items are matched by id, not by position."""
    from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

    from biomamba.study.aggregate import build_table
    from biomamba.study.runner import RunPlan
    from biomamba.study.spec import Column, Paired, TableSpec
    from biomamba.utils.io import write_json

    rng = __import__("random").Random(0)
    gold = {f"q{i}": rng.choice(["yes", "no"]) for i in range(60)}
    base_pred = {i: (g if rng.random() < 0.6 else ("no" if g == "yes" else "yes")) for i, g in gold.items()}
    cand_pred = {i: (g if rng.random() < 0.8 else ("no" if g == "yes" else "yes")) for i, g in gold.items()}
    run = tmp_path / "run"
    for stage, pred in (("yesno-base", base_pred), ("yesno-adapted", cand_pred)):
        rows = [{"id": i, "gold": gold[i], "generate": {"pred": pred[i]}} for i in sorted(gold, reverse=stage == "yesno-base")]
        write_json(run / stage / "results.json", {"predictions": rows})
    rouge_b = {f"n{i}": rng.random() * 0.4 for i in range(30)}
    rouge_c = {i: min(1.0, v + rng.random() * 0.1) for i, v in rouge_b.items()}
    for stage, scores in (("gen-base", rouge_b), ("gen-adapted", rouge_c)):
        write_json(run / stage / "results.json",
                   {"predictions": [{"id": i, "rouge": {"rouge1": v, "rouge2": v, "rougeL": v}} for i, v in scores.items()]})
    spec = TableSpec("paired", [
        Column("McNemar p", paired=Paired("yesno-base", "yesno-adapted", "mcnemar", show="p")),
        Column("McNemar", paired=Paired("yesno-base", "yesno-adapted", "mcnemar")),
        Column("ROUGE-L Δ", paired=Paired("gen-base", "gen-adapted", "rougeL", show="difference"))])
    table = build_table(spec, [RunPlan("x", {"arm": "a"}, {}, run)], ["arm"])
    p, summary, delta = table.rows[0][1:]
    b = sum(base_pred[i] == gold[i] and cand_pred[i] != gold[i] for i in gold)
    c = sum(base_pred[i] != gold[i] and cand_pred[i] == gold[i] for i in gold)
    both = sum(base_pred[i] == gold[i] and cand_pred[i] == gold[i] for i in gold)
    ref = sm_mcnemar([[both, b], [c, len(gold) - both - b - c]], exact=True)
    assert p == pytest.approx(ref.pvalue, rel=1e-10)
    assert f"b={b}, c={c}" in summary and summary.startswith("Δ +")
    mean_diff = sum(rouge_c[i] - rouge_b[i] for i in rouge_b) / len(rouge_b)
    assert delta.startswith(f"{mean_diff:+.3f} [")
    # a stage without predictions: a dash, not a made-up number
    spec = TableSpec("missing", [Column("p", paired=Paired("yesno-base", "nowhere", "mcnemar", show="p"))])
    assert build_table(spec, [RunPlan("x", {"arm": "a"}, {}, run)], ["arm"]).rows[0][1] is None
