"""Schedules and layer-wise learning rates equal hand-computed tables."""

from __future__ import annotations

import math

import pytest
import torch

from biomamba.train.optim import build_optimizer, no_weight_decay, param_table, set_lr
from biomamba.train.schedule import Schedule

PEAK, FLOOR = 1.5e-6, 1.5e-7  # the 130M recipe: floor = 0.1 × peak


def test_wsd_table_100_steps():
    s = Schedule("wsd", 100, PEAK, FLOOR, warmup=0.10, stable=0.65, decay=0.20)
    assert s.phases == (10, 65, 20)
    table = {  # hand-computed: warmup peak·(s+1)/10; decay k: floor + (peak−floor)·½(1+cos(π(k+1)/20))
        0: 1.5e-7, 4: 7.5e-7, 9: 1.5e-6,  # warmup
        10: 1.5e-6, 40: 1.5e-6, 74: 1.5e-6,  # stable
        75: 1.491689629901718e-06,  # k=0: cos(π/20) = 0.98768834…
        84: 8.25e-07,  # k=9: the midpoint
        94: 1.5e-7,  # k=19: the floor exactly
        95: 1.5e-7, 99: 1.5e-7,  # the remaining 5 % at the floor
    }
    for step, lr in table.items():
        assert s(step) == pytest.approx(lr, rel=1e-12, abs=0), step


def test_wsd_phase_rounding():
    assert Schedule("wsd", 7, 1.0, 0.1).phases == (1, 5, 1)  # 0.7, 4.55, 1.4 rounded half up
    assert Schedule("wsd", 1000, 1.0, 0.1).phases == (100, 650, 200)
    s = Schedule("wsd", 10, 2.0, 0.2)  # phases (1, 7, 2): 1 warmup step reaches the peak at once
    assert [round(s(i), 12) for i in range(10)] == [2.0] * 8 + [1.1, 0.2]


def test_cosine_first_paper():
    s = Schedule("cosine", 100, 5e-5, 1e-5, warmup=0.10)
    assert s.phases == (10, 0, 90)
    assert s(0) == pytest.approx(5e-6)
    assert s(9) == pytest.approx(5e-5)
    assert s(54) == pytest.approx(3e-5)  # (54−10+1)/90 = ½ → midpoint of 5e-5 … 1e-5
    assert s(10) == pytest.approx(1e-5 + 4e-5 * 0.5 * (1 + math.cos(math.pi / 90)))
    assert s(99) == pytest.approx(1e-5)


def test_constant():
    s = Schedule("constant", 20, 1e-4, 0.0, warmup=0.1)
    assert [s(i) for i in (0, 1, 2, 19)] == [pytest.approx(5e-5), pytest.approx(1e-4), 1e-4, 1e-4]


def test_schedule_rejects_bad_fractions():
    with pytest.raises(ValueError, match="> 1"):
        Schedule("wsd", 10, 1.0, 0.1, warmup=0.5, stable=0.5, decay=0.2)
    with pytest.raises(ValueError, match="above the peak"):
        Schedule("cosine", 10, 1e-5, 1e-4)


def _meta_model(preset: str):
    from biomamba.model import MambaLM, model_preset

    with torch.device("meta"):
        return MambaLM(model_preset(preset))


@pytest.mark.parametrize("preset,factor", [("130m", 0.90), ("370m", 0.95)])
def test_llrd_table(preset, factor):
    model = _meta_model(preset)
    n = model.config.n_layer
    rows = {r.name: r for r in param_table(model.named_parameters(), n, weight_decay=0.1, llrd=factor)}
    expect = {  # hand-computed multipliers of the peak rate
        ("130m", "backbone.embedding.weight"): 0.07976644307687256,  # 0.90^24 (tied head: the embedding's rate)
        ("130m", "backbone.layers.0.mixer.in_proj.weight"): 0.08862938119652507,  # 0.90^23
        ("130m", "backbone.layers.22.mixer.A_log"): 0.9,
        ("130m", "backbone.layers.23.mixer.out_proj.weight"): 1.0,
        ("130m", "backbone.norm_f.weight"): 1.0,
        ("370m", "backbone.embedding.weight"): 0.0852575903343082,  # 0.95^48
        ("370m", "backbone.layers.0.norm.weight"): 0.08974483193085075,  # 0.95^47
        ("370m", "backbone.layers.47.mixer.conv1d.weight"): 1.0,
        ("370m", "backbone.norm_f.weight"): 1.0,
    }
    for (p, name), scale in expect.items():
        if p == preset:
            assert rows[name].lr_scale == pytest.approx(scale, rel=1e-12), name
    assert "lm_head.weight" not in rows  # tied: one parameter
    for i in range(n):
        assert rows[f"backbone.layers.{i}.mixer.dt_bias"].lr_scale == pytest.approx(factor ** (n - 1 - i))


