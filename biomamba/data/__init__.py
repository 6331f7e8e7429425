"""Data: raw corpora (MEDLINE XML, C4, Wikipedia, JSONL, Parquet, text) → packed token shards.

``biomamba.data.build.build`` makes a data directory, stage by stage (``plan``, ``tokenise``,
``select``, ``pack``, ``mix``, ``write``); ``biomamba.data.shards`` reads it (``PackedDataset``,
``DistributedSequenceSampler``). Readers: ``records`` (events, errors, cleaning) ← ``medline``,
``textformats`` ← ``readers`` (the registry). Heavy modules are imported on use.
"""

from biomamba.data.shards import DistributedSequenceSampler, PackedDataset

__all__ = ["PackedDataset", "DistributedSequenceSampler"]
