"""The eval recipes parse against their configs, and an end-to-end task evaluation and perplexity
table run on a tiny random Mamba2 model (the path the ``biomamba eval`` verbs take)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from biomamba.config import load_config
from biomamba.eval.run import (PerplexityConfig, TaskEvalConfig, TextSource, perplexity_table, read_documents,
                               run_perplexity, run_task_eval)

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "eval"


@pytest.mark.parametrize("name", ["yesno", "factoid", "clinical"])
def test_task_eval_recipes_parse(name):
    from biomamba.tasks import get_task

    cfg = load_config(TaskEvalConfig, CONFIGS / f"{name}.yaml")
    get_task(cfg.task)  # names a real task


def test_ppl_recipe_parses():
    cfg = load_config(PerplexityConfig, CONFIGS / "ppl.yaml")
    assert cfg.window == 1024 and [s.name for s in cfg.sources] == ["wikitext", "c4", "pubmed"]


@pytest.fixture(scope="module")
def tiny_lm(neox_tokenizer_path):
    from biomamba.data.tokenizer import load_tokenizer
    from biomamba.eval.lm import from_mamba
    from biomamba.model import MambaLM
    from biomamba.model.config import model_preset

    torch.manual_seed(0)
    return from_mamba(MambaLM(model_preset("tiny")).eval(), load_tokenizer(neox_tokenizer_path), batch_size=4)


def test_run_task_eval_writes_results(tiny_lm, shared_data, tmp_path, capsys):
    cfg = TaskEvalConfig(model="tiny-random", task="pubmedqa", data_root=str(shared_data), max_examples=3)
    results = run_task_eval(cfg, tiny_lm, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["metrics"]["loglikelihood"]["n"] == 3 == saved["metrics"]["generate"]["n"]
    assert saved["data"]["maybe_dropped"] == 55 and saved["split"] == "test"
    assert results["metrics"]["generate"]["unparsed"] == results["counts"]["unparsed"]
    assert "loglikelihood" in capsys.readouterr().out and (tmp_path / "results.txt").is_file()


def test_run_perplexity_table(tiny_lm, shared_data):
    source = TextSource(name="wikitext", paths=[str(shared_data / "wikitext" / "wiki.test.raw")], format="wikitext",
                        max_documents=2)
    docs = {"wikitext": [d[:600] for d in read_documents(source)]}
    assert len(docs["wikitext"]) == 2
    rows = {"tiny": run_perplexity("tiny", tiny_lm, docs, window=64, stride=32)}
    t = rows["tiny"]["wikitext"]
    assert t.tokens == sum(len(tiny_lm.tokenizer.encode(d)) for d in docs["wikitext"])  # EOS prefix: all scored
    assert t.bytes == sum(len(d.encode()) for d in docs["wikitext"]) and math.isfinite(t.bits_per_byte)
    table = perplexity_table(rows)
    assert "bits/byte" in table and "wikitext" in table
