"""Tables and figures as the reports write them: Markdown, self-contained HTML, CSV and LaTeX.

A column has a fixed number of decimals (``Table.decimals``), so one column never mixes
``1``, ``0.969`` and ``8732``; intervals print as ``[lo, hi]`` at the column's decimals.
Figures are saved as vector SVG (and PDF) and as PNG at 200 dpi, sized for one printed column.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from biomamba.utils.io import atomic_write_text

FIGURE_DPI = 200
COLUMN_WIDTH_IN = 3.4  # one column of a two-column paper


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]]
    note: str = ""
    decimals: dict[str, int] = field(default_factory=dict)  # column name -> decimals (default: 3 for floats)


@dataclass
class Figure:
    caption: str
    png: Path
    vector: list[Path] = field(default_factory=list)  # SVG / PDF beside the PNG


@dataclass
class Report:
    title: str
    tables: list[Table] = field(default_factory=list)
    plots: list[Figure] = field(default_factory=list)
    sections: list[tuple[str, str]] = field(default_factory=list)  # (heading, preformatted text)


def format_value(v: Any, decimals: int | None = None) -> str:
    """One cell: None as an en dash, ints with thousands separators, floats at fixed decimals,
    a two-number list as an interval."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        d = 3 if decimals is None else decimals
        if v != 0 and abs(v) < 0.5 * 10 ** -d:  # would print as 0.000: keep two significant digits
            return f"{v:.1e}"
        return f"{v:,.{d}f}"
    if isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(x, (int, float)) or x is None for x in v):
        return f"[{format_value(_as_float(v[0]), decimals)}, {format_value(_as_float(v[1]), decimals)}]"
    return str(v)


def _as_float(x: Any) -> Any:
    return float(x) if isinstance(x, int) and not isinstance(x, bool) else x


def _numeric(v: Any) -> bool:
    """Numbers (and intervals) align right in HTML; text reads left to right."""
    if isinstance(v, (list, tuple)):
        return len(v) == 2 and all(isinstance(x, (int, float)) or x is None for x in v)
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def cells(table: Table) -> list[list[str]]:
    return [[format_value(v, table.decimals.get(c)) for c, v in zip(table.columns, row)] for row in table.rows]


def to_markdown(table: Table) -> str:
    out = [f"## {table.title}", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    out += ["| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in cells(table)]
    out += ["", table.note, ""] if table.note else [""]
    return "\n".join(out)


def to_csv(table: Table) -> str:
    """Raw values (full precision) for further analysis; intervals as two columns."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    header: list[str] = []
    for i, c in enumerate(table.columns):
        is_interval = any(isinstance(r[i], (list, tuple)) for r in table.rows)
        header += [f"{c} low", f"{c} high"] if is_interval else [c]
    writer.writerow(header)
    for row in table.rows:
        out: list[Any] = []
        for i, v in enumerate(row):
            is_interval = any(isinstance(r[i], (list, tuple)) for r in table.rows)
            if is_interval:
                out += list(v) if isinstance(v, (list, tuple)) else ["", ""]
            else:
                out.append("" if v is None else v)
        writer.writerow(out)
    return buf.getvalue()


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _latex_escape(text: str) -> str:
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def to_latex(table: Table) -> str:
    """A booktabs table (``\\usepackage{booktabs}``), numbers right-aligned."""
    align = "l" + "r" * (len(table.columns) - 1)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{_latex_escape(table.title)}}}",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_latex_escape(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(c) for c in row) + r" \\" for row in cells(table)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    if table.note:
        lines.append(rf"\par\smallskip{{\footnotesize {_latex_escape(table.note)}}}")
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def write_table_files(table: Table, directory: Path, stem: str) -> list[Path]:
    """``stem.csv``, ``stem.tex`` and ``stem.md`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, text in (("csv", to_csv(table)), ("tex", to_latex(table)), ("md", to_markdown(table))):
        path = directory / f"{stem}.{ext}"
        atomic_write_text(path, text)
        paths.append(path)
    return paths


def save_figure(fig: Any, directory: Path, stem: str, caption: str) -> Figure:
    """SVG + PDF (vector) and a 200-dpi PNG of a matplotlib figure; the figure is closed."""
    import matplotlib.pyplot as plt

    directory.mkdir(parents=True, exist_ok=True)
    vector = []
    for ext in ("svg", "pdf"):
        path = directory / f"{stem}.{ext}"
        fig.savefig(path, bbox_inches="tight")
        vector.append(path)
    png = directory / f"{stem}.png"
    fig.savefig(png, dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)
    return Figure(caption, png, vector)


def new_figure(width_in: float = COLUMN_WIDTH_IN, height_in: float = 2.4, ncols: int = 1, nrows: int = 1):
    """A figure sized for print, with fonts that stay legible at that size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 7, "axes.titlesize": 8, "axes.labelsize": 7, "legend.fontsize": 6,
                         "xtick.labelsize": 6, "ytick.labelsize": 6, "lines.linewidth": 1.2,
                         "svg.fonttype": "none"})
    return plt.subplots(nrows, ncols, figsize=(width_in * ncols, height_in * nrows), squeeze=False)


def render_markdown(report: Report, root: Path) -> str:
    out = [f"# {report.title}", ""]
    for t in report.tables:
        out.append(to_markdown(t))
    if report.plots:
        out += ["## Figures", ""]
        for f in report.plots:
            links = ", ".join(f"[{p.suffix[1:].upper()}]({p.relative_to(root)})" for p in f.vector)
            out += [f"![{f.caption}]({f.png.relative_to(root)})", "", f"*{f.caption}* ({links})" if links
                    else f"*{f.caption}*", ""]
    for heading, text in report.sections:
        out += [f"## {heading}", "", "```", text.rstrip(), "```", ""]
    return "\n".join(out)


def render_html(report: Report) -> str:
    style = ("body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:.5em 0 1.5em;font-variant-numeric:tabular-nums}"
             "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:top}"
             "th{background:#f3f3f3}td.n{text-align:right}"
             "pre{background:#f7f7f7;padding:1em;overflow:auto;font-size:.85em}.note{color:#666;font-size:.9em}"
             "img{max-width:100%;border:1px solid #eee}")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.title)}</title>"
             f"<style>{style}</style></head><body><h1>{html.escape(report.title)}</h1>"]
    for t in report.tables:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
        body = "".join("<tr>" + "".join(f"<td{' class=n' if _numeric(v) else ''}>{html.escape(c)}</td>"
                                        for v, c in zip(raw, row)) + "</tr>" for raw, row in zip(t.rows, cells(t)))
        parts.append(f"<h2>{html.escape(t.title)}</h2><table><tr>{head}</tr>{body}</table>")
        if t.note:
            parts.append(f"<p class='note'>{html.escape(t.note)}</p>")
    if report.plots:
        parts.append("<h2>Figures</h2>")
        for f in report.plots:
            data = base64.b64encode(f.png.read_bytes()).decode()
            parts.append(f"<figure><img alt='{html.escape(f.caption)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(f.caption)}</figcaption></figure>")
    for heading, text in report.sections:
        parts.append(f"<h2>{html.escape(heading)}</h2><pre>{html.escape(text)}</pre>")
    parts.append("</body></html>")
    return "".join(parts)


def write_report_files(report: Report, root: Path, stem: str = "report") -> tuple[Path, Path]:
    md, page = root / f"{stem}.md", root / f"{stem}.html"
    atomic_write_text(md, render_markdown(report, root))
    atomic_write_text(page, render_html(report))
    return md, page
