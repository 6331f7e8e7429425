"""The CLI contract and the typed config loader."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Literal

import pytest

from biomamba.cli import VERBS, main as cli
from biomamba.config import ConfigError, load_config, parse_overrides


@dataclass
class Inner:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)


@dataclass
class Outer:
    name: str = "x"
    steps: int = 10
    mode: Literal["a", "b"] = "a"
    path: str | None = None
    tags: list[str] = field(default_factory=list)
    inner: Inner = field(default_factory=Inner)


def test_yaml_then_overrides(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("steps: 5\ninner:\n  lr: 2.0e-4\n")
    cfg = load_config(Outer, cfg_file, ["--inner.lr=3e-4", "--mode=b", "tags=[a, b]", "--inner.betas=[0.8, 0.9]"])
    assert cfg.steps == 5 and cfg.inner.lr == 3e-4 and cfg.mode == "b" and cfg.tags == ["a", "b"]
    assert cfg.inner.betas == (0.8, 0.9)


@pytest.mark.parametrize("override,message", [
    ("--inner.lrr=1", "unknown key.*inner.lrr.*valid keys here: inner.betas, inner.lr"),
    ("--steps=ten", "steps: expected an integer"),
    ("--mode=c", r"mode: 'c' is not one of \['a', 'b'\]"),
    ("--inner=3", "inner: expected a mapping"),
    ("--inner.betas=[1]", "inner.betas: expected 2 items"),
    ("steps", "not of the form --key=value"),
])
def test_bad_configs_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Outer, None, [override])


def test_bad_yaml_file_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(Outer, bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")


def test_parse_overrides_nests():
    assert parse_overrides(["a.b.c=1", "a.d=x"]) == {"a": {"b": {"c": 1}, "d": "x"}}


def test_help_lists_every_verb(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for verb in ["data", "pretrain", "sft", "eval", "generate", "serve", "convert", "report", "pipeline"]:
        assert verb in VERBS and f"  {verb} " in out


def test_every_verb_has_a_module_with_main():
    for verb in VERBS:
        assert callable(importlib.import_module(f"biomamba.commands.{verb}").main), verb


def test_unknown_verb_and_failures_exit_nonzero(capsys):
    with pytest.raises(SystemExit) as exc:
        cli(["frobnicate"])
    assert exc.value.code != 0
    assert cli(["generate", "--prompt", "x"]) == 1
    assert "--model is required" in capsys.readouterr().err
