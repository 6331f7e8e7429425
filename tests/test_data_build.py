"""Building token shards: real samples, determinism, held-out split, boundaries, updates, resume."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from biomamba.config import from_dict
from biomamba.data import build as build_mod
from biomamba.data import tokenise as tokenise_mod
from biomamba.data.build import build
from biomamba.data.config import DataConfig
from biomamba.data.medline import read_medline
from biomamba.data.readers import DataError, read_jsonl
from biomamba.data.shards import PackedDataset, seq_idx_from_eos
from biomamba.data.tokenizer import load_tokenizer

FIX = Path(__file__).parent / "fixtures" / "data"


def make_cfg(tokenizer: Path, sources: list[dict], **kw) -> DataConfig:
    return from_dict(DataConfig, {"tokenizer": str(tokenizer), "sources": sources, **kw})


def real_sources(shared: Path) -> list[dict]:
    return [
        {"name": "pubmed", "format": "medline", "ratio": 0.8,
         "paths": [str(shared / "medline" / "*.xml"), str(shared / "medline" / "*.xml.gz")]},
        {"name": "c4", "ratio": 0.1, "paths": [str(shared / "c4" / "c4-en-sample-500.jsonl")]},
        {"name": "wikipedia", "format": "wikitext", "ratio": 0.1, "paths": [str(shared / "wikitext" / "wiki.test.raw")]},
    ]


def data_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parts[len(root.parts)] in ("train", "val", "index")}


@pytest.fixture(scope="module")
def real_builds(tmp_path_factory, shared_data, neox_tokenizer_path):
    """The real samples built twice: 1 worker and 2 workers (seq_len 128, 4 held-out rows per source)."""
    root = tmp_path_factory.mktemp("real")
    outs = {}
    for workers in (1, 2):
        cfg = make_cfg(neox_tokenizer_path, real_sources(shared_data), seq_len=128, val_sequences=4,
                       workers=workers, mix="downsample")
        outs[workers] = (build(cfg, root / f"w{workers}"), root / f"w{workers}")
    return outs


def test_same_input_and_seed_give_byte_identical_shards_for_any_worker_count(real_builds):
    (m1, d1), (m2, d2) = real_builds[1], real_builds[2]
    f1, f2 = data_files(d1), data_files(d2)
    assert set(f1) >= {"train/train-00000.bin", "train/rows.npy", "val/val-00000.bin", "index/val-pubmed.docs.npy"}
    assert f1 == f2
    m1c, m2c = json.loads(json.dumps(m1)), json.loads(json.dumps(m2))
    assert m1c["config"].pop("workers") == 1 and m2c["config"].pop("workers") == 2
    assert m1c == m2c
    assert not (d1.parent / ".w1.work").exists()  # intermediate work removed after success


def test_manifest_describes_the_build(real_builds, neox_tokenizer_path):
    manifest, root = real_builds[1]
    assert manifest["seq_len"] == 128 and manifest["dtype"] == "uint16" and manifest["eos_id"] == 0
    assert manifest["tokenizer"]["fingerprint"] == load_tokenizer(neox_tokenizer_path).fingerprint()
    assert load_tokenizer(root / "tokenizer.json").fingerprint() == manifest["tokenizer"]["fingerprint"]
    assert manifest["max_token_id"] < 50277  # no added ids (e.g. "assistant" = 50279) from document text
    assert "packed sequences (tokens)" in manifest["mixing"]["unit"]
    assert "packed on its own" in manifest["mixing"]["method"]
    assert manifest["mixing"]["target_ratios"] == {"pubmed": 0.8, "c4": 0.1, "wikipedia": 0.1}
    train = manifest["splits"]["train"]
    for name, target in manifest["mixing"]["target_ratios"].items():
        n = train["sources"][name]["sequences"]
        assert abs(n - target * train["sequences"]) <= 1
        assert manifest["mixing"]["achieved_ratios"][name] == pytest.approx(n / train["sequences"])
        summary = manifest["sources"][name]
        assert summary["train_sequences"] == n and summary["ratio_target"] == target
        assert summary["ratio_achieved"] == manifest["mixing"]["achieved_ratios"][name]
        assert summary["val_sequences"] == manifest["splits"]["val"]["sources"][name]["sequences"]
    for name, src in manifest["sources"].items():
        c = src["counts"]
        assert c["read"] == c["kept"] + sum(c["skipped"].values())  # nothing silently dropped
        assert src["documents"]["val"] + src["documents"]["train"] == c["kept"]
        assert all(len(f["sha256"]) == 64 and len(f["md5"]) == 32 for f in src["files"])
    pub = manifest["sources"]["pubmed"]
    assert pub["counts"] == {"read": 10, "kept": 8, "skipped": {"no_abstract": 2},
                             "deletions": {"read": 0, "pmids_without_citation": 0}}
    assert manifest["sources"]["c4"]["counts"]["skipped"] == {"too_short": 5}
    assert manifest["sources"]["wikipedia"]["counts"]["read"] == 62
    # the MEDLINE sample is smaller than 4 held-out sequences allow: fewer, with a warning
    assert manifest["splits"]["val"]["sources"]["pubmed"]["sequences"] == 2
    assert manifest["splits"]["val"]["sources"]["c4"]["sequences"] == 4
    assert any("source pubmed" in w and "holding out 2" in w for w in manifest["warnings"])
    assert (root / "config.yaml").is_file()


def test_held_out_documents_never_appear_in_training(real_builds):
    manifest, root = real_builds[1]
    for name in manifest["source_order"]:
        val = np.load(root / "index" / f"val-{name}.docs.npy")
        train = np.load(root / "index" / f"train-{name}.docs.npy")
        assert len(val) and len(train)
        assert not set(zip(val["file"].tolist(), val["record"].tolist())) & set(
            zip(train["file"].tolist(), train["record"].tolist()))
    # and on the tokens themselves: no 32-token window of a held-out row occurs in a training row
    width = 32
    tr = PackedDataset(root, "train")
    grams = {bytes(tr.tokens(i)[j:j + width]) for i in range(len(tr)) for j in range(0, 128 - width + 1)}
    va = PackedDataset(root, "val")
    assert len(va) == 10 and len(tr) == manifest["splits"]["train"]["sequences"]
    for i in range(len(va)):
        row = va.tokens(i)
        assert not any(bytes(row[j:j + width]) in grams for j in range(0, 128 - width + 1))


def test_rows_hold_whole_documents_with_correct_seq_idx(real_builds, shared_data, neox_tokenizer_path):
    manifest, root = real_builds[1]
    for split in ("val", "train"):
        ds = PackedDataset(root, split)
        for i in range(len(ds)):
            item = ds[i]
            ids, seq_idx = item["input_ids"], item["seq_idx"]
            assert ids.dtype == np.int64 and seq_idx.dtype == np.int32 and ids.shape == seq_idx.shape == (128,)
            eos = np.flatnonzero(ids == 0)
            # seq_idx starts at 0 and steps up by one right after each EOS, nowhere else
            assert seq_idx[0] == 0 and np.array_equal(np.flatnonzero(np.diff(seq_idx)), eos[eos < 127])
            assert np.array_equal(seq_idx, seq_idx_from_eos(ids, 0))
            assert len(ds.provenance(i)) == seq_idx[-1] + 1  # one provenance entry per document in the row

    # Rebuild each source's packed stream from the rows and check every document in it
    # against its source record: text → tokens + EOS, in the order of the documents index.
    tok = load_tokenizer(neox_tokenizer_path)
    tok.backend.encode_special_tokens = True
    texts = {"pubmed": {e.record: e.text for f in sorted((shared_data / "medline").iterdir())
                        for e in read_medline(f) if hasattr(e, "text")},
             "c4": {e.record: e.text for e in read_jsonl(shared_data / "c4" / "c4-en-sample-500.jsonl")}}
    checked = 0
    for split, name in (("train", "pubmed"), ("val", "pubmed"), ("val", "c4")):
        ds = PackedDataset(root, split)
        rows = ds.rows
        stream = {}
        for i in range(len(ds)):
            if manifest["source_order"][rows[i]["source"]] == name:
                stream[int(rows[i]["row"])] = ds.tokens(i)
        n = max(stream) + 1
        assert sorted(stream) == list(range(n))  # pubmed limits the mix: all of its rows are used
        flat = np.concatenate([stream[j] for j in range(n)]).astype(np.int64)
        docs = np.load(root / "index" / f"{split}-{name}.docs.npy")
        assert docs["start"][0] == 0 and np.array_equal(docs["start"][1:], (docs["start"] + docs["length"])[:-1])
        for d in docs:
            a, b = int(d["start"]), int(d["start"] + d["length"])
            if b <= len(flat):
                assert flat[a:b].tolist() == tok.encode(texts[name][int(d["record"])]) + [0]
                checked += 1
    assert checked >= 6


def test_packed_dataset_interface(real_builds):
    manifest, root = real_builds[1]
    ds = PackedDataset(root, "train")
    assert ds.seq_len == 128 and ds.sources == ["pubmed", "c4", "wikipedia"] and ds.manifest == manifest
    assert np.array_equal(ds[-1]["input_ids"], ds[len(ds) - 1]["input_ids"])
    with pytest.raises(IndexError):
        ds[len(ds)]
    val_pub = PackedDataset(root, "val", source="pubmed")
    assert len(val_pub) == 2 and val_pub.sources == ["pubmed"]
    assert all(p["source"] == "pubmed" for i in range(len(val_pub)) for p in val_pub.provenance(i))
    c4_train = PackedDataset(root, "train", source="c4")
    assert len(c4_train) == manifest["splits"]["train"]["sources"]["c4"]["sequences"]
    clone = pickle.loads(pickle.dumps(ds))  # DataLoader workers: no memmap copied, reopened lazily
    assert len(pickle.dumps(ds)) < 100_000 and np.array_equal(clone[3]["input_ids"], ds[3]["input_ids"])
    with pytest.raises(KeyError, match="no split 'test'"):
        PackedDataset(root, "test")
    with pytest.raises(KeyError, match="no source 'pmc'"):
        PackedDataset(root, "val", source="pmc")
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        PackedDataset(root / "train")


def test_medline_updates_deletions_and_dedup(tmp_path, neox_tokenizer_path):
    cfg = make_cfg(neox_tokenizer_path, [{"name": "pubmed", "format": "medline", "paths": [
        str(FIX / "medline" / "baseline.xml"), str(FIX / "medline" / "update.xml.gz")]}],
        seq_len=16, val_sequences=1, max_val_fraction=0.5, workers=1)
    manifest = build(cfg, tmp_path / "out")
    counts = manifest["sources"]["pubmed"]["counts"]
    assert counts == {"read": 12, "kept": 4, "deletions": {"read": 2, "pmids_without_citation": 1},
                      "skipped": {"deleted": 1, "duplicate": 1, "no_abstract": 2, "non_english": 1,
                                  "superseded": 2, "too_short": 1}}
    docs = np.concatenate([np.load(tmp_path / "out" / "index" / f"{s}-pubmed.docs.npy") for s in ("val", "train")])
    assert sorted(docs["record"].tolist()) == [1001, 1002, 1008, 1010]
    files = [f["path"] for f in manifest["sources"]["pubmed"]["files"]]
    by_record = {int(d["record"]): (files[int(d["file"])], int(d["year"])) for d in docs}
    assert by_record[1002] == (str(FIX / "medline" / "update.xml.gz"), 2021)  # the later version won
    assert by_record[1001][0].endswith("baseline.xml")  # 1007 (same text) was the duplicate


def test_small_corpus_resume_and_atomic_output(tmp_path, shared_data, neox_tokenizer_path, monkeypatch):
    lines = (shared_data / "c4" / "c4-en-sample-500.jsonl").read_text().splitlines()[:300]
    (tmp_path / "c4.jsonl").write_text("\n".join(lines) + "\n")
    cfg = make_cfg(neox_tokenizer_path, [{"name": "c4", "paths": [str(tmp_path / "c4.jsonl")]}],
                   seq_len=128, val_sequences=8, workers=1, shard_sequences=300)
    out = tmp_path / "data"

    def boom(*a, **k):
        raise RuntimeError("interrupted while writing shards")

    monkeypatch.setattr(build_mod.ShardWriter, "add", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        build(cfg, out)
    assert not out.exists()  # no half dataset
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data.") and p.name != ".data.work"] == []
    assert len(list((tmp_path / ".data.work" / "units").iterdir())) == 1  # tokenised file kept for resume
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(tokenise_mod, "process_unit", lambda task: calls.append(task))
    manifest = build(cfg, out)  # resumes: the file is not read or tokenised again
    assert calls == []
    assert manifest["splits"]["val"]["sources"]["c4"]["sequences"] == 8 and not manifest["warnings"]
    n = manifest["splits"]["train"]["sequences"]
    sizes = [s["sequences"] for s in manifest["splits"]["train"]["shards"]]
    assert len(sizes) >= 2 and set(sizes[:-1]) == {300} and sum(sizes) == n
    assert manifest["mixing"]["target_ratios"] is None and manifest["mixing"]["achieved_ratios"] == {"c4": 1.0}
    monkeypatch.undo()
    again = build(cfg, out)  # from scratch (work removed after success): same bytes
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == [s["sha256"] for s in manifest["splits"]["train"]["shards"]]
    ds = PackedDataset(out, "train")
    whole = np.concatenate([np.fromfile(out / sh["file"], dtype=np.uint16) for sh in again["splits"]["train"]["shards"]])
    assert np.array_equal(ds[300]["input_ids"], whole[300 * 128:301 * 128])  # first row of the second shard


def test_refuses_to_replace_a_foreign_directory(tmp_path, neox_tokenizer_path):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    cfg = make_cfg(neox_tokenizer_path, [{"name": "x", "paths": [str(FIX / "broken" / "bad.jsonl")]}])
    with pytest.raises(DataError, match="is not a data directory written by `biomamba data build`"):
        build(cfg, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_mix_repeat_and_cap(tmp_path, shared_data, neox_tokenizer_path):
    lines = (shared_data / "c4" / "c4-en-sample-500.jsonl").read_text().splitlines()[:100]
    (tmp_path / "c4.jsonl").write_text("\n".join(lines) + "\n")
    sources = real_sources(shared_data)[:2]
    sources[0]["ratio"] = sources[1]["ratio"] = 0.5
    sources[1]["paths"] = [str(tmp_path / "c4.jsonl")]
    cfg = make_cfg(neox_tokenizer_path, sources, seq_len=256, val_sequences=1, workers=1, mix="repeat",
                   max_train_sequences=200)
    manifest = build(cfg, tmp_path / "rep")
    train = manifest["splits"]["train"]["sources"]
    assert train["pubmed"]["sequences"] == train["c4"]["sequences"] == 100
    assert manifest["sources"]["pubmed"]["tokens"]["train_repeated_sequences"] > 0
    assert any("repeated" in w for w in manifest["warnings"])
