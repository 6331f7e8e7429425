"""A study recipe: a pipeline recipe run over a grid (or list) of settings, and the tables and
figures that compare the runs.

    name: scaling
    pipeline: "{configs}/paper/biomamba2-130m.yaml"   # the base recipe every run starts from
    vars: {data_root: /data}
    axes:                                               # runs = the product of the axes' points
      size:
        - {label: 130M, pipeline: "{configs}/paper/biomamba2-130m.yaml"}
        - {label: 370M, pipeline: "{configs}/paper/biomamba2-370m.yaml"}
      lr:
        - {label: 1e-5, stage_overrides: {sft: {optim.lr: 1.0e-5}}}
    tables:
      - title: "Perplexity by size"
        row_axis: size
        columns:
          - {label: base, stage: ppl-base, key: per_source.pubmed.perplexity, decimals: 2}
          - {label: adapted, stage: ppl-adapted, key: per_source.pubmed.perplexity, decimals: 2}
          - {label: "Δ %", relative_to: base, of: adapted, decimals: 1}

A point may replace the pipeline recipe, add ``stage_overrides`` (as the pipeline's own:
keyed by verb, "verb sub-command" or stage name) and set ``vars``. Each run is an ordinary
pipeline run directory under ``STUDY/runs/<name>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+%=-]*$")


@dataclass
class Point:
    label: str
    pipeline: str | None = None  # replaces the study's base pipeline recipe for this point
    stage_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)  # numbers for plots (e.g. {params_m: 129.0})

    def __post_init__(self) -> None:
        if not _LABEL.match(self.label):
            raise ValueError(f"point label {self.label!r}: use letters, digits and _ . + % = - (it names a directory)")


@dataclass
class Paired:
    """A paired test of two stages' predictions on the same items (matched by id): the papers'
    central comparison, e.g. base+SFT (baseline) against adapted+SFT (candidate)."""

    baseline: str
    candidate: str
    # mcnemar (yes/no correctness, exact), accuracy / macro_f1 (paired bootstrap of the metric),
    # rouge1 / rouge2 / rougeL (paired bootstrap of the per-item mean)
    test: Literal["mcnemar", "accuracy", "macro_f1", "rouge1", "rouge2", "rougeL"] = "mcnemar"
    mode: str = "generate"  # which prediction of a choice task: generate | loglikelihood
    show: Literal["summary", "difference", "p"] = "summary"  # the formatted result, Δ [CI], or p
    seed: int = 0


@dataclass
class Column:
    label: str
    stage: str | None = None  # a stage of each run whose results.json / summary.json holds the value
    key: str | None = None  # dotted path into that file (e.g. metrics.generate.macro_f1)
    decimals: int | None = None
    # a computed column: ``of`` minus ``relative_to`` (both earlier column labels), in percent
    # of ``relative_to`` when ``percent`` (the papers' "change against the base model")
    of: str | None = None
    relative_to: str | None = None
    percent: bool = True
    paired: Paired | None = None  # or a paired test between two stages' per-item predictions

    def __post_init__(self) -> None:
        computed = self.of is not None or self.relative_to is not None
        if computed and (self.of is None or self.relative_to is None or self.stage or self.key):
            raise ValueError(f"column {self.label!r}: a computed column names both `of` and `relative_to` and no stage/key")
        if self.paired is not None and (computed or self.stage or self.key):
            raise ValueError(f"column {self.label!r}: a paired column names only `paired`")
        if not computed and self.paired is None and not (self.stage and self.key):
            raise ValueError(f"column {self.label!r}: needs a stage and a key (or of/relative_to, or paired)")


@dataclass
class TableSpec:
    title: str
    columns: list[Column]
    row_axis: str | None = None  # label rows by this axis's point (default: every axis, joined)
    note: str = ""


@dataclass
class FigureSpec:
    title: str
    kind: Literal["curve", "axis"] = "curve"
    # curve: a training stage's metrics.jsonl, one line per run (e.g. key val/all/loss)
    # axis: a value (stage + key) against an axis's points (x = the point's ``values[x_value]`` or its order)
    stage: str = ""
    key: str = ""
    x_axis: str | None = None
    x_value: str | None = None
    log_x: bool = False
    y_label: str | None = None  # default: the key


@dataclass
class ExamplesSpec:
    """Side-by-side outputs of several stages on the same test items (``study.examples``)."""

    title: str
    stages: list[str]
    labels: list[str] = field(default_factory=list)  # default: the stage names
    n: int = 3
    max_chars: int = 300
    seed: int = 0


@dataclass
class Selection:
    """Choose one run by a validation metric, then run the held-back test stages for it only."""

    stage: str  # the validation stage in each run (e.g. an eval on split: validation)
    key: str  # dotted path in its results.json
    mode: Literal["max", "min"] = "max"
    final_stages: list[str] = field(default_factory=list)  # held back from every run; run for the winner


@dataclass
class StudyConfig:
    name: str = "study"
    description: str = ""
    pipeline: str = ""  # base pipeline recipe ({configs} is the recipes folder)
    vars: dict[str, str] = field(default_factory=dict)
    axes: dict[str, list[Point]] = field(default_factory=dict)
    combine: Literal["product", "zip"] = "product"  # zip: the i-th point of every axis together
    stage_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)  # applied to every run
    tables: list[TableSpec] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)
    examples: list[ExamplesSpec] = field(default_factory=list)  # per run, from saved generations
    select: Selection | None = None

    def __post_init__(self) -> None:
        if not self.axes:
            raise ValueError("a study needs at least one axis (axes: {name: [points]})")
        for axis, points in self.axes.items():
            if not points:
                raise ValueError(f"axis {axis!r} has no points")
            labels = [p.label for p in points]
            if len(set(labels)) != len(labels):
                raise ValueError(f"axis {axis!r}: point labels must be unique, got {labels}")
        if self.combine == "zip" and len({len(p) for p in self.axes.values()}) > 1:
            raise ValueError("combine: zip needs the same number of points on every axis")
        if not self.pipeline and not any(all(p.pipeline for p in pts) for pts in self.axes.values()):
            raise ValueError("pipeline: the base recipe is required (or give every point of an axis its own)")
        for t in self.tables:
            if t.row_axis is not None and t.row_axis not in self.axes:
                raise ValueError(f"table {t.title!r}: row_axis {t.row_axis!r} is not an axis ({', '.join(self.axes)})")
            known: list[str] = []
            for c in t.columns:
                for ref in (c.of, c.relative_to):
                    if ref is not None and ref not in known:
                        raise ValueError(f"table {t.title!r}: column {c.label!r} refers to {ref!r}, not an earlier column")
                known.append(c.label)
        for f in self.figures:
            if f.x_axis is not None and f.x_axis not in self.axes:
                raise ValueError(f"figure {f.title!r}: x_axis {f.x_axis!r} is not an axis")
