"""Bad input (raise names file + record; skip counts and lists), the `biomamba data` CLI, and the configs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from biomamba.cli import main as cli
from biomamba.commands.data import load_data_config
from biomamba.config import ConfigError, from_dict
from biomamba.data.build import build
from biomamba.data.config import DataConfig
from biomamba.data.readers import DataError

FIX = Path(__file__).parent / "fixtures" / "data"
BROKEN = FIX / "broken"
CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"


def good_source(tmp_path: Path, n: int = 60) -> dict:
    text = "Clinicians reviewed the discharge summaries of patients treated for community-acquired pneumonia."
    path = tmp_path / "good.jsonl"
    path.write_text("".join(json.dumps({"text": f"{text} Record {i}: " + "detail " * (i % 7 + 20)}) + "\n"
                            for i in range(n)))
    return {"name": "good", "paths": [str(path)]}


def cfg_for(tok: Path, sources: list[dict], **kw) -> DataConfig:
    return from_dict(DataConfig, {"tokenizer": str(tok), "sources": sources, "seq_len": 32, "val_sequences": 2,
                                  "workers": 1, **kw})


@pytest.mark.parametrize("fmt,name,reason,where", [
    ("medline", "truncated.xml.gz", "truncated_gzip", "(after PMID "),
    ("medline", "malformed.xml", "malformed_xml", "line 5, column"),
    ("medline", "no_pmid.xml", "missing_field", "citation #1 has no MedlineCitation/PMID"),
    ("medline", "empty.xml", "empty_file", "empty file"),
    ("jsonl", "bad.jsonl", "invalid_json", "line 2: invalid JSON"),
    ("jsonl", "empty.jsonl", "empty_file", "empty file"),
])
def test_bad_input_raises_naming_file_and_record(tmp_path, neox_tokenizer_path, fmt, name, reason, where):
    cfg = cfg_for(neox_tokenizer_path, [good_source(tmp_path), {"name": "bad", "format": fmt,
                                                                "paths": [str(BROKEN / name)]}])
    with pytest.raises(DataError) as info:
        build(cfg, tmp_path / "out")
    assert info.value.reason == reason
    assert str(BROKEN / name) in str(info.value) and where in str(info.value)
    assert not (tmp_path / "out").exists()


def test_on_error_skip_counts_and_lists_everything(tmp_path, neox_tokenizer_path):
    bad_xml = [str(BROKEN / n) for n in ("truncated.xml.gz", "malformed.xml", "no_pmid.xml", "empty.xml")]
    cfg = cfg_for(neox_tokenizer_path, [
        good_source(tmp_path),
        {"name": "pubmed", "format": "medline", "paths": [str(FIX / "medline" / "baseline.xml"), *bad_xml]},
        {"name": "web", "format": "jsonl", "paths": [str(BROKEN / "bad.jsonl"), str(BROKEN / "empty.jsonl")]},
    ], on_error="skip", min_chars=10, val_sequences=1, max_val_fraction=0.5)
    manifest = build(cfg, tmp_path / "out")
    web = manifest["sources"]["web"]
    assert web["counts"] == {"read": 6, "kept": 2,
                             "skipped": {"blank_line": 1, "invalid_json": 1, "missing_field": 2}}
    assert web["n_errors"] == 4  # 3 broken records + the empty file
    listed = {(Path(e["file"]).name, e["where"], e["reason"]) for e in web["errors"]}
    assert listed == {("bad.jsonl", "line 2", "invalid_json"), ("bad.jsonl", "line 3", "missing_field"),
                      ("bad.jsonl", "line 5", "missing_field"), ("empty.jsonl", "", "empty_file")}
    pub = manifest["sources"]["pubmed"]
    reasons = sorted(e["reason"] for e in pub["errors"])
    assert reasons == ["empty_file", "malformed_xml", "missing_field", "truncated_gzip"]
    c = pub["counts"]
    assert c["read"] == c["kept"] + sum(c["skipped"].values())
    assert c["skipped"]["missing_field"] == 1 and c["skipped"]["duplicate"] >= 2  # no_pmid.xml repeats baseline
    files = {Path(f["path"]).name: f for f in pub["files"]}
    assert "truncated gzip" in files["truncated.xml.gz"]["error"] and files["truncated.xml.gz"]["read"] > 0
    assert "malformed XML" in files["malformed.xml"]["error"] and files["malformed.xml"]["read"] == 1


def test_cli_build_and_inspect(tmp_path, neox_tokenizer_path, capsys):
    src = good_source(tmp_path, 120)
    config = tmp_path / "data.yaml"
    config.write_text(f"tokenizer: {neox_tokenizer_path}\nseq_len: 32\nval_sequences: 2\nworkers: 1\n"
                      f"sources:\n  - name: good\n    paths: [/nonexistent/*.jsonl]\n"
                      f"  - name: bad\n    format: jsonl\n    paths: [{BROKEN / 'bad.jsonl'}]\n")
    out = tmp_path / "d"
    argv = ["data", "build", "--config", str(config), "--out", str(out), f"--sources.good.paths=[{src['paths'][0]}]",
            "--quiet"]
    assert cli(argv) == 1  # bad.jsonl line 2 stops the build: one line naming file and record, no traceback
    err = capsys.readouterr().err
    assert f"biomamba data: DataError: {BROKEN / 'bad.jsonl'}: line 2: invalid JSON" in err
    assert "Traceback" not in err and not out.exists()
    assert cli(argv + ["--on-error", "skip", "--seq-len=48"]) == 0
    captured = capsys.readouterr()
    assert "skipped 3 broken file(s)/record(s)" in captured.out
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["seq_len"] == 48 and manifest["config"]["on_error"] == "skip"
    assert (out / "config.yaml").is_file() and (out / "environment.json").is_file()

    assert cli(["data", "inspect", str(out), "--samples", "2", "--verify"]) == 0
    text = capsys.readouterr().out
    assert "source" in text and "good" in text and "invalid_json 1" in text
    assert "--- train row 0:" in text and "all shards match the manifest" in text
    assert cli(["data", "inspect", str(out), "--json", "--samples", "1"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["sources"][0]["source"] == "good" and len(info["samples"]) == 1
    shard = out / manifest["splits"]["train"]["shards"][0]["file"]
    shard.chmod(0o644)
    data = bytearray(shard.read_bytes())
    data[5] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert cli(["data", "inspect", str(out), "--samples", "0", "--verify"]) == 1
    assert "sha256 differs" in capsys.readouterr().out
    assert cli(["data", "inspect", str(tmp_path)]) == 1
    assert "no manifest.json" in capsys.readouterr().err
    assert cli(["data", "frobnicate"]) == 2


def test_every_data_config_parses():
    files = sorted(CONFIGS.glob("*.yaml"))
    assert {f.name for f in files} >= {"paper.yaml", "demo.yaml"}
    for f in files:
        load_data_config(f, [])
    paper = load_data_config(CONFIGS / "paper.yaml", [])
    assert paper.ratios() == {"pubmed": 0.8, "c4": 0.1, "wikipedia": 0.1}
    assert (paper.seq_len, paper.val_sequences, paper.seed, paper.tokenizer) == (1024, 1000, 42, "EleutherAI/gpt-neox-20b")
    assert paper.packing is True  # the paper's text; the authors' code (one document per row) is the commented line
    assert "# packing: false" in (CONFIGS / "paper.yaml").read_text()
    assert load_data_config(CONFIGS / "paper.yaml", ["--packing=false"]).packing is False
    pub = paper.sources[0]
    assert pub.download.kind == "nlm_baseline" and pub.download.url == "https://ftp.ncbi.nlm.nih.gov/pubmed/baseline/"
    assert [s.download.dataset for s in paper.sources[1:]] == ["allenai/c4", "wikimedia/wikipedia"]
    local = load_data_config(CONFIGS / "paper.yaml", ["--sources.pubmed.paths=[/data/pubmed/*.xml.gz]",
                                                      "--sources.2.ratio=0.1", "--workers=8"])
    assert local.sources[0].paths == ["/data/pubmed/*.xml.gz"] and local.workers == 8


@pytest.mark.parametrize("override,message", [
    ("--sources.c4.ratio=0.3", "ratios sum to 1.2"),
    ("--sources.nope.ratio=0.3", "no source named 'nope'"),
    ("--seq_len=1", "seq_len must be >= 2"),
    ("--on_error=ignore", "on_error: 'ignore' is not one of"),
    ("--sources.c4.format=csv", "sources\\[1\\].format: 'csv' is not one of"),
    ("--max_val_fraction=1.5", "max_val_fraction must be in"),
])
def test_config_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_data_config(CONFIGS / "paper.yaml", [override])


def test_config_rules():
    with pytest.raises(ConfigError, match="give every source a ratio or none; missing for: b"):
        from_dict(DataConfig, {"sources": [{"name": "a", "paths": ["x"], "ratio": 1.0}, {"name": "b", "paths": ["y"]}]})
    with pytest.raises(ConfigError, match="source names must be unique; repeated: a"):
        from_dict(DataConfig, {"sources": [{"name": "a", "paths": ["x"]}, {"name": "a", "paths": ["y"]}]})
    with pytest.raises(ConfigError, match="needs paths"):
        from_dict(DataConfig, {"sources": [{"name": "a"}]})
    with pytest.raises(ConfigError, match="download.kind=hf needs download.dataset"):
        from_dict(DataConfig, {"sources": [{"name": "a", "download": {"kind": "hf"}}]})
