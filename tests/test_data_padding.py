"""``packing: false``: one document per row, cut to seq_len (counted) and padded (never scored).

On the embedded demo corpus (MEDLINE with an update file, C4-style JSONL, WikiText), with a
384-token BPE trained on it, so the tiny model's vocabulary covers the ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from biomamba.cli import main as cli
from biomamba.config import from_dict
from biomamba.data.build import build
from biomamba.data.config import DataConfig
from biomamba.data.readers import Doc, read_records
from biomamba.data.shards import PackedDataset
from biomamba.data.tokenizer import load_tokenizer, train_tokenizer
from biomamba.demo_corpus import DEMO_DATA, demo_texts
from biomamba.train.objective import CausalLMObjective, LossModule
from biomamba.train.trainer import collate_rows

L = 128


def demo_sources() -> list[dict]:
    return [
        {"name": "pubmed", "format": "medline", "ratio": 0.8,
         "paths": [str(DEMO_DATA / "medline" / "demo-baseline.xml.gz"),
                   str(DEMO_DATA / "medline" / "demo-update.xml")]},
        {"name": "c4", "format": "jsonl", "ratio": 0.1, "paths": [str(DEMO_DATA / "c4" / "c4-demo.jsonl")]},
        {"name": "wikipedia", "format": "wikitext", "ratio": 0.1,
         "paths": [str(DEMO_DATA / "wikitext" / "wiki-demo.raw")]},
    ]


def data_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.parts[len(root.parts)] in ("train", "val", "index")}


@pytest.fixture(scope="module")
def tok_path(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo-tok")
    return train_tokenizer(demo_texts(DEMO_DATA), vocab_size=384).save(root)


def cfg_for(tok: Path, **kw) -> DataConfig:
    return from_dict(DataConfig, {"tokenizer": str(tok), "sources": demo_sources(), "seq_len": L,
                                  "val_sequences": 8, "packing": False, "shard_sequences": 256, **kw})


@pytest.fixture(scope="module")
def padded(tmp_path_factory, tok_path):
    """The demo corpus built with packing: false twice, 1 and 2 workers."""
    root = tmp_path_factory.mktemp("padded")
    return {w: (build(cfg_for(tok_path, workers=w), root / f"w{w}"), root / f"w{w}") for w in (1, 2)}


def test_same_input_and_seed_give_byte_identical_padded_shards(padded):
    (m1, d1), (m2, d2) = padded[1], padded[2]
    f1, f2 = data_files(d1), data_files(d2)
    assert {"train/train-00000.bin", "train/rows.npy", "train/lengths.npy", "val/lengths.npy"} <= set(f1)
    assert f1 == f2
    m1c, m2c = json.loads(json.dumps(m1)), json.loads(json.dumps(m2))
    assert m1c["config"].pop("workers") == 1 and m2c["config"].pop("workers") == 2
    assert m1c == m2c
    assert m1["packing"] is False and m1["pad_id"] == 1 and m1["version"] == 2


def test_rows_are_one_document_each_cut_and_padded(padded, tok_path):
    manifest, root = padded[1]
    tok = load_tokenizer(tok_path)
    texts = {}
    for src in manifest["sources"].values():
        for f in src["files"]:
            fmt = "medline" if ".xml" in f["path"] else "jsonl" if f["path"].endswith(".jsonl") else "wikitext"
            texts.update({(f["path"], e.record): e.text for e in read_records(f["path"], fmt) if isinstance(e, Doc)})
    seen_cut = seen_padded = 0
    for split in ("train", "val"):
        ds = PackedDataset(root, split)
        assert ds.packing is False and len(ds.lengths) == len(ds)
        for i in range(0, len(ds), 7):
            item, n = ds[i], ds.length(i)
            (doc,) = ds.provenance(i)
            expected = (tok.encode(texts[(doc["file"], doc["record"])]) + [manifest["eos_id"]])[:L]
            ids = item["input_ids"]
            assert ids.shape == (L,) and n == len(expected) and int(item["length"]) == n
            assert ids[:n].tolist() == expected and (ids[n:] == manifest["pad_id"]).all()
            assert np.array_equal(item["seq_idx"], (np.arange(L) >= n).astype(np.int32))
            assert doc["truncated"] == (n == L and expected[-1] != manifest["eos_id"])
            seen_cut += doc["truncated"]
            seen_padded += n < L
    assert seen_cut and seen_padded  # both kinds of rows were checked


def test_truncation_and_padding_are_counted(padded):
    manifest, root = padded[1]
    for split in ("train", "val"):
        info = manifest["splits"][split]
        lengths = np.load(root / info["lengths"]["file"])
        rows = np.load(root / info["rows"]["file"])
        assert info["tokens"] == int(lengths.sum()) and info["padding_tokens"] == len(lengths) * L - int(lengths.sum())
        assert info["padding_fraction"] == pytest.approx(info["padding_tokens"] / (len(lengths) * L))
        full = np.zeros(len(rows), dtype=np.int64)
        for s, name in enumerate(manifest["source_order"]):
            docs = np.load(root / "index" / f"{split}-{name}.docs.npy")
            full[rows["source"] == s] = docs["length"][rows["row"][rows["source"] == s]]
            cut = manifest["sources"][name]["truncation"][split]
            assert cut == {"documents": int((docs["length"] > L).sum()),
                           "tokens_cut": int((docs["length"].astype(np.int64) - L).clip(0).sum())}
        assert np.array_equal(lengths, np.minimum(full, L))
        assert info["truncated_rows"] == int((full > L).sum()) > 0
        assert info["tokens_cut"] == int((full - L).clip(0).sum())
    for name, src in manifest["sources"].items():
        t, cut = src["tokens"], src["truncation"]
        assert t["total"] == t["val"] + t["train_available"] + cut["val"]["tokens_cut"] + cut["train"]["tokens_cut"]
        assert src["documents"] == {"val": src["val_sequences"], "train": src["counts"]["kept"] - src["val_sequences"]}


def test_mixing_is_by_rows(padded, tok_path, tmp_path):
    manifest, root = padded[1]
    assert "one document each" in manifest["mixing"]["unit"]
    train = manifest["splits"]["train"]
    n = train["sequences"]
    for name, target in manifest["mixing"]["target_ratios"].items():
        assert abs(train["sources"][name]["sequences"] - target * n) <= 1
    # wikipedia (the fewest documents) limits the downsampled mix: all its training documents, 1/8 of pubmed's rows
    wiki_docs = manifest["sources"]["wikipedia"]["documents"]["train"]
    assert train["sources"]["wikipedia"]["sequences"] == wiki_docs
    assert train["sources"]["pubmed"]["sequences"] == 8 * wiki_docs
    # documents held out never train
    for name in manifest["source_order"]:
        val = np.load(root / "index" / f"val-{name}.docs.npy")
        tr = np.load(root / "index" / f"train-{name}.docs.npy")
        assert not set(zip(val["file"].tolist(), val["record"].tolist())) & set(zip(tr["file"].tolist(),
                                                                                   tr["record"].tolist()))
    # mix: repeat with a cap: shares kept, the small sources' documents cycled
    rep = build(cfg_for(tok_path, workers=1, mix="repeat", max_train_sequences=2000), tmp_path / "rep")
    counts = {k: v["sequences"] for k, v in rep["splits"]["train"]["sources"].items()}
    assert counts == {"pubmed": 1600, "c4": 200, "wikipedia": 200}
    assert rep["sources"]["wikipedia"]["tokens"]["train_repeated_sequences"] == 200 - wiki_docs


def _tiny_model():
    from biomamba.model import MambaLM, model_preset

    torch.manual_seed(0)
    return MambaLM(model_preset("tiny", vocab_size=384, d_model=16, n_layer=2, d_state=4, headdim=4, chunk_size=16))


def test_padded_row_loss_equals_the_document_alone(padded):
    _, root = padded[1]
    ds = PackedDataset(root, "train")
    short = next(i for i in range(len(ds)) if ds.length(i) < L - 20)
    cut = next(i for i in range(len(ds)) if ds.provenance(i)[0]["truncated"])
    model, obj = _tiny_model(), CausalLMObjective()
    batch = collate_rows([ds[short], ds[cut]])
    assert batch["length"].tolist() == [ds.length(short), L]
    with torch.no_grad():
        loss, count = LossModule(model, obj)(**obj.prepare(batch))
        alone_loss, alone_count = 0.0, 0
        for i in (short, cut):
            ids = torch.from_numpy(ds.tokens(i)[:ds.length(i)].astype(np.int64))[None]
            s, c = LossModule(model, obj)(**obj.prepare({"input_ids": ids, "seq_idx": torch.zeros_like(ids)}))
            alone_loss, alone_count = alone_loss + s, alone_count + int(c)
        unmasked = obj.prepare({k: v for k, v in batch.items() if k != "length"})
    assert int(count) == alone_count == ds.length(short) - 1 + L - 1
    torch.testing.assert_close(loss, alone_loss, rtol=1e-5, atol=1e-4)
    # without the lengths, the padding of the short row would be scored (pad → pad)
    assert int((unmasked["targets"] != -100).sum()) > int(count)


def test_inspect_reports_mode_padding_and_truncation(padded, capsys):
    manifest, root = padded[1]
    assert cli(["data", "inspect", str(root), "--samples", "2", "--verify"]) == 0
    text = capsys.readouterr().out
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert "rows: one document per row, cut to seq_len and padded (packing: false)" in text
    assert f"padding: {100 * train['padding_fraction']:.1f} % of train row tokens" in text
    assert f"cut to seq_len: {train['truncated_rows']:,} of {train['sequences']:,} train rows" in text
    assert f"{val['truncated_rows']:,} of {val['sequences']:,} val rows" in text
    assert "docs_cut" in text and "tokens + padding)" in text and "all shards match the manifest" in text
    assert cli(["data", "inspect", str(root), "--json", "--samples", "0"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["packing"] is False and info["padding_fraction"]["train"] == train["padding_fraction"]
    assert info["truncated_rows"] == {"train": train["truncated_rows"], "val": val["truncated_rows"]}
