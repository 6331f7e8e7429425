"""Cross-run tables and figures: read what each run's stages wrote, lay it out as the papers do.

Values come only from files (``<run>/<stage>/results.json`` for evaluations,
``summary.json`` for training, ``metrics.jsonl`` for curves); nothing is recomputed. A value
missing from a run (a stage not finished) prints as an en dash, never as a zero.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from biomamba.study.paired import paired_comparison
from biomamba.study.report import read_jsonl
from biomamba.study.examples import side_by_side
from biomamba.study.runner import RunPlan
from biomamba.study.spec import FigureSpec, Paired, StudyConfig, TableSpec
from biomamba.study.tables import Figure, Report, Table, new_figure, save_figure, write_report_files, \
    write_table_files
from biomamba.utils.io import read_json

_RESULT_FILES = ("results.json", "summary.json", "manifest.json")


def get_path(obj: Any, key: str) -> Any:
    """``obj`` at the dotted ``key``; a dict key that itself holds dots (a model name such as
    ``mamba2-1.3b``) is matched whole, longest first. None where the path does not exist."""
    parts = key.split(".")
    node = obj
    i = 0
    while i < len(parts):
        if isinstance(node, list) and parts[i].isdigit() and int(parts[i]) < len(node):
            node, i = node[int(parts[i])], i + 1
            continue
        if not isinstance(node, dict):
            return None
        for j in range(len(parts), i, -1):
            candidate = ".".join(parts[i:j])
            if candidate in node:
                node, i = node[candidate], j
                break
        else:
            return None
    return node


def stage_value(run_dir: Path, stage: str, key: str) -> Any:
    for name in _RESULT_FILES:
        path = run_dir / stage / name
        if path.is_file():
            value = get_path(read_json(path), key)
            if value is not None:
                return value
    return None


def _paired_cell(run_dir: Path, spec: Paired) -> Any:
    from biomamba.eval.stats import format_comparison

    comparison = paired_comparison(run_dir, spec)
    if comparison is None:
        return None
    if spec.show == "p":
        return comparison.p_value
    if spec.show == "difference":
        return f"{comparison.difference:+.3f} [{comparison.low:+.3f}, {comparison.high:+.3f}]"
    return format_comparison(comparison)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "table"


def build_table(spec: TableSpec, plans: list[RunPlan], axes: list[str]) -> Table:
    shown = [spec.row_axis] if spec.row_axis else axes
    if spec.row_axis and len({p.labels[spec.row_axis] for p in plans}) < len(plans):
        shown = axes  # the row axis alone does not tell the runs apart
    rows = []
    for plan in plans:
        values: dict[str, Any] = {}
        for col in spec.columns:
            if col.paired is not None:
                values[col.label] = _paired_cell(plan.directory, col.paired)
            elif col.stage and col.key:
                values[col.label] = stage_value(plan.directory, col.stage, col.key)
            else:
                of, rel = values.get(col.of), values.get(col.relative_to)
                ok = isinstance(of, (int, float)) and isinstance(rel, (int, float)) and (rel != 0 or not col.percent)
                values[col.label] = ((of - rel) / abs(rel) * 100 if col.percent else of - rel) if ok else None
        rows.append([plan.labels[a] for a in shown] + [values[c.label] for c in spec.columns])
    decimals = {c.label: c.decimals for c in spec.columns if c.decimals is not None}
    return Table(spec.title, shown + [c.label for c in spec.columns], rows, spec.note, decimals)


def _plot_curves(spec: FigureSpec, plans: list[RunPlan], out: Path) -> Figure | None:
    fig, axes = new_figure(width_in=3.4, height_in=2.4)
    ax = axes[0][0]
    drawn = 0
    for plan in plans:
        rows = read_jsonl(plan.directory / spec.stage / "metrics.jsonl")
        pts = [(r["step"], r[spec.key]) for r in rows if isinstance(r.get(spec.key), (int, float)) and "step" in r]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=2, label=plan.label)
            drawn += 1
    if not drawn:
        import matplotlib.pyplot as plt

        plt.close(fig)
        return None
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(spec.y_label or spec.key)
    ax.set_title(spec.title)
    ax.grid(alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, out, _slug(spec.title), spec.title)


def _plot_axis(spec: FigureSpec, plans: list[RunPlan], out: Path) -> Figure | None:
    axis = spec.x_axis or next(iter(plans[0].labels))
    groups: dict[str, list[tuple[float, float, str]]] = {}
    order = list(dict.fromkeys(p.labels[axis] for p in plans))
    for plan in plans:
        y = stage_value(plan.directory, spec.stage, spec.key)
        if not isinstance(y, (int, float)):
            continue
        x = plan.values.get(axis, {}).get(spec.x_value) if spec.x_value else order.index(plan.labels[axis])
        rest = ", ".join(v for a, v in plan.labels.items() if a != axis) or spec.key
        groups.setdefault(rest, []).append((float(x), float(y), plan.labels[axis]))
    if not groups:
        return None
    fig, axes = new_figure(width_in=3.4, height_in=2.4)
    ax = axes[0][0]
    for name, pts in groups.items():
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=name)
    if spec.log_x:
        ax.set_xscale("log")
    if not spec.x_value:
        ax.set_xticks(range(len(order)), order)
    ax.set_xlabel(spec.x_value or axis)
    ax.set_ylabel(spec.y_label or spec.key)
    ax.set_title(spec.title)
    ax.grid(alpha=0.3)
    if len(groups) > 1:
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return save_figure(fig, out, _slug(spec.title), spec.title)


def study_report(cfg: StudyConfig, plans: list[RunPlan], study_dir: Path) -> Report:
    """The study's tables (also as CSV / LaTeX / Markdown files) and figures."""
    axes = list(cfg.axes)
    report = Report(f"Study: {cfg.name}")
    for spec in cfg.tables:
        table = build_table(spec, plans, axes)
        write_table_files(table, study_dir / "tables", _slug(spec.title))
        report.tables.append(table)
    for spec in cfg.figures:
        figure = (_plot_curves if spec.kind == "curve" else _plot_axis)(spec, plans, study_dir / "figures")
        if figure is not None:
            report.plots.append(figure)
    for spec in cfg.examples:
        for plan in plans:
            table = side_by_side(plan.directory, spec.stages, spec.labels or None, spec.n, spec.max_chars, spec.seed,
                                 title=f"{spec.title} ({plan.label})")
            if table is not None:
                report.tables.append(table)
    record = read_json(study_dir / "study.json") if (study_dir / "study.json").is_file() else {}
    if record.get("selection"):
        sel = record["selection"]
        rows = [[name, value, "selected" if name == sel["winner"] else ""] for name, value in sel["values"].items()]
        report.tables.append(Table(f"Selection by {sel['stage']} / {sel['key']} ({sel['mode']})",
                                   ["run", "validation value", ""], rows, sel["rule"], {"validation value": 4}))
    report.tables.append(Table("Runs", axes + ["directory"],
                               [[p.labels[a] for a in axes] + [str(p.directory)] for p in plans]))
    if cfg.description:
        report.sections.append(("About this study", cfg.description))
    return report


