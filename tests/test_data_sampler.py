"""DistributedSequenceSampler: deterministic, disjoint across ranks, complete, resumable, world-size independent."""

from __future__ import annotations

import numpy as np
import pytest

from biomamba.data.shards import DistributedSequenceSampler as Sampler


def ranks(n, w, **kw):
    return [Sampler(n, rank=r, world_size=w, **kw) for r in range(w)]


def global_order(samplers):
    """Interleave the ranks' streams back into the global order (rank r holds positions r, r+W, ...)."""
    streams = [list(s) for s in samplers]
    out = []
    for k in range(max(map(len, streams))):
        out += [st[k] for st in streams if k < len(st)]
    return out


def test_deterministic_and_shuffled_per_epoch():
    a, b = Sampler(100, seed=7), Sampler(100, seed=7)
    assert list(a) == list(b) and sorted(a) == list(range(100)) and list(a) != list(range(100))
    first = list(a)
    a.set_epoch(1)
    assert list(a) != first and sorted(a) == list(range(100))
    assert list(Sampler(100, seed=8)) != first
    assert list(Sampler(10, shuffle=False)) == list(range(10))


@pytest.mark.parametrize("n,w", [(96, 4), (100, 8), (7, 3), (5, 8)])
def test_ranks_are_disjoint_cover_everything_and_are_equally_long(n, w):
    samplers = ranks(n, w, seed=3)
    streams = [list(s) for s in samplers]
    assert len({len(s) for s in streams}) == 1 and all(len(s) == len(x) for s, x in zip(samplers, streams))
    flat = [i for s in streams for i in s]
    assert set(flat) == set(range(n))  # covers everything
    if n % w == 0:
        assert len(flat) == n  # disjoint: each sequence exactly once
    else:
        assert len(flat) == -(-n // w) * w and len(flat) - len(set(flat)) == (-n) % w  # padded by wrapping
    dropped = [list(s) for s in ranks(n, w, seed=3, drop_last=True)]
    kept = [i for s in dropped for i in s]
    assert len(kept) == len(set(kept)) == (n // w) * w


def test_global_order_does_not_depend_on_world_size():
    single = list(Sampler(64, seed=11))
    for w in (2, 4, 8):
        assert global_order(ranks(64, w, seed=11)) == single


def test_resume_equals_uninterrupted_continuation():
    n, w, per_step = 120, 4, 3  # 4 ranks x 3 sequences per rank per step
    ref = ranks(n, w, seed=5)
    full = [list(s) for s in ref]
    run = ranks(n, w, seed=5)
    steps_done = 4
    for s in run:
        s.advance(steps_done * w * per_step)
    state = run[0].state_dict()
    assert state["consumed"] == 48 and state["epoch"] == 0 and state["seed"] == 5
    resumed = ranks(n, w, seed=5)
    for s in resumed:
        s.load_state_dict(state)
    for r in range(w):
        assert list(resumed[r]) == full[r][steps_done * per_step:]
        assert len(resumed[r]) == len(full[r]) - steps_done * per_step
    # the epoch ends; the next one starts from its beginning
    for s in resumed:
        s.advance(n - 48)
        assert list(s) == [] and len(s) == 0
        s.set_epoch(1)
    fresh = Sampler(n, seed=5)
    fresh.set_epoch(1)
    assert global_order(resumed) == list(fresh) and sorted(fresh) == list(range(n))


def test_resume_on_a_different_world_size_keeps_the_global_order():
    n = 96
    single = list(Sampler(n, seed=9))
    before = ranks(n, 4, seed=9)
    for s in before:
        s.advance(24)  # 2 steps of 4 ranks x 3
    state = before[0].state_dict()
    after = ranks(n, 6, seed=9)
    for s in after:
        s.load_state_dict(state)
    assert global_order(after) == single[24:]
    odd = ranks(n, 5, seed=9)  # consumed (24) is not a multiple of 5: still the same global sequence
    for s in odd:
        s.load_state_dict(state)
    assert global_order(odd)[: n - 24] == single[24:]


def test_state_from_other_data_is_refused():
    s = Sampler(100, seed=1)
    with pytest.raises(ValueError, match="num_sequences=50"):
        s.load_state_dict({"epoch": 0, "consumed": 0, "seed": 1, "num_sequences": 50})
    with pytest.raises(ValueError, match="rank 4 is not in"):
        Sampler(10, rank=4, world_size=4)
    assert isinstance(next(iter(s)), int) and np.issubdtype(type(next(iter(s))), np.integer)
