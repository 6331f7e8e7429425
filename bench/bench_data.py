"""Data build throughput on the MEDLINE path: tokens/s per worker with the real GPT-NeoX tokenizer.

Builds a synthetic MEDLINE corpus from the real citations in ../shared/data/medline (each
copied with a fresh PMID and a numbered title, gzip-compressed like NLM's baseline files),
then runs ``biomamba.data.build.build`` with each worker count and reports, for phase 1
(read XML + clean + tokenise, the part that scales with workers): tokens/s, tokens/s per
worker and scaling efficiency against 1 worker; plus the whole build's wall time. A
tokenizer-only figure (``encode_batch`` on one thread over the same texts) shows how much
of phase 1 the tokenizer itself is.

    python bench/bench_data.py --files 8 --citations 1000 --workers 1,2 [--record]

``--record`` appends this run's rows to bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BIOMAMBA_SHARED_DATA", REPO.parent / "shared" / "data"))


def citations(medline_dir: Path) -> list[str]:
    """The PubmedArticle elements of the real sample files, as XML strings."""
    out = []
    for path in sorted(medline_dir.iterdir()):
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        out += re.findall(r"<PubmedArticle>.*?</PubmedArticle>", raw.decode("utf-8"), flags=re.S)
    return out


def write_corpus(dest: Path, n_files: int, per_file: int) -> None:
    base = citations(SHARED / "medline")
    head = '<?xml version="1.0" ?>\n<PubmedArticleSet>\n'
    pmid = 40_000_000
    for f in range(n_files):
        parts = []
        for k in range(per_file):
            pmid += 1
            art = base[k % len(base)]
            art = re.sub(r"(<MedlineCitation[^>]*>\s*<PMID[^>]*>)\d+(</PMID>)", rf"\g<1>{pmid}\g<2>", art, count=1)
            art = art.replace("<ArticleTitle>", f"<ArticleTitle>[{pmid}] ", 1)
            parts.append(art)
        data = (head + "\n".join(parts) + "\n</PubmedArticleSet>\n").encode()
        (dest / f"pubmed99n{f + 1:04d}.xml.gz").write_bytes(gzip.compress(data, compresslevel=6, mtime=0))


def tokenizer_only(tok_path: Path, corpus: Path) -> float:
    """Single-thread encode_batch tokens/s over the first two files' texts (no XML parsing, no I/O)."""
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from biomamba.data.medline import read_medline
    from biomamba.data.readers import Doc
    from biomamba.data.tokenizer import load_tokenizer

    tok = load_tokenizer(tok_path)
    tok.backend.encode_special_tokens = True
    texts = [e.text for p in sorted(corpus.iterdir())[:2] for e in read_medline(p) if isinstance(e, Doc)]
    start = time.perf_counter()
    n = sum(len(ids) + 1 for ids in tok.encode_batch(texts))
    return n / (time.perf_counter() - start)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--citations", type=int, default=1000, help="citations per file")
    ap.add_argument("--workers", default=",".join(str(w) for w in sorted({1, os.cpu_count() or 1})))
    ap.add_argument("--tokenizer", default=str(SHARED / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"))
    ap.add_argument("--record", action="store_true", help="append the results to bench/RESULTS.md")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO))
    from biomamba.config import from_dict
    from biomamba.data.build import build
    from biomamba.data.config import DataConfig

    tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
    try:
        corpus = tmp / "medline"
        corpus.mkdir()
        write_corpus(corpus, args.files, args.citations)
        size = sum(p.stat().st_size for p in corpus.iterdir())
        print(f"corpus: {args.files} files x {args.citations} citations ({size / 1e6:.1f} MB gz); "
              f"{os.cpu_count()} CPU cores; {platform.processor() or platform.machine()}")
        results = []
        for w in [int(x) for x in args.workers.split(",")]:
            cfg = from_dict(DataConfig, {"tokenizer": args.tokenizer, "workers": w, "seq_len": 1024,
                                         "val_sequences": 10, "sources": [{"name": "pubmed", "format": "medline",
                                                                           "paths": [str(corpus)]}]})
            out = tmp / f"out-w{w}"
            build(cfg, out)
            stats = json.loads((out / "build_stats.json").read_text())
            rate = stats["tokens_per_s_read_tokenize"]
            results.append({"workers": w, "tokens": stats["tokens_tokenized"], "phase1_s": stats["seconds"]["read_tokenize"],
                            "tok_s": rate, "tok_s_per_worker": rate / w, "total_s": stats["seconds"]["total"]})
            shutil.rmtree(out)
        base = results[0]["tok_s"] / results[0]["workers"]
        print(f"{'workers':>7} {'tokens':>10} {'phase1 s':>9} {'tokens/s':>10} {'per worker':>10} {'scaling':>8} {'build s':>8}")
        for r in results:
            r["efficiency"] = r["tok_s_per_worker"] / base
            print(f"{r['workers']:>7} {r['tokens']:>10,} {r['phase1_s']:>9.2f} {r['tok_s']:>10,.0f} "
                  f"{r['tok_s_per_worker']:>10,.0f} {r['efficiency']:>7.0%} {r['total_s']:>8.2f}")
        only = tokenizer_only(Path(args.tokenizer), corpus)
        print(f"tokenizer alone (1 thread, encode_batch): {only:,.0f} tokens/s")
        if args.record:
            day = datetime.date.today().isoformat()
            device = f"CPU: {os.cpu_count()} cores ({platform.machine()})"
            cmd = f"python bench/bench_data.py --files {args.files} --citations {args.citations} --workers {args.workers}"
            rows = [f"| {day} | {device} | `{cmd}` | {r['workers']} worker(s): {r['tok_s']:,.0f} tokens/s "
                    f"({r['tok_s_per_worker']:,.0f}/worker, {r['efficiency']:.0%} of 1-worker rate; "
                    f"{r['tokens']:,} tokens, build {r['total_s']:.1f} s) | none |" for r in results]
            rows.append(f"| {day} | {device} | same | tokenizer alone, 1 thread: {only:,.0f} tokens/s | none |")
            path = REPO / "bench" / "RESULTS.md"
            text = path.read_text() if path.is_file() else "# Benchmark results\n"
            section = "\n## Data: MEDLINE path, tokens/s per worker (bench/bench_data.py)\n\n" \
                      "| date | device | command | result | peer |\n|---|---|---|---|---|\n"
            path.write_text(text.rstrip("\n") + "\n" + section + "\n".join(rows) + "\n")
            print(f"recorded in {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
