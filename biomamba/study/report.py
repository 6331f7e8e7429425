"""``report.md`` and a self-contained ``report.html`` for one pipeline run directory.

The report reads only what the stages wrote (``pipeline.json``, each stage's
``results.json``, ``metrics.jsonl``, ``manifest.json``, ``environment.json``) and lays it out
as the papers' tables, filled with this run's numbers, plus learning curves (PNG embedded in
the HTML, SVG/PDF beside it). Where the recipe evaluates both arms (stages ``<name>-base`` and
``<name>-adapted``), the paired test between them is one table (``biomamba.study.paired``).
Cross-run tables are ``biomamba.study.aggregate``'s.
"""

from __future__ import annotations

import json
from pathlib import Path

from biomamba.study.examples import side_by_side
from biomamba.study.paired import paired_comparison
from biomamba.study.spec import Paired
from biomamba.study.tables import Figure, Report, Table, new_figure, save_figure, write_report_files
from biomamba.utils.io import read_json


def read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a crash can cut the last line short; earlier lines stay valid
    return rows


def _stages_of(record: dict, verb: str, *args: str) -> list[str]:
    """Stage names of one verb (and sub-command) in pipeline order."""
    out = []
    for name in record.get("order", []):
        argv = record.get("stages", {}).get(name, {}).get("argv", [])
        if record.get("verbs", {}).get(name) == verb and all(a in argv for a in args):
            out.append(name)
    return out


def _eval_results(run: Path, record: dict, sub: str) -> list[tuple[str, dict]]:
    """(model label, results.json) of each finished ``eval <sub>`` stage, each file read once."""
    out = []
    for stage in _stages_of(record, "eval", sub):
        path = run / stage / "results.json"
        if path.is_file():
            res = read_json(path)
            out.append((res.get("label") or stage, res))
    return out


def perplexity_table(run: Path, record: dict) -> Table | None:
    evals = _eval_results(run, record, "ppl")
    if not evals:
        return None
    sources: list[str] = []
    for _, res in evals:
        sources += [src for src in res.get("per_source", {}) if src not in sources]
    rows = []
    for src in sources:
        row = [src]
        for _, res in evals:
            entry = res.get("per_source", {}).get(src, {})
            row += [entry.get("perplexity"), entry.get("tokens")]
        rows.append(row)
    columns = ["source"] + [c for label, _ in evals for c in (f"{label} ppl", "tokens")]
    return Table("Perplexity per held-out source (lower is better)", columns, rows,
                 "exp(token-weighted mean next-token cross-entropy); padding ignored, non-finite losses excluded and counted.",
                 decimals={c: 2 for c in columns if c.endswith(" ppl")})


def yesno_table(run: Path, record: dict) -> Table | None:
    rows = []
    for label, res in _eval_results(run, record, "yesno"):
        for mode, m in res.get("metrics", {}).items():
            groups = [("all", m)] + [(g, sub) for g, sub in (m.get("by_source") or {}).items()]
            for group, g in groups:
                rows.append([label, mode, group, g.get("n"), g.get("accuracy"), g.get("accuracy_ci95"),
                             g.get("macro_f1"), g.get("f1_yes"), g.get("f1_no"), g.get("unparsed", 0)])
    if not rows:
        return None
    return Table("Yes/no QA (test split, scored once)",
                 ["model", "prediction", "source", "n", "accuracy", "95 % Wilson CI", "macro-F1", "yes-F1", "no-F1",
                  "unparsed"], rows,
                 "loglikelihood: the answer choice with the higher log-likelihood; generate: greedy decoding parsed "
                 "to yes/no (the papers' setting). Unparseable answers count as wrong and stay in the denominator.")


def rouge_table(run: Path, record: dict) -> Table | None:
    rows = []
    for label, res in _eval_results(run, record, "clinical"):
        r = res.get("metrics", {}).get("rouge", {})
        rows.append([label, res.get("task"), r.get("n"), r.get("rouge1"), r.get("rouge2"), r.get("rougeL"),
                     r.get("empty_predictions", 0)])
    if not rows:
        return None
    return Table("Clinical generation (ROUGE F-measure, stemming, averaged)",
                 ["model", "task", "n", "ROUGE-1", "ROUGE-2", "ROUGE-L", "empty generations"], rows,
                 "Greedy decoding; empty generations score 0 and stay in the average.")


