"""The Python API (biomamba.load / generate / evaluate / finetune / pretrain) gives what the
verbs give, on the tiny preset on the CPU, and docs/api.md's code runs as written."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

import biomamba
from biomamba.cli import main as cli
from biomamba.config import ConfigError
from biomamba.demo_corpus import DEMO_DATA
from biomamba.model import MambaLM, model_preset, save_model
from biomamba.utils.io import _json_safe
from helpers import randomize_weights

REPO = Path(__file__).resolve().parents[1]
PUBMEDQA_DEMO = {"pqal": "pubmedqa/demo-pqal.json", "test_ids": "pubmedqa/demo-test-ids.json"}
YESNO_DEMO = {"train": "bioasq/demo-training.json", "test": "bioasq/demo-golden.json", **PUBMEDQA_DEMO}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny Mamba2 with non-trivial random weights and a BPE tokenizer of the demo corpus."""
    from biomamba.data.tokenizer import train_tokenizer
    from biomamba.demo_corpus import demo_texts

    root = tmp_path_factory.mktemp("api")
    tok = train_tokenizer(demo_texts(DEMO_DATA), vocab_size=384)
    model = randomize_weights(MambaLM(model_preset("tiny", vocab_size=tok.vocab_size)), seed=3)
    save_model(model, root / "tiny", tokenizer=tok)
    return root / "tiny"


@pytest.fixture(scope="module")
def lm(tiny_dir):
    return biomamba.load(tiny_dir, device="cpu")


