"""``report.md`` and a self-contained ``report.html`` for a pipeline run directory.

The report reads only what the stages wrote (``pipeline.json``, each stage's
``results.json``, ``metrics.jsonl``, ``manifest.json``, ``environment.json``) and lays it out
as the papers' tables, filled with this run's numbers, plus learning curves as PNG plots
(embedded in the HTML as data URIs, so the file stands alone).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomamba.utils.io import atomic_write_text, read_json


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""


@dataclass
class Report:
    title: str
    tables: list[Table] = field(default_factory=list)
    plots: list[tuple[str, Path]] = field(default_factory=list)  # (caption, png)
    sections: list[tuple[str, str]] = field(default_factory=list)  # (heading, preformatted text)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) >= 1e-3 or v == 0 else f"{v:.2e}"
    return str(v)


def _read_jsonl(path: Path) -> list[dict]:
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
                 "exp(token-weighted mean next-token cross-entropy); padding ignored, non-finite losses excluded and counted.")


def yesno_table(run: Path, record: dict) -> Table | None:
    rows = []
    for label, res in _eval_results(run, record, "yesno"):
        for mode, m in res.get("metrics", {}).items():
            groups = [("all", m)] + [(g, sub) for g, sub in (m.get("by_source") or {}).items()]
            for group, g in groups:
                ci = g.get("accuracy_ci95") or [None, None]
                rows.append([label, mode, group, g.get("n"), g.get("accuracy"), f"[{_fmt(ci[0])}, {_fmt(ci[1])}]",
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
                 ["stage", "source", "documents read", "kept", "train sequences", "val sequences", "ratio achieved"], rows)


def timing_table(record: dict) -> Table:
    rows = [[name, info.get("status"), info.get("seconds")] for name, info in record.get("stages", {}).items()]
    return Table("Stages", ["stage", "status", "seconds (last run)"], rows)


def _plot_curves(run: Path, record: dict, plot_dir: Path) -> list[tuple[str, Path]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots = []
    train_stages = [s for s in record.get("order", []) if record.get("verbs", {}).get(s) in ("pretrain", "sft")]
    curves = {s: _read_jsonl(run / s / "metrics.jsonl") for s in train_stages}
    curves = {s: rows for s, rows in curves.items() if rows}
    if not curves:
        return plots
    plot_dir.mkdir(parents=True, exist_ok=True)
    for key, title, fname in (("loss", "training loss", "train_loss.png"), ("lr", "learning rate", "lr.png")):
        fig, ax = plt.subplots(figsize=(6.4, 3.6), dpi=110)
        for s, rows in curves.items():
            pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r and isinstance(r[key], (int, float))]
            if pts:
                ax.plot(*zip(*pts), label=s)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(key)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(plot_dir / fname)
        plt.close(fig)
        plots.append((title.capitalize() + " per training stage", plot_dir / fname))
    # validation: one panel per training stage, one line per held-out source ("all" left out)
    panels = []
    for s, rows in curves.items():
        keys = sorted({k for r in rows for k in r if k.startswith("val/") and k.endswith("/loss") and k != "val/all/loss"})
        if keys:
            panels.append((s, rows, keys))
    if panels:
        cols = min(3, len(panels))
        nrows = -(-len(panels) // cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), dpi=110, squeeze=False)
        for ax, (s, rows, keys) in zip(axes.flat, panels):
            for k in keys:
                pts = [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
                ax.plot(*zip(*pts), marker="o", markersize=3, label=k[4:-5])
            ax.set_title(s, fontsize=10)
            ax.set_xlabel("optimizer step", fontsize=8)
            ax.set_ylabel("validation loss", fontsize=8)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(panels):]:
            ax.set_visible(False)
        fig.tight_layout()
        fig.savefig(plot_dir / "val_loss.png")
        plt.close(fig)
        plots.append(("Validation loss per held-out source, per training stage", plot_dir / "val_loss.png"))
    return plots


def build_report(run: Path) -> Report:
    record_path = run / "pipeline.json"
    if not record_path.is_file():
        raise FileNotFoundError(f"{run}: no pipeline.json (not a `biomamba pipeline` run directory)")
    record = read_json(record_path)
    report = Report(f"biomamba report: {record.get('name', run.name)}")
    for make in (perplexity_table, yesno_table, rouge_table, factoid_table, data_table):
        table = make(run, record)
        if table is not None:
            report.tables.append(table)
    report.tables.append(timing_table(record))
    report.plots = _plot_curves(run, record, run / "plots")
    env = next((run / s / "environment.json" for s in record.get("order", [])
                if (run / s / "environment.json").is_file()), None)
    if env is not None:
        report.sections.append(("Environment", json.dumps(read_json(env), indent=2)))
    if (run / "pipeline_config.yaml").is_file():
        report.sections.append(("Pipeline recipe", (run / "pipeline_config.yaml").read_text()))
    return report


def render_markdown(report: Report, run: Path) -> str:
    out = [f"# {report.title}", ""]
    for t in report.tables:
        out += [f"## {t.title}", "", "| " + " | ".join(t.columns) + " |", "|" + "---|" * len(t.columns)]
        out += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in t.rows]
        out += ["", t.note, ""] if t.note else [""]
    if report.plots:
        out += ["## Learning curves", ""]
        out += [f"![{caption}]({png.relative_to(run)})" for caption, png in report.plots] + [""]
    for heading, text in report.sections:
        out += [f"## {heading}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(out)


def render_html(report: Report) -> str:
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;"
             "text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}.note{color:#666;font-size:.9em}"
             "img{max-width:100%;border:1px solid #eee}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(report.title)}</h1>"]
    for t in report.tables:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in t.rows)
        parts.append(f"<h2>{html.escape(t.title)}</h2><table><tr>{head}</tr>{body}</table>")
        if t.note:
            parts.append(f"<p class='note'>{html.escape(t.note)}</p>")
    if report.plots:
        parts.append("<h2>Learning curves</h2>")
        for caption, png in report.plots:
            data = base64.b64encode(png.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    for heading, text in report.sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><pre>{html.escape(text)}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report(run: str | Path) -> tuple[Path, Path]:
    run = Path(run)
    report = build_report(run)
    md, page = run / "report.md", run / "report.html"
    atomic_write_text(md, render_markdown(report, run))
    atomic_write_text(page, render_html(report))
    return md, page