def _arm_pairs(record: dict, sub: str) -> list[tuple[str, str]]:
    """(base stage, adapted stage) pairs of ``eval <sub>``: the recipes name the two arms'
    evaluations ``<name>-base`` and ``<name>-adapted`` (the demo's yesno-base / yesno-adapted)."""
    stages = _stages_of(record, "eval", sub)
    pairs = []
    for stage in stages:
        base = stage.removesuffix("-adapted") + "-base"
        if stage.endswith("-adapted") and base in stages:
            pairs.append((base, stage))
    return pairs


def paired_table(run: Path, record: dict) -> Table | None:
    """The papers' controlled comparison with its paired test, per task: McNemar (exact) on
    yes/no correctness for each prediction mode, a paired bootstrap of per-item ROUGE-L."""
    from biomamba.eval.stats import ItemMismatchError, format_p

    rows = []
    for sub in ("yesno", "clinical"):
        for base, adapted in _arm_pairs(record, sub):
            paths = [run / stage / "results.json" for stage in (base, adapted)]
            if not all(p.is_file() for p in paths):
                continue
            base_res, res = (read_json(p) for p in paths)
            modes = [m for m in res.get("metrics", {}) if m in base_res.get("metrics", {})]  # scored in both arms
            specs = ([Paired(base, adapted, test="mcnemar", mode=mode) for mode in modes]
                     if sub == "yesno" else [Paired(base, adapted, test="rougeL")])
            for spec in specs:
                task, metric = res.get("task") or adapted, "accuracy" if spec.test == "mcnemar" else "ROUGE-L"
                try:
                    c = paired_comparison(run, spec)
                except ItemMismatchError as exc:  # e.g. one arm re-run on fewer items: say so, keep the report
                    rows.append([task, metric, spec.mode, None, None, None, None, None, None, f"not paired: {exc}"])
                    continue
                if c is None:
                    continue
                counts = ", ".join(f"{k}={c.details[k]}" for k in ("b", "c") if k in c.details)
                rows.append([task, metric, spec.mode, c.n, c.baseline, c.candidate, c.difference, [c.low, c.high],
                             format_p(c.p_value), f"{c.test} ({counts})" if counts else c.test])
    if not rows:
        return None
    return Table("Base+SFT vs adapted+SFT (paired, same test items)",
                 ["task", "metric", "prediction", "n", "base+SFT", "adapted+SFT", "Δ", "95 % interval of Δ", "p",
                  "test"], rows,
                 "Δ = adapted+SFT − base+SFT on the same test items, matched by id (biomamba.eval.stats). Yes/no: "
                 "McNemar's exact test on per-item correctness (b = items only base+SFT gets right, c = items only "
                 "adapted+SFT gets right); the interval is a paired bootstrap of the accuracy difference. ROUGE-L: "
                 "paired bootstrap of the per-item differences. Bootstrap: 10,000 resamples, seed 0, percentile.")


def example_tables(run: Path, record: dict) -> list[Table]:
    """The papers' case-study tables: the same test notes through the zero-shot model (when the
    recipe scores one), base+SFT and adapted+SFT, beside the reference, from saved generations."""
    tables = []
    stages = _stages_of(record, "eval", "clinical")
    for base, adapted in _arm_pairs(record, "clinical"):
        name = base.removesuffix("-base")
        chosen = [s for s in (f"{name}-zero-shot", base, adapted) if s in stages]
        labels = [(read_json(run / s / "results.json").get("label") if (run / s / "results.json").is_file()
                   else None) or s for s in chosen]
        table = side_by_side(run, chosen, labels, title=f"Side-by-side examples: {name}")
        if table is not None:
            tables.append(table)
    return tables


def factoid_table(run: Path, record: dict) -> Table | None:
    rows = []
    for label, res in _eval_results(run, record, "factoid"):
        f = res.get("metrics", {}).get("factoid", {})
        rows.append([label, f.get("n"), f.get("strict_accuracy"), f.get("lenient_accuracy"), f.get("mrr")])
    if not rows:
        return None
    return Table("Factoid QA", ["model", "n", "strict accuracy", "lenient accuracy", "MRR"], rows)


