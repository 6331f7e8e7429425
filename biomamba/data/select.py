"""Build stage 3, selection: which tokenised documents survive, across files and sources.

MEDLINE update semantics per source (a later version of a PMID replaces the earlier one;
``DeleteCitation`` removes it), then exact deduplication by text hash across all sources
(first occurrence in config order wins). Only per-document metadata is read, never tokens.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from biomamba.data.plan import Unit


def resolve_medline(unit_ids: list[int], units: list[Unit],
                    docs: dict[int, np.ndarray]) -> tuple[dict[int, np.ndarray], Counter, dict[str, int]]:
    """Update semantics: per PMID the last event (citation or deletion, in file order) wins."""
    ps, ks, del_all, seen_all = [], [], [], []
    for u in unit_ids:
        seen = np.load(units[u].dir / "seen.npy")
        deleted = np.load(units[u].dir / "deleted.npy")
        ps += [seen, deleted]
        ks += [(np.int64(u) << 32) + np.arange(len(seen), dtype=np.int64),
               (np.int64(u) << 32) + (1 << 31) + np.arange(len(deleted), dtype=np.int64)]
        del_all.append(deleted)
        seen_all.append(seen)
    keep: dict[int, np.ndarray] = {}
    counts: Counter[str] = Counter()
    if not ps:
        return keep, counts, {}
    p, k = np.concatenate(ps), np.concatenate(ks)
    order = np.lexsort((k, p))
    p, k = p[order], k[order]
    last = np.ones(len(p), dtype=bool)
    last[:-1] = p[1:] != p[:-1]
    win_p, win_k = p[last], k[last]
    for u in unit_ids:
        d = docs[u]
        if not len(d):
            keep[u] = np.zeros(0, dtype=bool)
            continue
        key = (np.int64(u) << 32) + d["pos"].astype(np.int64)
        wk = win_k[np.searchsorted(win_p, d["record"])]
        mine = wk == key
        by_delete = ~mine & ((wk & (1 << 31)) != 0)
        counts["deleted"] += int(by_delete.sum())
        counts["superseded"] += int((~mine & ~by_delete).sum())
        keep[u] = mine
    deletions = np.concatenate(del_all)
    unmatched = np.setdiff1d(deletions, np.concatenate(seen_all)).size
    return keep, counts, {"read": int(deletions.size), "pmids_without_citation": int(unmatched)}


def dedup(cands: list[tuple[int, int, np.ndarray, np.ndarray]]) -> dict[tuple[int, int], np.ndarray]:
    """Exact duplicates by 128-bit text hash; the first in (source, file, record) order wins."""
    if not cands:
        return {}
    h0 = np.concatenate([c[2] for c in cands])
    h1 = np.concatenate([c[3] for c in cands])
    ordinal = np.arange(len(h0), dtype=np.int64)
    order = np.lexsort((ordinal, h1, h0))
    first = np.ones(len(order), dtype=bool)
    first[1:] = (h0[order][1:] != h0[order][:-1]) | (h1[order][1:] != h1[order][:-1])
    keep = np.zeros(len(h0), dtype=bool)
    keep[order[first]] = True
    out, at = {}, 0
    for s, u, a, _ in cands:
        out[(s, u)] = keep[at:at + len(a)]
        at += len(a)
    return out


def select_documents(units: list[Unit], by_source: list[list[int]], drop_duplicates: bool) -> tuple[
        dict[int, np.ndarray], dict[int, np.ndarray], list[Counter], list[dict[str, int]]]:
    """Which documents survive: MEDLINE update semantics per source, then exact dedup across sources.

    Returns each unit's document table (``docs.npy``), its keep mask, the extra skip counts
    per source (``superseded``, ``deleted``, ``duplicate``) and MEDLINE's deletion counts.
    """
    unit_docs = {u: np.load(unit.dir / "docs.npy") for u, unit in enumerate(units)}
    keep = {u: np.ones(len(d), dtype=bool) for u, d in unit_docs.items()}
    extra_skips: list[Counter] = [Counter() for _ in by_source]
    deletions: list[dict[str, int]] = [{} for _ in by_source]
    for s, uids in enumerate(by_source):
        med = [u for u in uids if units[u].fmt == "medline"]
        if med:
            kept, counts, dels = resolve_medline(med, units, unit_docs)
            keep.update(kept)
            extra_skips[s].update(counts)
            deletions[s] = dels
    if drop_duplicates:
        cands = [(s, u, unit_docs[u]["h0"][keep[u]], unit_docs[u]["h1"][keep[u]])
                 for s, uids in enumerate(by_source) for u in uids]
        first = dedup(cands)
        for s, uids in enumerate(by_source):
            for u in uids:
                dup = np.flatnonzero(keep[u])[~first[(s, u)]]
                extra_skips[s]["duplicate"] += len(dup)
                keep[u][dup] = False
    return unit_docs, keep, extra_skips, deletions
