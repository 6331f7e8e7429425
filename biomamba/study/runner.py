"""Expand a study into pipeline runs, run them (or write one command per run), select a winner.

Layout of a study directory::

    study.json                  the plan: each run's axis labels and directory, the selection
    runs/<axis=label__...>/     an ordinary pipeline run directory (resumable, skipped when done)
        study_pipeline.yaml     the resolved pipeline recipe this run executes
    commands.sh                 one `biomamba pipeline` line per run (--emit), for a scheduler
"""

from __future__ import annotations

import itertools
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from biomamba.config import from_dict, read_yaml, to_dict
from biomamba.pipeline import CONFIGS_DIR, PipelineConfig, PipelineError, run_pipeline
from biomamba.study.spec import Point, StudyConfig
from biomamba.utils.io import atomic_write_text, read_json, write_json

RECIPE_FILE = "study_pipeline.yaml"
FINAL_RECIPE_FILE = "study_pipeline_final.yaml"


@dataclass
class RunPlan:
    name: str
    labels: dict[str, str]  # axis -> point label
    values: dict[str, dict[str, Any]]  # axis -> the point's numbers
    directory: Path
    recipe: dict[str, Any] = field(default_factory=dict)  # resolved pipeline recipe (without held-back stages)
    final_recipe: dict[str, Any] | None = None  # with them (selection studies)

    @property
    def label(self) -> str:
        return ", ".join(self.labels.values())


def _points(cfg: StudyConfig) -> list[list[tuple[str, Point]]]:
    axes = [[(axis, p) for p in points] for axis, points in cfg.axes.items()]
    combos = zip(*axes) if cfg.combine == "zip" else itertools.product(*axes)
    return [list(c) for c in combos]


