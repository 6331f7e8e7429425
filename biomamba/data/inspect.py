"""``biomamba data inspect DIR``: what a data directory holds, checked, with a few decoded samples."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from biomamba.data.shards import PackedDataset, read_manifest


def verify(root: str | Path) -> list[str]:
    """Problems found in the shard files (sizes always; sha256 too): empty list = all good."""
    root = Path(root)
    manifest = read_manifest(root)
    width = np.dtype(manifest["dtype"]).itemsize * int(manifest["seq_len"])
    problems = []
    for split, info in manifest["splits"].items():
        for shard in info["shards"]:
            path = root / shard["file"]
            if not path.is_file():
                problems.append(f"{shard['file']}: missing")
                continue
            if path.stat().st_size != shard["sequences"] * width:
                problems.append(f"{shard['file']}: {path.stat().st_size} bytes, expected {shard['sequences'] * width}")
                continue
            sha = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    sha.update(chunk)
            if sha.hexdigest() != shard["sha256"]:
                problems.append(f"{shard['file']}: sha256 differs from the manifest (corrupted or modified)")
    return problems


def summary(root: str | Path, samples: int = 3, chars: int = 400) -> dict[str, Any]:
    """Counts, ratios and ``samples`` decoded training rows (with their documents' provenance)."""
    root = Path(root)
    manifest = read_manifest(root)
    rows = []
    for name, src in manifest["sources"].items():
        counts, tokens = src["counts"], src["tokens"]
        rows.append({
            "source": name,
            "files": len(src["files"]),
            "read": counts["read"],
            "kept": counts["kept"],
            "skipped": ", ".join(f"{k} {v}" for k, v in sorted(counts["skipped"].items(), key=lambda kv: -kv[1]))
                       or "-",
            "errors": src.get("n_errors", 0),
            "tokens": tokens["total"],
            "val_seq": manifest["splits"]["val"]["sources"][name]["sequences"],
            "train_seq": manifest["splits"]["train"]["sources"][name]["sequences"],
            "target": (manifest["mixing"]["target_ratios"] or {}).get(name, "-"),
            "achieved": round(manifest["mixing"]["achieved_ratios"][name], 4),
        })
    out: dict[str, Any] = {"root": str(root), "sources": rows, "manifest": manifest, "samples": []}
    if samples:
        from biomamba.data.tokenizer import load_tokenizer

        tok = load_tokenizer(root / manifest["tokenizer"]["file"])
        ds = PackedDataset(root, "train")
        picks = np.linspace(0, len(ds) - 1, num=min(samples, len(ds)), dtype=int) if len(ds) else []
        for i in picks:
            ids = ds.tokens(int(i))
            text = tok.decode(ids.tolist(), skip_special_tokens=False)
            out["samples"].append({"row": int(i), "provenance": ds.provenance(int(i)),
                                   "text": text[:chars] + (" …" if len(text) > chars else "")})
    return out


def print_summary(info: dict[str, Any]) -> None:
    """Human-readable summary on stdout: header, one table row per source, warnings, samples."""
    from biomamba.utils.table import print_table

    m = info["manifest"]
    train, val = m["splits"]["train"], m["splits"]["val"]
    print(info["root"])
    print(f"  seq_len {m['seq_len']}, dtype {m['dtype']}, EOS id {m['eos_id']}, max token id {m['max_token_id']}, "
          f"seed {m['seed']}")
    print(f"  tokenizer {m['tokenizer']['source']} (sha256 {m['tokenizer']['fingerprint'][:16]}...)")
    print(f"  train: {train['sequences']:,} sequences ({train['tokens']:,} tokens) in {len(train['shards'])} shard(s); "
          f"val: {val['sequences']:,} sequences ({val['tokens']:,} tokens)")
    print(f"  mixing: {m['mixing']['mode']}, by {m['mixing']['unit']}; dedup: {m['mixing']['dedup']}")
    print()
    print_table(info["sources"], ["source", "files", "read", "kept", "skipped", "errors", "tokens", "val_seq",
                                  "train_seq", "target", "achieved"])
    for w in m.get("warnings", []):
        print(f"warning: {w}")
    for src, meta in m["sources"].items():
        for err in meta.get("errors", [])[:5]:
            print(f"skipped error ({src}): {err['message']}")
        if meta.get("n_errors", 0) > 5:
            print(f"  ... {meta['n_errors'] - 5} more in manifest.json (sources.{src}.errors)")
    for s in info["samples"]:
        docs = "; ".join(f"{d['source']} {Path(d['file']).name} #{d['record']}" + (" (continued)" if d["continued"] else "")
                         for d in s["provenance"])
        print(f"\n--- train row {s['row']}: {docs}")
        print(s["text"])
