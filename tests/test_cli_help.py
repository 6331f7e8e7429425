"""What the CLI shows: every config field in --help (from the dataclasses), --print_config,
--version, `python -m biomamba`, progress lines, and errors that say what to pass."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import yaml

from biomamba.cli import main as cli
from biomamba.commands import Progress, config_fields, config_help, field_comments

REPO = Path(__file__).resolve().parents[1]


def _help(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        cli([*argv, "--help"])
    assert exc.value.code == 0
    return capsys.readouterr().out


@dataclass
class _Inner:
    lr: float = 1e-3  # the peak rate
    # two lines of comment
    # above the field
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class _Outer:
    name: str = ""
    mode: Literal["a", "b"] = "a"  # which mode
    tags: list[str] = field(default_factory=lambda: ["x"])
    inner: _Inner = field(default_factory=lambda: _Inner(lr=0.5))
    maybe: int | None = None


def test_fields_come_from_the_dataclass_with_types_defaults_and_comments():
    rows = {key: (tp, default, text) for key, tp, default, text in config_fields(_Outer)}
    assert list(rows) == ["name", "mode", "tags", "inner.lr", "inner.betas", "maybe"]
    assert rows["mode"] == ("{a|b}", "a", "which mode")
    assert rows["inner.lr"] == ("float", "0.5", "the peak rate")  # the outer default instance's value
    assert rows["inner.betas"] == ("tuple[float, float]", "[0.9, 0.95]", "two lines of comment above the field")
    assert rows["tags"][1] == "[x]" and rows["maybe"][:2] == ("int | null", "null") and rows["name"][1] == '""'
    assert field_comments(_Inner)["lr"] == "the peak rate"
    text = config_help(_Outer, base={"mode": "b"})
    assert "  --mode: {a|b} = b\n        which mode" in text


def test_generate_help_lists_sampling_fields(capsys):
    out = _help(capsys, ["generate"])
    for line in ("--temperature: float = 0.0", "--top_p: float = 1.0", "--top_k: int = 0",
                 "--stop: list[str] = []", "--seed: int = 42", "--batch_size: int = 16",
                 "--state_dtype: str = float32"):
        assert line in out, line
    assert "nucleus sampling" in out and "--print_config" in out


@pytest.mark.parametrize("argv,cls_path", [
    (["pretrain"], "biomamba.train.config:PretrainConfig"),
    (["sft"], "biomamba.sft:SFTConfig"),
    (["eval", "yesno"], "biomamba.commands.eval:TaskEvalVerbConfig"),
    (["eval", "ppl"], "biomamba.commands.eval:PplVerbConfig"),
    (["generate"], "biomamba.commands.generate:GenerateConfig"),
    (["pipeline"], "biomamba.pipeline:PipelineConfig"),
    (["study"], "biomamba.study.spec:StudyConfig"),
    (["data", "build"], "biomamba.data.config:DataConfig"),
    (["data", "download"], "biomamba.data.config:DataConfig"),
])
def test_every_verb_help_lists_every_config_field(capsys, argv, cls_path):
    import importlib

    module, name = cls_path.split(":")
    cls = getattr(importlib.import_module(module), name)
    out = _help(capsys, argv)
    keys = [key for key, *_ in config_fields(cls)]
    assert keys and all(f"  --{key}: " in out for key in keys), [k for k in keys if f"  --{k}: " not in out]


def test_pretrain_help_shows_optim_and_train_with_their_comments(capsys):
    out = _help(capsys, ["pretrain"])
    assert "--optim.lr: float = 1.5e-06\n        peak learning rate" in out
    assert "--train.max_steps: int = 0\n        > 0: stop after this many optimizer steps" in out
    assert "--train.precision: {auto|bf16|fp32} = auto" in out and "--schedule.name: {wsd|cosine|constant} = wsd" in out
    sft = _help(capsys, ["sft"])
    assert "--optim.lr: float = 1.0e-05" in sft  # SFT's own section defaults, not the pretraining ones


def test_eval_help_exits_zero(capsys):
    assert cli(["eval", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: biomamba eval {ppl," in out and "biomamba eval yesno --config" in out
    assert cli(["eval"]) == 1  # no sub-verb is still an error


def test_version_and_python_m(capsys):
    from importlib.metadata import version

    import biomamba

    assert biomamba.__version__ == version("biomamba")
    assert cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"biomamba {biomamba.__version__}"
    run = subprocess.run([sys.executable, "-m", "biomamba", "--version"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0 and run.stdout.strip() == f"biomamba {biomamba.__version__}"
    run = subprocess.run([sys.executable, "-m", "biomamba", "generate", "--help"], capture_output=True, text=True,
                         cwd=REPO)
    assert run.returncode == 0 and "--temperature: float = 0.0" in run.stdout
    assert cli(["--help"]) == 0 and "--version" in capsys.readouterr().out


def _printed(capsys, argv: list[str]) -> dict:
    with pytest.raises(SystemExit) as exc:
        cli([*argv, "--print_config"])
    assert exc.value.code == 0
    return yaml.safe_load(capsys.readouterr().out)


def test_print_config_is_the_resolved_config_and_reloads(capsys, tmp_path):
    from biomamba.config import load_config
    from biomamba.train.config import PretrainConfig

    tiny = REPO / "configs" / "pretrain" / "tiny.yaml"
    printed = _printed(capsys, ["pretrain", "--config", str(tiny), "--optim.lr=1e-4", "--data", "d"])
    assert printed["optim"]["lr"] == 1e-4 and printed["data"] == "d" and printed["train"]["max_steps"] == 200
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(printed))
    assert load_config(PretrainConfig, tmp_path / "p.yaml") == load_config(
        PretrainConfig, tiny, ["--optim.lr=1e-4", "--data=d"])
    assert _printed(capsys, ["sft", "--model", "m"])["data_root"] == "data"
    assert _printed(capsys, ["eval", "yesno", "--model", "m"])["task"] == "yesno_mix"
    assert _printed(capsys, ["eval", "ppl", "--model", "m"])["split"] == "val"
    assert _printed(capsys, ["generate", "--model", "m", "--prompt", "x", "--temperature=0.7"])["temperature"] == 0.7
    assert _printed(capsys, ["pipeline"])["name"] == "demo"
    assert _printed(capsys, ["study", "--config", str(REPO / "configs" / "study" / "demo-lr.yaml")])["name"]
    for sub in ("build", "download"):
        assert cli(["data", sub, "--config", str(REPO / "configs" / "data" / "demo.yaml"), "--seq_len=64",
                    "--print_config"]) == 0
        data = yaml.safe_load(capsys.readouterr().out)
        assert data["seq_len"] == 64 and [s["name"] for s in data["sources"]] == ["pubmed", "c4", "wikipedia"]
    with pytest.raises(SystemExit):  # without --print_config, build still needs --out
        cli(["data", "build", "--config", str(REPO / "configs" / "data" / "demo.yaml")])


def test_progress_lines(monkeypatch):
    monkeypatch.setenv("BIOMAMBA_PROGRESS_S", "0")
    stream = io.StringIO()
    with Progress("eval x", total=4, unit="requests", stream=stream) as p:
        for _ in range(4):
            p.update()
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("eval x: 1/4 requests (25 %,") and "ETA" in lines[0]
    assert lines[-1].startswith("eval x: 4/4 requests (100 %,")
    monkeypatch.setenv("BIOMAMBA_PROGRESS_S", "30")  # a log file: nothing for a run shorter than that
    quiet = io.StringIO()
    with Progress("x", total=3, stream=quiet) as p:
        p.update(3)
    assert quiet.getvalue() == ""
    monkeypatch.setenv("BIOMAMBA_PROGRESS_S", "0")
    sizes = io.StringIO()
    Progress("download", unit="B", stream=sizes).set(2_500_000)
    assert re.match(r"download: 2\.5 MB \([0-9.]+ [kMGT]?B/s, 0:00 elapsed\)", sizes.getvalue())
    monkeypatch.setenv("BIOMAMBA_PROGRESS_S", "off")
    off = io.StringIO()
    with Progress("x", total=2, stream=off) as p:
        p.update(2)
    assert off.getvalue() == ""


def test_generate_file_mode_prints_progress(tmp_path, capsys, monkeypatch):
    from biomamba.data.tokenizer import train_tokenizer
    from biomamba.model import MambaLM, model_preset, save_model

    tok = train_tokenizer(["a bb c dd " * 20], vocab_size=280)
    save_model(MambaLM(model_preset("tiny", vocab_size=tok.vocab_size, d_model=32, n_layer=1)), tmp_path / "m",
               tokenizer=tok)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in "abcde"))
    monkeypatch.setenv("BIOMAMBA_PROGRESS_S", "0")
    assert cli(["generate", "--model", str(tmp_path / "m"), "--file", str(tmp_path / "p.jsonl"), "--batch_size=2",
                "--max-new-tokens=2", "--device=cpu"]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 5
    assert [line.split(" (")[0] for line in captured.err.splitlines()] == [
        "generate: 2/5 prompts", "generate: 4/5 prompts", "generate: 5/5 prompts", "generate: 5/5 prompts"]


def test_streamed_output_equals_the_completion():
    from biomamba.commands.generate import StreamPrinter

    out = io.StringIO()
    printer = StreamPrinter(["\n\n", "END"], out)
    for piece in ["Hello", " E", "N", "x wor", "ld\n", "\nmore"]:
        printer.add(piece)
    printer.finish("Hello ENx world")
    assert out.getvalue() == "Hello ENx world"  # "EN" held back until it was not "END"; nothing after the stop
    waited = io.StringIO()
    printer = StreamPrinter([], waited)
    printer.add("ab")
    printer.finish("ab\ufffd")  # an incomplete character at the end: the stream waited on it, the completion has it
    assert waited.getvalue() == "ab\ufffd"


def test_missing_files_name_the_role_the_pattern_and_what_to_pass(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a fresh clone's view: no ./data, no ../shared/data
    assert cli(["data", "build", "--config", str(REPO / "configs" / "data" / "demo.yaml"), "--out", "x",
                "--tokenizer=t.json"]) == 1
    err = capsys.readouterr().err
    assert "sources.pubmed.paths" in err and "biomamba/demo_data/medline" in err and "--sources.<name>.paths=" in err
    ppl = tmp_path / "ppl.yaml"
    ppl.write_text("models: [m]\nsources: [{name: wiki, paths: [data/wiki.raw], format: wikitext}]\n")
    assert cli(["eval", "ppl", "--config", str(ppl), "--out", "o"]) == 1
    err = capsys.readouterr().err
    assert "sources[wiki].paths" in err and "data/wiki.raw" in err and "paths: [FILE, ...]" in err


SHIPPED = [*sorted((REPO / "configs" / "eval").glob("*.yaml")), REPO / "configs" / "data" / "demo.yaml"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_do_not_point_beside_the_clone(path):
    """A fresh clone has no ../shared/data: shipped configs default to ./data or the packaged demo corpus
    (the comments may still name the shared samples as an option)."""
    data = yaml.safe_load(path.read_text())
    assert "../shared" not in json.dumps(data), path