def _merge_overrides(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for key, overrides in layer.items():
            out.setdefault(key, {}).update(overrides)
    return out


def _resolve(path: str) -> Path:
    return Path(path.replace("{configs}", str(CONFIGS_DIR))).expanduser()


def expand(cfg: StudyConfig, study_dir: str | Path) -> list[RunPlan]:
    """Every run of the study with its resolved pipeline recipe (validated, nothing written)."""
    study_dir = Path(study_dir)
    plans = []
    for combo in _points(cfg):
        recipe_path = next((p.pipeline for _, p in reversed(combo) if p.pipeline), None) or cfg.pipeline
        path = _resolve(recipe_path)
        if not path.is_file():
            raise FileNotFoundError(f"study {cfg.name}: pipeline recipe {path} not found")
        base = read_yaml(path)
        recipe = dict(base)
        recipe["vars"] = {**base.get("vars", {}), **cfg.vars, **{k: v for _, p in combo for k, v in p.vars.items()}}
        recipe["stage_overrides"] = _merge_overrides(base.get("stage_overrides", {}), cfg.stage_overrides,
                                                     *(p.stage_overrides for _, p in combo))
        recipe["report"] = base.get("report", True)
        name = "__".join(f"{axis}={p.label}" for axis, p in combo)
        plan = RunPlan(name, {axis: p.label for axis, p in combo}, {axis: dict(p.values) for axis, p in combo},
                       study_dir / "runs" / name)
        stage_names = [s["name"] for s in recipe.get("stages", [])]
        held = list(cfg.select.final_stages) if cfg.select else []
        missing = [s for s in held + ([cfg.select.stage] if cfg.select else []) if s not in stage_names]
        if missing:
            raise ValueError(f"study {cfg.name}: run {name}: stages {missing} are not in {path.name} "
                             f"({', '.join(stage_names)})")
        if held:
            plan.final_recipe = recipe
            recipe = {**recipe, "stages": [s for s in recipe["stages"] if s["name"] not in held]}
        plan.recipe = recipe
        from_dict(PipelineConfig, recipe)  # a bad override fails here, before any run starts
        plans.append(plan)
    return plans


def write_plan(cfg: StudyConfig, plans: list[RunPlan], study_dir: Path) -> None:
    import yaml

    for plan in plans:
        plan.directory.mkdir(parents=True, exist_ok=True)
        atomic_write_text(plan.directory / RECIPE_FILE, yaml.safe_dump(plan.recipe, sort_keys=False))
        if plan.final_recipe is not None:
            atomic_write_text(plan.directory / FINAL_RECIPE_FILE, yaml.safe_dump(plan.final_recipe, sort_keys=False))
    previous = read_json(study_dir / "study.json") if (study_dir / "study.json").is_file() else {}
    write_json(study_dir / "study.json", {
        "name": cfg.name, "description": cfg.description, "config": to_dict(cfg),
        "runs": [{"name": p.name, "labels": p.labels, "values": p.values, "directory": str(p.directory)}
                 for p in plans],
        "selection": previous.get("selection")})


def run_command(plan: RunPlan, final: bool = False) -> list[str]:
    recipe = plan.directory / (FINAL_RECIPE_FILE if final else RECIPE_FILE)
    return ["biomamba", "pipeline", "--config", str(recipe), "--out", str(plan.directory)]


def emit_commands(plans: list[RunPlan], study_dir: Path) -> Path:
    """``commands.sh``: one line per run, in order, for a scheduler (each line is independent)."""
    lines = ["#!/usr/bin/env bash", "# one pipeline run per line; each is resumable and skips finished stages",
             "set -euo pipefail"]
    lines += [shlex.join(run_command(p)) for p in plans]
    path = study_dir / "commands.sh"
    atomic_write_text(path, "\n".join(lines) + "\n")
    path.chmod(0o755)
    return path


def run_all(plans: list[RunPlan], invoke: Callable[[list[str]], int], keep_going: bool = False,
            log: Callable[[str], None] = print) -> dict[str, str]:
    """Each run's pipeline in sequence; returns run name -> "done" or the failure."""
    status: dict[str, str] = {}
    for i, plan in enumerate(plans, 1):
        log(f"[study] run {i}/{len(plans)}: {plan.name}")
        try:
            run_pipeline(from_dict(PipelineConfig, plan.recipe), plan.directory, invoke=invoke, log=log)
            status[plan.name] = "done"
        except PipelineError as exc:
            status[plan.name] = f"failed: {exc}"
            if not keep_going:
                raise PipelineError(f"study run {plan.name} failed: {exc}") from exc
            log(f"[study] {plan.name} failed, going on (keep_going): {exc}")
    return status


def select_run(cfg: StudyConfig, plans: list[RunPlan], study_dir: Path) -> dict[str, Any]:
    """The run with the best validation metric (ties: the first in plan order); recorded in study.json."""
    from biomamba.study.aggregate import stage_value

    sel = cfg.select
    assert sel is not None
    values = {p.name: stage_value(p.directory, sel.stage, sel.key) for p in plans}
    scored = {k: v for k, v in values.items() if isinstance(v, (int, float))}
    if not scored:
        raise PipelineError(f"selection: no run has {sel.stage}/{sel.key} yet (run the study first)")
    best = (max if sel.mode == "max" else min)(scored, key=lambda k: scored[k])
    best = next(p.name for p in plans if p.name in scored and scored[p.name] == scored[best])
    selection = {"stage": sel.stage, "key": sel.key, "mode": sel.mode, "values": values, "winner": best,
                 "final_stages": list(sel.final_stages),
                 "rule": "chosen on the validation stage only; the final (test) stages run for the winner alone"}
    record = read_json(study_dir / "study.json")
    record["selection"] = selection
    write_json(study_dir / "study.json", record)
    return selection


def run_final(plans: list[RunPlan], winner: str, invoke: Callable[[list[str]], int],
              log: Callable[[str], None] = print) -> None:
    plan = next(p for p in plans if p.name == winner)
    assert plan.final_recipe is not None
    log(f"[study] selected {winner}: running its held-back stages")
    run_pipeline(from_dict(PipelineConfig, plan.final_recipe), plan.directory, invoke=invoke, log=log)

