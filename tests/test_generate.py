"""Decoding: `biomamba generate` against transformers' greedy generate; sampling; stop strings."""

from __future__ import annotations

import json

import pytest
import torch

from biomamba.cli import main as cli
from biomamba.data.tokenizer import load_tokenizer
from biomamba.generate import SamplingConfig, generate_ids, generate_text
from biomamba.model import MambaLM, export_hf, model_preset
from helpers import randomize_weights

PROMPT = "BRCA1 mutations increase the risk of"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, neox_tokenizer_path):
    tmp = tmp_path_factory.mktemp("gen")
    model = randomize_weights(MambaLM(model_preset("tiny")), seed=3).eval()
    export_hf(model, tmp / "hf", tokenizer=load_tokenizer(neox_tokenizer_path))
    return model, tmp / "hf"


def test_cli_greedy_equals_transformers_generate(exported, capsys):
    transformers = pytest.importorskip("transformers")
    _, path = exported
    assert cli(["generate", "--model", str(path), "--prompt", PROMPT, "--max-new-tokens", "20"]) == 0
    ours = capsys.readouterr().out.rstrip("\n")
    tok = load_tokenizer(path)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = torch.tensor([tok.encode(PROMPT)])
    out = hf.generate(ids, max_new_tokens=20, do_sample=False, eos_token_id=tok.eos_id, pad_token_id=tok.pad_id)
    theirs = PROMPT + tok.decode(out[0, ids.shape[1]:].tolist())
    assert ours == theirs
    assert len(tok.encode(ours)) > len(tok.encode(PROMPT))


def test_batched_generation_equals_one_by_one(exported, neox_tokenizer_path):
    model, _ = exported
    tok = load_tokenizer(neox_tokenizer_path)
    prompts = [tok.encode(p) for p in ["Aspirin", "The patient was admitted with chest pain and", ""]]
    cfg = SamplingConfig(max_new_tokens=12)
    batched = generate_ids(model, prompts, cfg, eos_id=None)
    alone = [generate_ids(model, [p], cfg, eos_id=None)[0] for p in prompts]
    assert batched == alone and all(len(b) == 12 for b in batched)


def test_sampling_is_seeded_and_filters_work(exported):
    model, _ = exported
    prompts = [[510, 1234], [42]]
    cfg = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=5, seed=7)
    first = generate_ids(model, prompts, cfg, eos_id=None)
    assert first == generate_ids(model, prompts, cfg, eos_id=None)
    assert first != generate_ids(model, prompts, SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=5, seed=8),
                                 eos_id=None)
    # top_k=1 and a tiny top_p both reduce to greedy
    greedy = generate_ids(model, prompts, SamplingConfig(max_new_tokens=8), eos_id=None)
    assert generate_ids(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=1), eos_id=None) == greedy
    assert generate_ids(model, prompts, SamplingConfig(max_new_tokens=8, temperature=0.7, top_p=1e-6),
                        eos_id=None) == greedy


def test_eos_and_stop_strings_end_a_row(exported, neox_tokenizer_path):
    model, _ = exported
    tok = load_tokenizer(neox_tokenizer_path)
    greedy = generate_ids(model, [tok.encode(PROMPT)], SamplingConfig(max_new_tokens=10), eos_id=None)[0]
    # pretend the 4th greedy token is EOS: generation stops before it
    assert generate_ids(model, [tok.encode(PROMPT)], SamplingConfig(max_new_tokens=10), eos_id=greedy[3])[0] == greedy[:3]
    full = generate_text(model, tok, [PROMPT], SamplingConfig(max_new_tokens=10))[0]
    stop = tok.decode(greedy[4:6])
    assert stop and stop in full
    cut = generate_text(model, tok, [PROMPT], SamplingConfig(max_new_tokens=10, stop=[stop]))[0]
    assert cut == full[:full.index(stop)]


def test_cli_file_mode_and_bad_file(exported, tmp_path, capsys):
    _, path = exported
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"prompt": "Insulin"}) + "\n\n" + json.dumps({"prompt": "Heparin"}) + "\n")
    assert cli(["generate", "--model", str(path), "--file", str(prompts), "--max-new-tokens", "4",
                "--out", str(tmp_path / "run")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == ["Insulin", "Heparin"] and all(r["completion"] for r in rows)
    prompts.write_text('{"prompt": "ok"}\n{"prompt": 3}\n')
    assert cli(["generate", "--model", str(path), "--file", str(prompts)]) == 1
    assert "p.jsonl:2" in capsys.readouterr().err
