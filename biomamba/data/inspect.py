"""``biomamba data inspect DIR``: what a data directory holds, checked, with a few decoded samples."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from biomamba.data.shards import PackedDataset, check_split, read_manifest


def verify(root: str | Path) -> list[str]:
    """Problems found in the data files (sizes, sha256 of shards, row tables and lengths): empty = all good.

    One line per problem, naming the file and the cause.
    """
    root = Path(root)
    manifest = read_manifest(root)
    return [problem for split in manifest["splits"] for problem in check_split(root, manifest, split, hash_files=True)]


def rows_mode(manifest: dict[str, Any]) -> dict[str, Any]:
    """How the rows were made: packed, or one document per row with its padding and truncation."""
    if manifest.get("packing", True):
        return {"packing": True, "mode": "packed: documents back to back, EOS between them"}
    splits = manifest["splits"]
    return {"packing": False, "mode": "one document per row, cut to seq_len and padded (packing: false)",
            "padding_fraction": {s: info.get("padding_fraction", 0.0) for s, info in splits.items()},
            "truncated_rows": {s: info.get("truncated_rows", 0) for s, info in splits.items()},
            "tokens_cut": {s: info.get("tokens_cut", 0) for s, info in splits.items()}}


def summary(root: str | Path, samples: int = 3, chars: int = 400) -> dict[str, Any]:
    """Counts, ratios, row mode and ``samples`` decoded training rows (with their documents' provenance)."""
    root = Path(root)
    manifest = read_manifest(root)
    mode = rows_mode(manifest)
    rows = []
    for name, src in manifest["sources"].items():
        counts, tokens = src["counts"], src["tokens"]
        row = {
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
        }
        if not mode["packing"]:
            cut = src.get("truncation", {})
            # over all the source's documents, used for training or not (the header counts rows written)
            row["docs_cut"] = sum(v["documents"] for v in cut.values())
            row["tokens_cut"] = sum(v["tokens_cut"] for v in cut.values())
        rows.append(row)
    out: dict[str, Any] = {"root": str(root), **mode, "sources": rows, "manifest": manifest, "samples": []}
    if samples:
        from biomamba.data.tokenizer import load_tokenizer

        tok = load_tokenizer(root / manifest["tokenizer"]["file"])
        ds = PackedDataset(root, "train", verify=False)  # sizes only: --verify hashes every file itself
        picks = np.linspace(0, len(ds) - 1, num=min(samples, len(ds)), dtype=int) if len(ds) else []
        for i in picks:
            n = ds.length(int(i))
            text = tok.decode(ds.tokens(int(i))[:n].tolist(), skip_special_tokens=False)
            out["samples"].append({"row": int(i), "length": n, "provenance": ds.provenance(int(i)),
                                   "text": text[:chars] + (" …" if len(text) > chars else "")})
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def print_summary(info: dict[str, Any]) -> None:
    """Human-readable summary on stdout: header, one table row per source, warnings, samples."""
    from biomamba.utils.table import print_table

    m = info["manifest"]
    train, val = m["splits"]["train"], m["splits"]["val"]
    print(info["root"])
    print(f"  seq_len {m['seq_len']}, dtype {m['dtype']}, EOS id {m['eos_id']}, max token id {m['max_token_id']}, "
          f"seed {m['seed']}")
    print(f"  tokenizer {m['tokenizer']['source']} (sha256 {m['tokenizer']['fingerprint'][:16]}...)")
    print(f"  rows: {info['mode']}")
    if not info["packing"]:
        pad, cut, lost = info["padding_fraction"], info["truncated_rows"], info["tokens_cut"]
        print(f"  padding: {_pct(pad['train'])} of train row tokens, {_pct(pad['val'])} of val (pad id "
              f"{m.get('pad_id')}, never scored)")
        print(f"  cut to seq_len: {cut['train']:,} of {train['sequences']:,} train rows "
              f"({lost['train']:,} tokens cut), {cut['val']:,} of {val['sequences']:,} val rows "
              f"({lost['val']:,} tokens cut)")
    print(f"  train: {train['sequences']:,} sequences ({train['tokens']:,} tokens) in {len(train['shards'])} shard(s); "
          f"val: {val['sequences']:,} sequences ({val['tokens']:,} tokens)")
    print(f"  mixing: {m['mixing']['mode']}, by {m['mixing']['unit']}; dedup: {m['mixing']['dedup']}")
    print()
    columns = ["source", "files", "read", "kept", "skipped", "errors", "tokens", "val_seq", "train_seq", "target",
               "achieved"]
    print_table(info["sources"], columns + ([] if info["packing"] else ["docs_cut", "tokens_cut"]))
    for w in m.get("warnings", []):
        print(f"warning: {w}")
    for src, meta in m["sources"].items():
        for err in meta.get("errors", [])[:5]:
            print(f"skipped error ({src}): {err['message']}")
        if meta.get("n_errors", 0) > 5:
            print(f"  ... {meta['n_errors'] - 5} more in manifest.json (sources.{src}.errors)")
    for s in info["samples"]:
        docs = "; ".join(f"{d['source']} {Path(d['file']).name} #{d['record']}"
                         + (" (continued)" if d["continued"] else "")
                         + (" (cut to seq_len)" if d.get("truncated") else "")
                         for d in s["provenance"])
        length = "" if info["packing"] else f" ({s['length']} tokens + padding)"
        print(f"\n--- train row {s['row']}{length}: {docs}")
        print(s["text"])
