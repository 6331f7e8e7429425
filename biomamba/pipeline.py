"""The whole method as a list of verb invocations, resumable stage by stage.

A pipeline recipe (``configs/paper/*.yaml``, ``configs/pipeline/demo.yaml``) lists stages;
each stage is one ``biomamba VERB`` call with a config file and overrides, writing into
``RUN/<stage name>``. A stage is finished when its verb's completion file exists
(``manifest.json`` for data, ``summary.json`` for training, ``results.json`` for
evaluation); re-running the pipeline skips finished stages and resumes training stages from
their latest checkpoint (``resume: auto``). Before any work, every external requirement
(hub ids, URLs, local paths) is checked, and if some cannot be met offline the pipeline stops
at once with the full list of what to provide.

Placeholders in stage arguments: ``{run}`` (the run directory), ``{corpus}`` (the demo
corpus, written into the run directory), ``{configs}`` (the recipes folder), and the
recipe's own ``vars`` (e.g. ``{data_root}``, set with ``--vars.data_root=/data``).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from biomamba.utils.io import read_json, write_json

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
DONE_FILES = {"data": "manifest.json", "pretrain": "summary.json", "sft": "summary.json", "eval": "results.json",
              "convert": "config.json"}
TRAIN_VERBS = ("pretrain", "sft")


@dataclass
class Requirement:
    """Something from outside that the recipe needs: a local path, a hub id or a URL."""

    what: str
    path: str | None = None
    hub_id: str | None = None
    url: str | None = None
    hint: str = ""


@dataclass
class StageSpec:
    name: str
    verb: str
    args: list[str] = field(default_factory=list)  # e.g. ["build"] for data, ["ppl"] for eval
    config: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    done_file: str | None = None  # default by verb (DONE_FILES)

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"stage name {self.name!r} must be a plain directory name")


@dataclass
class PipelineConfig:
    name: str = "demo"
    description: str = ""
    demo_corpus: bool = False  # write the embedded demo corpus (and train its tokenizer) into RUN/corpus first
    # user placeholders for stage arguments, e.g. {data_root: /data}: "{data_root}/bioasq" in a stage
    vars: dict[str, str] = field(default_factory=dict)
    requires: list[Requirement] = field(default_factory=list)
    stages: list[StageSpec] = field(default_factory=list)
    # extra overrides applied on top of the stages', keyed by stage name, verb ("pretrain") or
    # verb and sub-command ("eval yesno"); e.g. a quick smoke run: {pretrain: {train.max_steps: 10}}
    stage_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    report: bool = True

    def __post_init__(self) -> None:
        names = [s.name for s in self.stages]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"stage names must be unique: {dupes}")


class PipelineError(RuntimeError):
    pass


def _substitute(value: Any, mapping: dict[str, str]) -> Any:
    if isinstance(value, str):
        for key, replacement in mapping.items():
            value = value.replace("{" + key + "}", replacement)
        return value
    if isinstance(value, list):
        return [_substitute(v, mapping) for v in value]
    if isinstance(value, dict):
        return {k: _substitute(v, mapping) for k, v in value.items()}
    return value


def _hub_cached(hub_id: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(hub_id, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - not cached (or no huggingface_hub): unmet
        return False


def _url_reachable(url: str, timeout: float = 5.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
            return True
    except Exception:  # noqa: BLE001 - any failure means: cannot fetch it from here
        return False


def unmet_requirements(requires: list[Requirement], mapping: dict[str, str]) -> list[str]:
    """Human-readable lines for each requirement that cannot be met from this machine now."""
    offline = os.environ.get("HF_HUB_OFFLINE") == "1"
    problems = []
    for req in requires:
        path = _substitute(req.path, mapping) if req.path else None
        if path and Path(path).expanduser().exists():
            continue
        if req.hub_id and (_hub_cached(req.hub_id) or (not offline and _url_reachable(
                f"https://huggingface.co/api/models/{req.hub_id}"))):
            continue
        if req.url and not offline and _url_reachable(req.url):
            continue
        where = " or ".join(x for x in [f"local path {path}" if path else "", f"hub id {req.hub_id}" if req.hub_id else "",
                                          f"URL {req.url}" if req.url else ""] if x)
        problems.append(f"- {req.what}: not available ({where}){'; ' + req.hint if req.hint else ''}")
    return problems


def stage_argv(stage: StageSpec, run_dir: Path, mapping: dict[str, str],
               extra: dict[str, dict[str, Any]] | None = None) -> list[str]:
    argv = [stage.verb, *_substitute(stage.args, mapping)]
    if stage.config:
        argv += ["--config", _substitute(stage.config, mapping)]
    argv += ["--out", str(run_dir / stage.name)]
    overrides = dict(stage.overrides)
    for key in (stage.verb, " ".join([stage.verb, *stage.args[:1]]), stage.name):  # general → specific
        overrides.update((extra or {}).get(key, {}))
    for key, value in _substitute(overrides, mapping).items():
        argv.append(f"--{key}={_yaml_scalar(value)}")
    if stage.verb in TRAIN_VERBS:
        argv.append("--resume=auto")
    return argv


def _yaml_scalar(value: Any) -> str:
    import yaml

    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def run_pipeline(cfg: PipelineConfig, run_dir: Path, invoke: Callable[[list[str]], int],
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run each unfinished stage through ``invoke(argv) -> exit code``; returns the pipeline record."""
    mapping = {"run": str(run_dir), "corpus": str(run_dir / "corpus"), "configs": str(CONFIGS_DIR),
               **{k: str(Path(v).expanduser()) for k, v in cfg.vars.items()}}
    problems = unmet_requirements(cfg.requires, mapping)
    if problems:
        raise PipelineError("this recipe needs things this machine cannot reach; provide them and re-run "
                            "(nothing was done):\n" + "\n".join(problems))
    run_dir.mkdir(parents=True, exist_ok=True)
    from biomamba.config import save_config

    save_config(cfg, run_dir / "pipeline_config.yaml")
    record_path = run_dir / "pipeline.json"
    record = read_json(record_path) if record_path.is_file() else {"name": cfg.name, "stages": {}}
    record["name"] = cfg.name
    record["order"] = [s.name for s in cfg.stages]
    record["verbs"] = {s.name: s.verb for s in cfg.stages}
    if cfg.demo_corpus and not (run_dir / "corpus" / ".complete").is_file():
        from biomamba.demo_corpus import write_demo_corpus, write_demo_tokenizer

        write_demo_corpus(run_dir / "corpus")
        write_demo_tokenizer(run_dir / "corpus")
        (run_dir / "corpus" / ".complete").write_text("ok\n")
    for stage in cfg.stages:
        done = run_dir / stage.name / (stage.done_file or DONE_FILES.get(stage.verb, "results.json"))
        entry = record["stages"].setdefault(stage.name, {})
        if done.is_file():
            log(f"[pipeline] {stage.name}: finished earlier ({done.name} found), skipped")
            entry["status"] = entry.get("status", "done")
            continue
        argv = stage_argv(stage, run_dir, mapping, cfg.stage_overrides)
        log(f"[pipeline] {stage.name}: biomamba {' '.join(argv)}")
        start = time.time()
        code = invoke(argv)
        entry.update({"argv": argv, "seconds": round(time.time() - start, 2),
                      "status": "done" if code == 0 else f"failed (exit {code})"})
        write_json(record_path, record)
        if code != 0:
            raise PipelineError(f"stage {stage.name} failed (exit {code}); fix the cause and re-run: finished "
                                f"stages are kept and training resumes from its last checkpoint")
        if not done.is_file():
            raise PipelineError(f"stage {stage.name} exited 0 but wrote no {done.name}")
    write_json(record_path, record)
    return record
