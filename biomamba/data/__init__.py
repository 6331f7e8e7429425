"""Data: raw corpora (MEDLINE XML, C4, Wikipedia, JSONL, Parquet, text) → packed token shards.

``biomamba.data.build.build`` makes a data directory; ``biomamba.data.shards`` reads it
(``PackedDataset``, ``DistributedSequenceSampler``). Heavy modules are imported on use.
"""

from biomamba.data.shards import DistributedSequenceSampler, PackedDataset

__all__ = ["PackedDataset", "DistributedSequenceSampler"]