def data_table(run: Path, record: dict) -> Table | None:
    rows = []
    for s in _stages_of(record, "data"):
        path = run / s / "manifest.json"
        if not path.is_file():
            continue
        manifest = read_json(path)
        for name, info in (manifest.get("sources") or {}).items():
            if not isinstance(info, dict):
                continue
            counts = info.get("counts", {})
            rows.append([s, name, counts.get("read"), counts.get("kept"), info.get("train_sequences"),
                         info.get("val_sequences"), info.get("ratio_achieved")])
    if not rows:
        return None
    return Table("Data (from each manifest.json)",
                 ["stage", "source", "documents read", "kept", "train sequences", "val sequences", "ratio achieved"], rows,
                 decimals={"ratio achieved": 3})


def timing_table(record: dict) -> Table:
    rows = [[name, info.get("status"), info.get("seconds")] for name, info in record.get("stages", {}).items()]
    return Table("Stages", ["stage", "status", "seconds (last run)"], rows, decimals={"seconds (last run)": 1})


def _plot_curves(run: Path, record: dict, plot_dir: Path) -> list[Figure]:
    figures: list[Figure] = []
    train_stages = [s for s in record.get("order", []) if record.get("verbs", {}).get(s) in ("pretrain", "sft")]
    curves = {s: read_jsonl(run / s / "metrics.jsonl") for s in train_stages}
    curves = {s: rows for s, rows in curves.items() if rows}
    if not curves:
        return figures
    for key, title, stem in (("loss", "training loss", "train_loss"), ("lr", "learning rate", "lr")):
        fig, axes = new_figure(width_in=5.0, height_in=2.8)
        ax = axes[0][0]
        for s, rows in curves.items():
            pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r and isinstance(r[key], (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=s)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)  # beside, never over, the lines
        figures.append(save_figure(fig, plot_dir, stem, title.capitalize() + " per training stage"))
    # validation: one panel per training stage, one line per held-out source ("all" left out)
    panels = []
    for s, rows in curves.items():
        keys = sorted({k for r in rows for k in r if k.startswith("val/") and k.endswith("/loss") and k != "val/all/loss"})
        if keys:
            panels.append((s, rows, keys))
    if panels:
        cols = min(3, len(panels))
        nrows = -(-len(panels) // cols)
        fig, axes = new_figure(width_in=2.6, height_in=2.0, ncols=cols, nrows=nrows)
        for ax, (s, rows, keys) in zip(axes.flat, panels):
            for k in keys:
                pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
                ax.plot(*zip(*pts), marker="o", markersize=2, label=k[4:-5])
            ax.set_title(s)
            ax.set_xlabel("optimizer step")
            ax.set_ylabel("validation loss")
            ax.grid(alpha=0.3)
            ax.legend()
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.tight_layout()
        figures.append(save_figure(fig, plot_dir, "val_loss", "Validation loss per held-out source, per training stage"))
    return figures


def build_report(run: Path) -> Report:
    record_path = run / "pipeline.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{run}: no pipeline.json (not a `biomamba pipeline` run directory)")
    record = read_json(record_path)
    report = Report(f"biomamba report: {record.get('name', run.name)}")
    for make in (perplexity_table, yesno_table, rouge_table, paired_table, factoid_table, data_table):
        table = make(run, record)
        if table is not None:
            report.tables.append(table)
    report.tables += example_tables(run, record)
    report.tables.append(timing_table(record))
    report.plots = _plot_curves(run, record, run / "plots")
    env = next((run / s / "environment.json" for s in record.get("order", [])
                if (run / s / "environment.json").is_file()), None)
    if env is not None:
        report.sections.append(("Environment", json.dumps(read_json(env), indent=2)))
    if (run / "pipeline_config.yaml").is_file():
        report.sections.append(("Pipeline recipe", (run / "pipeline_config.yaml").read_text()))
    return report


def write_report(run: str | Path) -> tuple[Path, Path]:
    run = Path(run)
    return write_report_files(build_report(run), run)
