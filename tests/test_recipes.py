"""Every shipped recipe parses against the code that reads it (a recipe can never drift)."""

from __future__ import annotations

import pytest

from biomamba.commands.eval import PplVerbConfig, TaskEvalVerbConfig
from biomamba.config import load_config
from biomamba.data.config import DataConfig
from biomamba.pipeline import CONFIGS_DIR, PipelineConfig, stage_argv
from biomamba.train.config import PretrainConfig
from biomamba.sft import SFTConfig

PIPELINES = sorted([*CONFIGS_DIR.glob("paper/*.yaml"), CONFIGS_DIR / "pipeline" / "demo.yaml"])
VERB_CONFIGS = {"pretrain": PretrainConfig, "sft": SFTConfig}


@pytest.mark.parametrize("path", sorted(CONFIGS_DIR.glob("sft/*.yaml")), ids=lambda p: p.name)
def test_sft_recipes_parse(path):
    cfg = load_config(SFTConfig, path, ["--model=some/model"])
    assert cfg.checkpoint.best_metric.startswith("val/")


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.name)
def test_pipeline_stages_parse_against_their_verbs(path, tmp_path):
    cfg = load_config(PipelineConfig, path)
    assert cfg.stages
    mapping = {"run": str(tmp_path), "corpus": str(tmp_path / "corpus"), "configs": str(CONFIGS_DIR),
               **cfg.vars}
    for stage in cfg.stages:
        argv = stage_argv(stage, tmp_path, mapping, cfg.stage_overrides)
        config = argv[argv.index("--config") + 1] if "--config" in argv else None
        overrides = [a for a in argv if a.startswith("--") and "=" in a and a != "--resume=auto"]
        if stage.verb in VERB_CONFIGS:
            load_config(VERB_CONFIGS[stage.verb], config, overrides + ["--resume=auto"])
        elif stage.verb == "eval":
            load_config(PplVerbConfig if stage.args[0] == "ppl" else TaskEvalVerbConfig, config, overrides)
        elif stage.verb == "data":
            plain = [o for o in overrides if not o.startswith("--sources.")]  # per-source edits: the data verb's
            assert load_config(DataConfig, config, plain).sources
        else:
            pytest.fail(f"{path.name}: stage {stage.name} uses verb {stage.verb} that this test does not know")


# paper 2: Table A6 (yes/no SFT: lr, epochs, effective batch, weight decay, BioASQ share),
# Table A9 (Mamba2+SFT clinical, every size) and Table A10 (BioMamba+SFT clinical: lr, epochs, warmup)
TABLE_A6 = {"130m": (3e-5, 3, 128, 0.01, 0.65), "370m": (3e-5, 2, 64, 0.01, 0.70), "780m": (2e-5, 5, 64, 0.03, 0.65),
            "1.3b": (7e-6, 3, 32, 0.03, 0.70), "2.7b": (2e-5, 5, 32, 0.01, 0.65)}
TABLE_A10 = {"130m": (1e-5, 5, 0.10), "370m": (1e-5, 5, 0.10), "780m": (7.5e-6, 6, 0.12), "1.3b": (9e-6, 6, 0.12)}


def _stage_configs(path, tmp_path):
    cfg = load_config(PipelineConfig, path)
    mapping = {"run": str(tmp_path), "corpus": str(tmp_path / "corpus"), "configs": str(CONFIGS_DIR), **cfg.vars}
    out = {}
    for stage in cfg.stages:
        argv = stage_argv(stage, tmp_path, mapping, cfg.stage_overrides)
        overrides = [a for a in argv if a.startswith("--") and "=" in a and a != "--resume=auto"]
        config = argv[argv.index("--config") + 1] if "--config" in argv else None
        if stage.verb == "sft":
            out[stage.name] = load_config(SFTConfig, config, overrides + ["--resume=auto"])
        elif stage.verb == "eval" and stage.args[0] != "ppl":
            out[stage.name] = load_config(TaskEvalVerbConfig, config, overrides)
    return out


@pytest.mark.parametrize("size", sorted(TABLE_A6))
def test_paper_recipes_carry_the_sft_tables(size, tmp_path):
    stages = _stage_configs(CONFIGS_DIR / "paper" / f"biomamba2-{size}.yaml", tmp_path)
    lr, epochs, batch, wd, share = TABLE_A6[size]
    for arm in ("base", "adapted"):
        y = stages[f"sft-yesno-{arm}"]
        assert (y.optim.lr, y.train.epochs, y.train.global_batch_size, y.optim.weight_decay) == (lr, epochs, batch, wd)
        assert y.task == "yesno_mix" and y.task_args["bioasq_share"] == share
        assert y.task_args["pubmedqa_split"] == "paper" and stages[f"yesno-{arm}"].task_args["pubmedqa_split"] == "paper"
        c = stages[f"sft-clinical-{arm}"]
        assert c.task == "clinical_mix" and c.train.global_batch_size == 32
    base = stages["sft-clinical-base"]
    assert (base.optim.lr, base.train.epochs) == (2e-5, 3)  # Table A9
    adapted = stages["sft-clinical-adapted"]
    lr10, ep10, warm10 = TABLE_A10.get(size, TABLE_A10["1.3b"])  # 2.7B: silent, the 1.3B row (documented)
    assert (adapted.optim.lr, adapted.train.epochs, adapted.schedule.warmup) == (lr10, ep10, warm10)
    tasks = {name: cfg.task for name, cfg in stages.items() if name.startswith(("completion-", "discharge-"))}
    assert sorted(tasks.values()) == ["clinical_completion"] * 3 + ["clinical_discharge"] * 3
    for name, cfg in stages.items():
        if name.startswith(("completion-", "discharge-")):
            assert cfg.split == "test" and cfg.task_args["test_max_samples"] == 500 and cfg.max_new_tokens == 128
    assert stages["completion-zero-shot"].model == f"state-spaces/mamba2-{size}"  # the no-SFT row


def test_first_paper_recipe_fine_tunes_per_year_with_the_leakage_guard(tmp_path):
    stages = _stage_configs(CONFIGS_DIR / "paper" / "biomamba-mamba1-130m.yaml", tmp_path)
    for year in ("4b", "5b", "6b"):
        sft, ev = stages[f"sft-factoid-{year}"], stages[f"factoid-{year}"]
        assert sft.task == ev.task == "bioasq_factoid"
        assert sft.paths["train"].endswith(f"BioASQ-train-factoid-{year}.json")
        # the test role is what the loader removes from training: the same files the eval scores
        assert sft.paths["test"] == ev.paths["test"] and f"-{year}-" in sft.paths["test"]
        assert ev.model.endswith(f"sft-factoid-{year}/best")
    pipeline = load_config(PipelineConfig, CONFIGS_DIR / "paper" / "biomamba-mamba1-130m.yaml")
    assert pipeline.stages[0].config.endswith("data/pubmed-2048.yaml")
