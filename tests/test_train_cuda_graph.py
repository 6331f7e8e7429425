"""Micro-steps replayed from CUDA graphs give the eager step's gradients and training run
(GPU only: CUDA graphs do not exist on the CPU; bench/gpu_run.sh runs this file)."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("CUDA graphs need a CUDA device", allow_module_level=True)

from test_train_support import demo_data, recipe  # noqa: E402


def _model(seed: int = 0):
    from biomamba.model import MambaLM, model_preset

    torch.manual_seed(seed)
    cfg = model_preset("tiny", vocab_size=384)
    return MambaLM(cfg).cuda().set_backend("triton")


def _batch(b: int, l: int, seed: int) -> dict[str, torch.Tensor]:
    from biomamba.train.objective import next_token_targets

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 384, (b, l), generator=g)
    seq = torch.cumsum(torch.rand(b, l, generator=g) < 0.05, 1).to(torch.int32)
    return {"input_ids": ids, "seq_idx": seq, "targets": next_token_targets(ids, seq)}


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_replays_accumulate_like_eager(dtype):
    """Three micro-batches, two shapes (one beyond max_graphs, so it runs eagerly into the same
    buffers): the accumulated gradients and loss sums equal the eager ones. A graph whose
    replay overwrote .grad instead of adding to it (pytorch#181723) fails this."""
    from biomamba.train.cuda_graph import MicroStepGraphs
    from biomamba.train.objective import CausalLMObjective, LossModule

    batches = [_batch(2, 48, 1), _batch(2, 48, 2), _batch(3, 40, 3)]
    scales = [0.5, 0.25, 0.125]
    results = []
    for graphed in (False, True):
        model = _model()
        module = LossModule(model, CausalLMObjective())
        params = list(model.parameters())
        graphs = MicroStepGraphs(module, params, torch.device("cuda"), dtype, max_graphs=1, log=lambda s: None)
        if graphed:
            graphs.prepare(batches)
            assert len(graphs.graphs) == 1
        losses = []
        for batch, scale in zip(batches, scales):
            ls = graphs.run(batch, scale) if graphed else None
            if ls is None:
                dev = {k: v.cuda() for k, v in batch.items()}
                ctx = torch.autocast("cuda", dtype=dtype) if dtype else torch.autocast("cuda", enabled=False)
                with ctx:
                    ls, _ = module(dev["input_ids"], dev["seq_idx"], dev["targets"])
                (ls * scale).backward()
            losses.append(float(ls.detach()))
        results.append((losses, _grads(model), graphs.eager_micro_steps))
    (eager_losses, eager_grads, _), (graph_losses, graph_grads, eager_count) = results
    assert eager_count == 1  # the (3, 40) batch found no graph
    assert graph_losses == pytest.approx(eager_losses, rel=1e-6)
    assert eager_grads.keys() == graph_grads.keys()
    for n in eager_grads:
        err = ((graph_grads[n] - eager_grads[n]).norm() / eager_grads[n].norm().clamp_min(1e-30)).item()
        assert err < 1e-5, (n, err)


def test_first_micro_step_writes_the_projection_grads():
    """With the projections' GEMMs writing into .grad (the single-device trainer's setting),
    zero_grads leaves their gradients stale and the next step's first replay writes them: over
    three optimizer-step cycles (one and two micro-batches, then a first micro-batch of a shape
    without a graph, which must find them zeroed) each step's gradients equal the eager ones
    of that step's batches alone."""
    from biomamba.train.cuda_graph import MicroStepGraphs
    from biomamba.train.objective import CausalLMObjective, LossModule

    steps = [[_batch(2, 48, 1)], [_batch(2, 48, 2), _batch(2, 48, 3)], [_batch(3, 40, 4), _batch(2, 48, 5)]]
    results = []
    for graphed in (False, True):
        model = _model().set_grad_into_params(True)
        module = LossModule(model, CausalLMObjective())
        graphs = MicroStepGraphs(module, list(model.parameters()), torch.device("cuda"), torch.bfloat16,
                                 max_graphs=1, log=lambda s: None)
        per_step = []
        for batches in steps:
            if graphed:
                graphs.prepare(batches)
            for batch in batches:
                ls = graphs.run(batch, 0.5) if graphed else None
                if ls is None:
                    dev = {k: v.cuda() for k, v in batch.items()}
                    with torch.autocast("cuda", dtype=torch.bfloat16):
                        ls, _ = module(dev["input_ids"], dev["seq_idx"], dev["targets"])
                    (ls * 0.5).backward()
            per_step.append(_grads(model))
            if graphed:
                graphs.zero_grads()
                if batches is steps[0]:
                    stale = [p for p in graphs.stale if p.grad.abs().sum() > 0]
                    assert stale and all(n.endswith("proj.weight") for n, p in model.named_parameters()
                                         if any(p is q for q in stale))
            else:
                model.zero_grad(set_to_none=False)
        results.append(per_step)
    assert graphs.eager_micro_steps == 1
    for k, (eager, graph) in enumerate(zip(*results)):
        assert eager.keys() == graph.keys()
        for n in eager:
            err = ((graph[n] - eager[n]).norm() / eager[n].norm().clamp_min(1e-30)).item()
            assert err < 1e-5, (k, n, err)


def test_trainer_with_graphs_matches_eager(tmp_path_factory, tmp_path):
    """The whole trainer (accumulation 2, clipping, EMA, packed documents), graphs on and off:
    the same loss and gradient norm step by step (the norm is what a doubled or overwritten
    gradient would change; AdamW itself is blind to the gradient's scale), and weights that
    agree in norm. Elementwise the weights may differ by up to 2·lr where a gradient entry is
    near zero, as eager and captured matmuls may round differently and AdamW divides by |g|."""
    from biomamba.data.shards import PackedDataset, read_manifest
    from biomamba.config import from_dict
    from biomamba.train.config import PretrainConfig
    from biomamba.train.distributed import DistInfo
    from biomamba.train.objective import CausalLMObjective
    from biomamba.train.pretrain import build_model
    from biomamba.train.trainer import Trainer

    data = demo_data(tmp_path_factory)
    runs = []
    for graph in (False, True):
        # the tiny preset as is: tl.dot on a GPU needs dimensions of at least 16
        cfg = from_dict(PretrainConfig, recipe(data, model={"overrides": {}},
                                               train={"max_steps": 4, "cuda_graph": graph, "precision": "bf16"},
                                               eval={"every": 0, "at_start": False},
                                               checkpoint={"every": 0, "export": []}))
        model = build_model(cfg.model, read_manifest(cfg.data), seed=cfg.train.seed)
        trainer = Trainer(cfg, model, CausalLMObjective(), PackedDataset(cfg.data, "train"), {},
                          tmp_path / f"run-{graph}", DistInfo(device=torch.device("cuda")), backend="triton",
                          log=lambda s: None)
        assert (trainer.graphs is not None) == graph and trainer.accum == 2
        steps = [trainer.train_step()[:2] for _ in range(4)]
        runs.append((steps, {n: p.detach().clone() for n, p in trainer.model.named_parameters()}))
    (eager_steps, eager_w), (graph_steps, graph_w) = runs
    for (el, en), (gl, gn) in zip(eager_steps, graph_steps):
        assert gl == pytest.approx(el, rel=1e-4) and gn == pytest.approx(en, rel=1e-3)
    for n in eager_w:
        err = ((graph_w[n] - eager_w[n]).norm() / eager_w[n].norm().clamp_min(1e-30)).item()
        assert err < 1e-3, (n, err)


def test_exported_ema_equals_ema_on_cuda(tmp_path_factory, tmp_path):
    """On the GPU the state's tensors are copies; the EMA export must hold the EMA there too."""
    from test_no_pickle import check_exported_ema_equals_ema

    check_exported_ema_equals_ema(demo_data(tmp_path_factory), tmp_path / "run", "cuda")