def test_top_level_exports_are_lazy_and_documented():
    import subprocess

    code = ("import sys, biomamba; assert 'torch' not in sys.modules, 'import biomamba pulled in torch'; "
            "print(sorted(biomamba.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout
    for name in ("load", "evaluate", "finetune", "pretrain", "LanguageModel", "MambaLM", "__version__"):
        assert name in out
    assert biomamba.load is biomamba.api.load and biomamba.MambaLM is MambaLM
    with pytest.raises(AttributeError, match="no attribute 'nonsense'"):
        biomamba.nonsense  # noqa: B018


def test_load_gives_model_tokenizer_and_eval_mode(lm, tiny_dir):
    assert isinstance(lm, biomamba.LanguageModel) and isinstance(lm.model, MambaLM)
    assert not lm.model.training and lm.device.type == "cpu" and lm.model.backend_name == "torch"
    assert lm.tokenizer.vocab_size == lm.model.config.vocab_size and lm.name == str(tiny_dir)
    assert "backend torch" in repr(lm)


def test_from_pretrained_is_the_loader(lm, tiny_dir):
    model = MambaLM.from_pretrained(str(tiny_dir), device="cpu")
    assert isinstance(model, MambaLM) and not model.training
    for (name, a), (_, b) in zip(model.state_dict().items(), lm.model.state_dict().items()):
        assert torch.equal(a, b), name
    bf16 = MambaLM.from_pretrained(str(tiny_dir), device="cpu", dtype="bfloat16", state_dtype="bfloat16")
    assert bf16.backbone.embedding.weight.dtype == torch.bfloat16 and bf16.ssm_state_dtype == torch.bfloat16


def test_generate_equals_the_cli_for_one_prompt_and_a_file(lm, tiny_dir, tmp_path, capsys):
    prompt = "Metformin in type 2 diabetes"
    completion = lm.generate(prompt, max_new_tokens=12)
    assert isinstance(completion, str) and completion
    assert cli(["generate", "--model", str(tiny_dir), "--prompt", prompt, "--max-new-tokens", "12",
                "--device=cpu"]) == 0
    assert capsys.readouterr().out == prompt + completion + "\n"

    prompts = [prompt, "Warfarin and the risk of stroke", "Asthma"]
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
    assert cli(["generate", "--model", str(tiny_dir), "--file", str(tmp_path / "p.jsonl"), "--max-new-tokens", "12",
                "--batch_size=2", "--device=cpu"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    batched = lm.generate(prompts, max_new_tokens=12, batch_size=2)
    assert [r["completion"] for r in records] == batched and batched[0] == completion


def test_generate_sampling_and_stop(lm):
    a = lm.generate(["Asthma", "Insulin"], max_new_tokens=10, temperature=1.0, top_p=0.9, seed=1)
    b = lm.generate(["Asthma", "Insulin"], max_new_tokens=10, temperature=1.0, top_p=0.9, seed=1)
    assert a == b  # seeded
    greedy = lm.generate("Asthma", max_new_tokens=10)
    assert len(greedy) >= 6
    cut = greedy[3:5]  # a stop string taken from the greedy text: the completion ends before it
    assert lm.generate("Asthma", max_new_tokens=10, stop=cut) == greedy[:greedy.index(cut)]
    with pytest.raises(TypeError, match="prompts must be"):
        lm.generate([1, 2])


def test_hand_built_model_picks_its_backend_at_the_first_forward(monkeypatch):
    import biomamba.model.lm as lm_module

    asked: list[tuple[str, str]] = []
    real = lm_module.resolve_backend_name
    monkeypatch.setattr(lm_module, "resolve_backend_name",
                        lambda name, dev: asked.append((name, dev)) or real(name, dev))
    model = MambaLM(model_preset("tiny", vocab_size=64, d_model=32, n_layer=1))
    assert ("auto", "cpu") not in asked  # not at construction: the model may still move to a GPU
    ids = torch.randint(0, 64, (1, 8))
    model(ids)
    assert asked[-1] == ("auto", "cpu") and model.backend_name == "torch"
    n = len(asked)
    model(ids)
    model.step(ids[:, 0], model.allocate_cache(1))
    assert len(asked) == n  # settled once
    pinned = MambaLM(model_preset("tiny", vocab_size=64, d_model=32, n_layer=1), backend="torch")
    asked.clear()
    pinned(ids)
    assert asked == []  # an explicit backend is never re-resolved


def _task_args() -> list[str]:
    return ["--task=pubmedqa", f"--data_root={DEMO_DATA}", "--paths=" + json.dumps(PUBMEDQA_DEMO),
            "--max_examples=6", "--batch_size=4", "--device=cpu"]


def test_evaluate_equals_the_cli(lm, tiny_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("BIOMAMBA_PROGRESS_S", "0")  # every progress update printed
    assert cli(["eval", "yesno", "--model", str(tiny_dir), "--out", str(tmp_path / "cli"), *_task_args()]) == 0
    err = capsys.readouterr().err
    assert re.search(r"eval pubmedqa loglikelihood: 12/12 requests", err), err
    assert re.search(r"eval pubmedqa generate: 6/6 requests", err), err
    saved = json.loads((tmp_path / "cli" / "results.json").read_text())
    kwargs = dict(data_root=str(DEMO_DATA), paths=PUBMEDQA_DEMO, max_examples=6, batch_size=4, device="cpu")
    ours = biomamba.evaluate(lm, "pubmedqa", split="test", **kwargs)
    assert json.loads(json.dumps(_json_safe(ours))) == saved
    assert saved["metrics"]["loglikelihood"]["n"] == 6 and saved["label"] == str(tiny_dir)
    # a checkpoint path instead of a loaded model, and the run directory the verb writes
    by_path = biomamba.evaluate(str(tiny_dir), "pubmedqa", out=tmp_path / "api", **kwargs)
    assert json.loads((tmp_path / "api" / "results.json").read_text()) == saved == json.loads(
        json.dumps(_json_safe(by_path)))
    cfg = yaml.safe_load((tmp_path / "api" / "config.yaml").read_text())
    assert cfg["task"] == "pubmedqa" and cfg["max_examples"] == 6


def test_evaluate_refuses_bad_settings_clearly(lm, tmp_path):
    with pytest.raises(ConfigError, match="unknown key.*max_exampels.*valid keys here.*max_examples"):
        biomamba.evaluate(lm, "pubmedqa", max_exampels=3)
    with pytest.raises(ConfigError, match="split"):
        biomamba.evaluate(lm, "pubmedqa", split="train")
    with pytest.raises(FileNotFoundError, match=r"task pubmedqa: file role paths\.\w+ = 'pubmedqa/.*does not exist"
                                                r".*--data_root=DIR.*--paths\.\w+=FILE"):
        biomamba.evaluate(lm, "pubmedqa", data_root=str(tmp_path / "nowhere"))


def test_finetune_from_a_yaml_with_overrides_runs_a_few_steps(tiny_dir, tmp_path):
    recipe = REPO / "configs" / "pipeline" / "demo" / "sft-yesno.yaml"
    summary = biomamba.finetune(recipe, out=tmp_path / "sft", model=str(tiny_dir), data_root=str(DEMO_DATA),
                                paths=YESNO_DEMO, max_len=192,
                                train={"max_steps": 3, "global_batch_size": 4, "per_device_train_batch_size": 4,
                                       "tensorboard": False},
                                **{"eval.max_sequences": 8})
    assert summary["steps"] == 3 and Path(summary["model"]).is_dir()
    saved = yaml.safe_load((tmp_path / "sft" / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["eval"]["max_sequences"] == 8
    assert saved["optim"]["lr"] == 2.0e-3 and saved["task"] == "yesno_mix"  # the rest from the YAML
    tuned = biomamba.load(summary["model"], device="cpu")
    assert tuned.generate("Asthma", max_new_tokens=4) is not None


def test_finetune_takes_a_config_object_and_names_missing_files(tiny_dir, tmp_path):
    from biomamba.sft import SFTConfig

    cfg = SFTConfig(model=str(tiny_dir), task="pubmedqa", data_root=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError,
                       match=r"task pubmedqa: file role paths\.(\w+) = .*does not exist.*--paths\.\1="):
        biomamba.finetune(cfg, out=tmp_path / "run")
    with pytest.raises(TypeError, match="checkpoint on disk"):
        biomamba.finetune(cfg, out=tmp_path / "run2", model=biomamba.load(tiny_dir, device="cpu"))
    with pytest.raises(TypeError, match="SFTConfig"):
        biomamba.finetune(model_preset("tiny"), out=tmp_path / "run3")


def test_pretrain_runs_a_few_steps(tmp_path_factory, tmp_path):
    from test_train_support import demo_data, recipe

    data = demo_data(tmp_path_factory)
    summary = biomamba.pretrain(recipe(data, train={"max_steps": 2}), out=tmp_path / "pt",
                                **{"checkpoint.export": ["final"]})
    assert summary["steps"] == 2 and (tmp_path / "pt" / "final").is_dir()


def _python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.S)


def test_docs_api_md_runs(tmp_path, monkeypatch, capsys):
    blocks = _python_blocks((REPO / "docs" / "api.md").read_text())
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)  # the example writes its checkpoint and runs where it runs
    namespace: dict = {"__name__": "docs_api"}
    for block in blocks:
        exec(compile(block, "docs/api.md", "exec"), namespace)  # noqa: S102 - our own documentation
    assert isinstance(namespace["lm"], biomamba.LanguageModel)
    assert namespace["results"]["metrics"]["loglikelihood"]["n"] > 0
    assert (tmp_path / "runs" / "api-sft" / "summary.json").is_file()
    assert capsys.readouterr().out