@pytest.mark.parametrize("preset,factor,paper_lr", [("370m", 0.95, 4.5e-7), ("2.7b", 0.95, 2.0e-7)])
def test_lr_anchor_bottom_reproduces_the_authors_scripts(preset, factor, paper_lr):
    """The authors' scripts pass one top rate, 5e-6; at 370M and 2.7B its block-0 rate is the
    paper's per-size number, so ``lr_anchor: bottom`` with the paper's number gives the scripts'
    rates (to the paper's two digits) and ``top`` gives block 0 that number times f^(N-1)."""
    model = _meta_model(preset)
    n = model.config.n_layer
    top = {r.name: r.lr_scale for r in param_table(model.named_parameters(), n, weight_decay=0.1, llrd=factor)}
    bottom = {r.name: r.lr_scale for r in param_table(model.named_parameters(), n, weight_decay=0.1, llrd=factor,
                                                      anchor="bottom")}
    first, last = "backbone.layers.0.mixer.in_proj.weight", f"backbone.layers.{n - 1}.mixer.in_proj.weight"
    assert bottom[first] == pytest.approx(1.0) and top[last] == 1.0
    assert paper_lr * bottom[last] == pytest.approx(5e-6, rel=0.02)  # the scripts' top rate, 2 digits
    assert 5e-6 * top[first] == pytest.approx(paper_lr, rel=0.02)
    for name in top:
        assert bottom[name] == pytest.approx(top[name] / factor ** (n - 1), rel=1e-12), name
    with pytest.raises(ValueError, match="top or bottom"):
        param_table(model.named_parameters(), n, weight_decay=0.1, llrd=factor, anchor="middle")


def test_weight_decay_exclusions():
    model = _meta_model("130m")
    rows = {r.name: r.weight_decay for r in param_table(model.named_parameters(), 24, weight_decay=0.1)}
    no_decay = {k for k, v in rows.items() if v == 0.0}
    per_layer = {"norm.weight", "mixer.A_log", "mixer.D", "mixer.dt_bias", "mixer.conv1d.bias", "mixer.norm.weight"}
    assert no_decay == {"backbone.norm_f.weight"} | {f"backbone.layers.{i}.{s}" for i in range(24) for s in per_layer}
    for name in ("backbone.embedding.weight", "backbone.layers.3.mixer.in_proj.weight",
                 "backbone.layers.3.mixer.out_proj.weight", "backbone.layers.3.mixer.conv1d.weight"):
        assert rows[name] == 0.1
    assert no_weight_decay("backbone.layers.0.mixer.dt_proj.bias")  # Mamba-1


def test_optimizer_groups_and_untied_head():
    from biomamba.model import MambaLM, model_preset

    torch.manual_seed(0)
    model = MambaLM(model_preset("tiny", vocab_size=64, d_model=16, n_layer=3, d_state=4, headdim=4,
                                 tie_embeddings=False))
    opt = build_optimizer(model, 3, lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, llrd=0.5)
    set_lr(opt, 2e-3)
    by_param = {id(p): g for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    lr = {n: by_param[id(p)]["lr"] for n, p in named.items()}
    wd = {n: by_param[id(p)]["weight_decay"] for n, p in named.items()}
    assert lr["backbone.embedding.weight"] == pytest.approx(2e-3 * 0.125)  # 0.5^3
    assert lr["backbone.layers.0.mixer.in_proj.weight"] == pytest.approx(2e-3 * 0.25)
    assert lr["backbone.layers.2.mixer.in_proj.weight"] == pytest.approx(2e-3)
    assert lr["lm_head.weight"] == pytest.approx(2e-3)  # untied head: the highest rate
    assert wd["lm_head.weight"] == 0.1 and wd["backbone.layers.1.mixer.D"] == 0.0
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)
