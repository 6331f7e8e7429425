"""Tokenizer loading (real GPT-NeoX file, offline hub id) and the demo's trained tokenizer."""

from __future__ import annotations

import pytest

from biomamba.data.tokenizer import TokenizerNotFound, load_tokenizer, train_tokenizer


def test_real_gpt_neox_tokenizer(neox_tokenizer_path):
    tok = load_tokenizer(neox_tokenizer_path)
    assert tok.eos_id == 0 and tok.pad_id == 1 and tok.vocab_size == 50281
    text = "BRCA1 mutations: HbA1c fell by 0.5% (P = 0.01)."
    ids = tok.encode(text)
    assert tok.decode(ids) == text and max(ids) < 50277
    assert load_tokenizer(neox_tokenizer_path.parent).fingerprint() == tok.fingerprint()


def test_hub_id_offline_names_what_to_pass():
    with pytest.raises(TokenizerNotFound, match="--tokenizer=/path/to"):
        load_tokenizer("EleutherAI/gpt-neox-20b")
    with pytest.raises(TokenizerNotFound, match="no such file"):
        load_tokenizer("./missing/tokenizer.json")


def test_bad_tokenizer_file_is_named(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="tokenizer.json: not a valid"):
        load_tokenizer(bad)


def test_trained_tokenizer_round_trips_and_is_deterministic(tmp_path):
    texts = ["Metformin reduced HbA1c in type 2 diabetes.", "We walked along the old harbour at sunset."] * 50
    a, b = train_tokenizer(texts, vocab_size=300), train_tokenizer(texts, vocab_size=300)
    assert a.fingerprint() == b.fingerprint()
    assert a.eos_id == 0 and a.pad_id == 1 and a.vocab_size <= 300
    unseen = "Zebrafish née ünïcode 😀"
    assert a.decode(a.encode(unseen)) == unseen  # byte-level: nothing is out of vocabulary
    a.save(tmp_path)
    assert load_tokenizer(tmp_path).fingerprint() == a.fingerprint()


def test_plain_text_never_becomes_special_ids(neox_tokenizer_path):
    # the shared file registers "assistant" (50279) and <|im_start|> as added tokens
    tok = load_tokenizer(neox_tokenizer_path)
    ids = tok.encode("The assistant wrote <|endoftext|> and <|im_start|> in the note.")
    assert max(ids) < 50277 and tok.eos_id not in ids