def write_study_report(cfg: StudyConfig, plans: list[RunPlan], study_dir: Path) -> tuple[Path, Path]:
    return write_report_files(study_report(cfg, plans, study_dir), study_dir)


def _stages_with_results(run_dir: Path) -> list[str]:
    order: list[str] = []
    record = run_dir / "pipeline.json"
    if record.is_file():
        order = list(read_json(record).get("order", []))
    found = sorted(p.name for p in run_dir.iterdir() if p.is_dir() and any((p / f).is_file() for f in _RESULT_FILES))
    return [s for s in order if s in found] + [s for s in found if s not in order]


def default_tables(plans: list[RunPlan]) -> list[TableSpec]:
    """What every run's stages hold in common, one table per stage kind (for `biomamba report A B …`)."""
    from biomamba.study.spec import Column

    stages: list[str] = []
    for plan in plans:
        stages += [s for s in _stages_with_results(plan.directory) if s not in stages]
    ppl, tasks, training = [], [], []
    for stage in stages:
        doc = next((read_json(p.directory / stage / f) for p in plans for f in _RESULT_FILES
                    if (p.directory / stage / f).is_file()), {})
        if doc.get("task") == "ppl":
            for src in doc.get("per_source", {}):
                ppl.append(Column(f"{stage} {src}", stage, f"per_source.{src}.perplexity", 2))
        elif "metrics" in doc and "rouge" in doc["metrics"]:
            tasks += [Column(f"{stage} R-{k[5:]}", stage, f"metrics.rouge.{k}", 3) for k in ("rouge1", "rouge2", "rougeL")]
        elif "metrics" in doc and "factoid" in doc["metrics"]:
            tasks += [Column(f"{stage} {k}", stage, f"metrics.factoid.{k}", 3)
                      for k in ("strict_accuracy", "lenient_accuracy", "mrr")]
        elif "metrics" in doc:
            mode = "generate" if "generate" in doc["metrics"] else next(iter(doc["metrics"]), None)
            if mode:
                tasks += [Column(f"{stage} {k}", stage, f"metrics.{mode}.{k}", 3) for k in ("accuracy", "macro_f1")]
        elif isinstance(doc.get("best"), dict):
            training += [Column(f"{stage} best {doc['best'].get('metric', 'value')}", stage, "best.value", 4),
                         Column(f"{stage} at step", stage, "best.step")]
    return [TableSpec(title, cols) for title, cols in (("Perplexity per held-out source", ppl),
                                                       ("Downstream tasks", tasks), ("Training", training)) if cols]


def compare_runs(run_dirs: list[Path], out: Path) -> tuple[Path, Path]:
    """A cross-run report of ordinary run directories (one row per run)."""
    from biomamba.study.spec import Point

    missing = [str(d) for d in run_dirs if not d.is_dir()]
    if missing:
        raise FileNotFoundError(f"not a directory: {', '.join(missing)}")
    labels = [d.name for d in run_dirs]
    if len(set(labels)) < len(labels):
        labels = [str(d) for d in run_dirs]
    plans = [RunPlan(f"run={i}", {"run": label}, {"run": {}}, d) for i, (label, d) in enumerate(zip(labels, run_dirs))]
    cfg = StudyConfig(name="comparison", pipeline="-", axes={"run": [Point(label=f"r{i}") for i in range(len(plans))]},
                      tables=default_tables(plans))
    out.mkdir(parents=True, exist_ok=True)
    return write_study_report(cfg, plans, out)
