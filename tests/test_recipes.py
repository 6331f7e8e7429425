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
