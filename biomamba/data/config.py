"""Configuration of a data build: a :class:`DataConfig` with one :class:`SourceConfig` per corpus.

Loaded like every other verb's config (``biomamba.config.load_config``): dataclass defaults
← YAML (``configs/data/*.yaml``) ← ``--key=value`` overrides. Every field is validated in
``__post_init__`` so that a wrong value fails before any file is read.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Literal

from biomamba.data.tokenizer import DEFAULT_TOKENIZER

NLM_BASELINE_URL = "https://ftp.ncbi.nlm.nih.gov/pubmed/baseline/"
NLM_UPDATES_URL = "https://ftp.ncbi.nlm.nih.gov/pubmed/updatefiles/"

Format = Literal["auto", "medline", "jsonl", "parquet", "wikitext", "text"]
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class DownloadConfig:
    """Where a source's raw files come from when ``paths`` is empty (``kind: none``: nowhere).

    ``kind: nlm_baseline`` lists ``url`` (NLM's PubMed baseline directory), downloads each
    ``*.xml.gz`` with its ``.md5`` (verified), resumably and ``workers`` at a time;
    ``include_updates`` adds the daily update files, applied after the baseline.
    ``kind: hf`` fetches the files of a Hugging Face dataset repository (``dataset``) whose
    names match ``pattern`` (a glob relative to the repository root), sorted by name.
    ``max_files`` keeps only the first N files (sorted), for partial corpora.
    """

    kind: Literal["none", "nlm_baseline", "hf"] = "none"
    url: str = NLM_BASELINE_URL
    updates_url: str = NLM_UPDATES_URL
    include_updates: bool = False
    dataset: str = ""
    pattern: str = "*"
    revision: str | None = None
    # a Hugging Face hub mirror (default: the hub, or $HF_ENDPOINT)
    endpoint: str | None = None
    max_files: int | None = None
    workers: int = 4
    retries: int = 3
    timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if self.kind == "hf" and not self.dataset:
            raise ValueError("download.kind=hf needs download.dataset (a Hugging Face dataset id, e.g. allenai/c4)")
        if self.kind == "nlm_baseline" and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"download.url must be an http(s) URL, got {self.url!r}")
        if self.max_files is not None and self.max_files < 1:
            raise ValueError(f"download.max_files must be >= 1, got {self.max_files}")
        if self.workers < 1:
            raise ValueError(f"download.workers must be >= 1, got {self.workers}")
        if self.retries < 0:
            raise ValueError(f"download.retries must be >= 0, got {self.retries}")


@dataclass
class SourceConfig:
    """One corpus: its files (paths, directories or globs), their format, and its share of training."""

    name: str
    paths: list[str] = field(default_factory=list)
    format: Format = "auto"
    # share of the training sequences (tokens); all sources give one, or none does (keep everything)
    ratio: float | None = None
    download: DownloadConfig = field(default_factory=DownloadConfig)
    # jsonl / parquet: the field holding the document text
    text_field: str = "text"
    # text: one document per file, per blank-line-separated paragraph, or per line
    text_unit: Literal["file", "paragraph", "line"] = "file"
    # medline: keep citations whose <Language> is one of these (empty: all languages)
    languages: list[str] = field(default_factory=lambda: ["eng"])
    # medline: skip citations without an abstract (title-only records)
    require_abstract: bool = True
    # medline: skip citations carrying any of these publication types (e.g. "Retracted Publication")
    exclude_publication_types: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"source name {self.name!r} must be letters, digits, '_', '-', '.'")
        if self.ratio is not None and not (0.0 <= self.ratio <= 1.0 and math.isfinite(self.ratio)):
            raise ValueError(f"sources.{self.name}.ratio must be in [0, 1], got {self.ratio}")
        if not self.paths and self.download.kind == "none":
            raise ValueError(f"source {self.name!r} needs paths (files, directories or globs) or a download spec")
        if not self.text_field:
            raise ValueError(f"sources.{self.name}.text_field must not be empty")


@dataclass
class DataConfig:
    """A data build: sources → cleaned, deduplicated, tokenised, packed, mixed token shards.

    Rows are ``seq_len`` tokens. ``packing: true`` puts documents back to back (EOS between
    them, a document may continue into the next row); ``packing: false`` puts one document in
    each row, cut to ``seq_len`` (counted) and padded (the row's real length is stored, and
    padding is never scored), as the BioMamba authors' code trained. Mixing is by rows: each
    source is made into rows on its own, then training rows are drawn from each source in
    proportion to ``ratio`` (``mix: downsample`` uses all of the limiting source and part of
    the others; ``mix: repeat`` repeats the small sources instead) and shuffled together with
    ``seed``. With packing, rows are tokens; without, rows are documents.
    """

    sources: list[SourceConfig] = field(default_factory=list)
    tokenizer: str = DEFAULT_TOKENIZER
    seq_len: int = 1024
    # true: documents back to back in full rows; false: one document per row, cut to seq_len and padded
    packing: bool = True
    # held-out validation rows per source, carved (whole documents) before training
    val_sequences: int = 1000
    # never hold out more than this share of a source's rows (small sources get fewer)
    max_val_fraction: float = 0.1
    seed: int = 42
    # tokenising processes; 0 = one per CPU core. The output does not depend on it.
    workers: int = 0
    # documents per tokenizer batch inside a worker
    batch_size: int = 256
    # documents shorter than this (characters, after whitespace normalisation) are skipped
    min_chars: int = 100
    # drop exact duplicates (same normalised text; first occurrence wins, across all sources)
    dedup: bool = True
    # on a broken file or record: raise (stop, naming file and record) or skip (count and list)
    on_error: Literal["raise", "skip"] = "raise"
    mix: Literal["downsample", "repeat"] = "downsample"
    # cap on the number of mixed training sequences (ratios kept)
    max_train_sequences: int | None = None
    # packed sequences per shard file
    shard_sequences: int = 65536
    # where download specs put their files
    download_dir: str = "~/.cache/biomamba/data"
    # keep the per-file intermediate results after a successful build (they resume a failed one)
    keep_work: bool = False

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len must be >= 2, got {self.seq_len}")
        if self.val_sequences < 0:
            raise ValueError(f"val_sequences must be >= 0, got {self.val_sequences}")
        if not 0.0 <= self.max_val_fraction < 1.0:
            raise ValueError(f"max_val_fraction must be in [0, 1), got {self.max_val_fraction}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0 (0 = one per core), got {self.workers}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.min_chars < 0:
            raise ValueError(f"min_chars must be >= 0, got {self.min_chars}")
        if self.shard_sequences < 1:
            raise ValueError(f"shard_sequences must be >= 1, got {self.shard_sequences}")
        if self.max_train_sequences is not None and self.max_train_sequences < 1:
            raise ValueError(f"max_train_sequences must be >= 1, got {self.max_train_sequences}")
        names = [s.name for s in self.sources]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"source names must be unique; repeated: {', '.join(dupes)}")
        if len(self.sources) > 255:
            raise ValueError("at most 255 sources")
        given = [s.ratio is not None for s in self.sources]
        if any(given) and not all(given):
            missing = [s.name for s in self.sources if s.ratio is None]
            raise ValueError(f"give every source a ratio or none; missing for: {', '.join(missing)}")
        if self.sources and all(given):
            total = sum(s.ratio for s in self.sources)  # type: ignore[misc]
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"source ratios sum to {total:g}; they must sum to 1")

    def ratios(self) -> dict[str, float] | None:
        if not self.sources or self.sources[0].ratio is None:
            return None
        return {s.name: float(s.ratio) for s in self.sources}  # type: ignore[arg-type]
