"""The Mamba language model: embedding → N × (RMSNorm → mixer, residual) → RMSNorm → tied head.

Module names mirror the state-spaces checkpoints (``backbone.embedding``,
``backbone.layers.{i}.{norm,mixer}``, ``backbone.norm_f``, ``lm_head``) so loading one is a
plain ``load_state_dict``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from biomamba.kernels import get_kernels, resolve_backend_name
from biomamba.model.config import ModelConfig
from biomamba.model.linear import Linear
from biomamba.model.mamba1 import Mamba1Mixer
from biomamba.model.mamba2 import Mamba2Mixer


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.kernels = get_kernels("torch")

    def forward(self, x: Tensor) -> Tensor:
        return self.kernels.rmsnorm(x, self.weight, self.eps)

    def join(self, x: Tensor, residual: Tensor) -> tuple[Tensor, Tensor]:
        """(this norm of residual + x, residual + x): one kernel on the Triton backend."""
        return self.kernels.add_rmsnorm(x, residual, self.weight, self.eps)


class Block(nn.Module):
    """A pre-norm block, in the form whose residual join is one op with the next norm:
    (h, r) ↦ (mixer(norm(r + h)), r + h), and (x, None) ↦ (mixer(norm(x)), x) for the first. The
    model's x ← x + mixer(norm(x)) unrolls to the same sums; the residual stream r is kept in
    fp32 when configured."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.residual_in_fp32 = cfg.residual_in_fp32
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = Mamba2Mixer(cfg) if cfg.arch == "mamba2" else Mamba1Mixer(cfg)

    def forward(self, hidden: Tensor, residual: Tensor | None = None, seq_idx: Tensor | None = None,
                state=None) -> tuple[Tensor, Tensor]:
        if residual is None:
            residual = hidden.float() if self.residual_in_fp32 else hidden
            normed = self.norm(hidden.to(self.norm.weight.dtype))
        else:
            normed, residual = self.norm.join(hidden, residual)
        return self.mixer(normed, seq_idx=seq_idx, state=state), residual
class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.padded_vocab, cfg.d_model)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)


@dataclass
class InferenceCache:
    """Per-layer recurrent states for decoding: memory is constant in sequence length."""

    layers: list = field(default_factory=list)
    seqlen_offset: int = 0


def seq_idx_from_cu_seqlens(cu_seqlens: Tensor, total_len: int | None = None) -> Tensor:
    """Cumulative lengths [0, l1, l1+l2, …] of documents packed in one row → seq_idx (1, total)."""
    lengths = cu_seqlens[1:] - cu_seqlens[:-1]
    seq_idx = torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device, dtype=torch.int32),
                                      lengths)
    if total_len is not None and seq_idx.numel() != total_len:
        raise ValueError(f"cu_seqlens cover {seq_idx.numel()} tokens, the row has {total_len}")
    return seq_idx[None]


class MambaLM(nn.Module):
    def __init__(self, cfg: ModelConfig, backend: str = "auto"):
        super().__init__()
        self.config = cfg
        self.backbone = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.d_model, cfg.padded_vocab, bias=False)
        self._init_weights()
        if cfg.tie_embeddings:
            self.lm_head.weight = self.backbone.embedding.weight
        self.backend_name = "torch"
        self.set_backend("torch" if backend == "auto" else backend)
        # "auto" waits for the first forward (_settle_backend), so that a model built on the CPU
        # and then moved to a GPU does not keep the slow torch reference there
        self._backend_auto = backend == "auto"
        # decoding's captured CUDA-graph steps, reused across calls (biomamba.generate.step_runner)
        self.step_runners: dict = {}
        # the dtype decoding keeps each layer's SSM state in: fp32 by default; bf16 halves the
        # cache (3.0 instead of 6.0 GiB at 1.3B and batch 64), as mamba_ssm's decoding keeps it.
        # The step computes in fp32 either way and rounds only the stored state.
        self.ssm_state_dtype = torch.float32

    def _init_weights(self) -> None:
        """state-spaces init: embedding N(0, 0.02), zero linear biases, out_proj scaled by 1/√n_layer."""
        nn.init.normal_(self.backbone.embedding.weight, std=0.02)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not name.endswith("dt_proj"):
                nn.init.zeros_(module.bias)
            if name.endswith("out_proj"):
                nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5))
                with torch.no_grad():
                    module.weight /= math.sqrt(self.config.n_layer)

    def set_backend(self, name: str = "auto") -> "MambaLM":
        """Route every op through kernel backend ``name`` ("auto": Triton on CUDA, else torch)."""
        device_type = next(self.parameters()).device.type
        resolved = resolve_backend_name(name, device_type)
        kernels = get_kernels(resolved)
        for module in self.modules():
            if isinstance(module, (RMSNorm, Mamba2Mixer, Mamba1Mixer)):
                module.kernels = kernels
        self.backend_name = resolved
        self._backend_auto = False
        return self

    def _settle_backend(self) -> None:
        """Resolve a backend left at "auto" for the device the weights are on now (once: a later
        ``set_backend`` call or this one settles it)."""
        if self._backend_auto:
            self.set_backend("auto")

    @classmethod
    def from_pretrained(cls, name_or_path: str, device: str = "auto", dtype: str = "auto", backend: str = "auto",
                        state_dtype: str = "float32") -> "MambaLM":
        """A checkpoint (any layout or hub id) ready for inference:
        ``biomamba.model.checkpoint.load_pretrained``, the loader the verbs use."""
        from biomamba.model.checkpoint import load_pretrained

        return load_pretrained(name_or_path, device=device, dtype=dtype, backend=backend, state_dtype=state_dtype)

    def set_grad_into_params(self, on: bool = True) -> "MambaLM":
        """Accumulate the mixers' projection weight gradients into ``.grad`` inside their GEMMs
        (``biomamba.model.linear``): single-device training only, as DDP / FSDP hook autograd's
        accumulation, which this bypasses."""
        for module in self.modules():
            if isinstance(module, Linear):
                module.grad_into_param = on
        return self

    @property
    def kernels(self):
        return get_kernels(self.backend_name)

    def hidden(self, input_ids: Tensor, seq_idx: Tensor | None = None, cu_seqlens: Tensor | None = None,
               cache: InferenceCache | None = None) -> Tensor:
        """Final-normed hidden states (b, l, d_model). Documents marked by ``seq_idx`` (b, l) or
        ``cu_seqlens`` (one packed row) do not see each other. With ``cache`` (empty), it is filled
        with the states after the last position, ready for ``step``."""
        self._settle_backend()
        if cu_seqlens is not None:
            if seq_idx is not None:
                raise ValueError("pass seq_idx or cu_seqlens, not both")
            if input_ids.shape[0] != 1:
                raise ValueError("cu_seqlens describes one packed row: input_ids must have batch size 1")
            seq_idx = seq_idx_from_cu_seqlens(cu_seqlens, input_ids.shape[1])
        if seq_idx is not None:
            seq_idx = seq_idx.to(device=input_ids.device, dtype=torch.int32)
        if cache is not None and cache.seqlen_offset > 0:
            return self._continue(input_ids, cache)
        hidden, residual = self.backbone.embedding(input_ids), None
        for i, layer in enumerate(self.backbone.layers):
            hidden, residual = layer(hidden, residual, seq_idx=seq_idx,
                                     state=cache.layers[i] if cache is not None else None)
        if cache is not None:
            cache.seqlen_offset += input_ids.shape[1]
        return self.backbone.norm_f.join(hidden, residual)[0]

    def forward(self, input_ids: Tensor, seq_idx: Tensor | None = None, cu_seqlens: Tensor | None = None,
                cache: InferenceCache | None = None) -> Tensor:
        """Logits (b, l, padded_vocab)."""
        return self.lm_head(self.hidden(input_ids, seq_idx=seq_idx, cu_seqlens=cu_seqlens, cache=cache))

    def loss(self, input_ids: Tensor, labels: Tensor, seq_idx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """(Σ cross-entropy over labels ≠ −100, number of such labels); labels are aligned with
        positions (already shifted). The full fp32 logits are never materialised."""
        h = self.hidden(input_ids, seq_idx=seq_idx)
        return self.kernels.linear_cross_entropy(h, self.lm_head.weight, labels, ignore_index=-100)

    # ---- decoding -----------------------------------------------------------------------
    def allocate_cache(self, batch_size: int, device: torch.device | None = None,
                       dtype: torch.dtype | None = None, ssm_dtype: torch.dtype | None = None) -> InferenceCache:
        """Zero states for ``batch_size`` rows: conv windows in ``dtype`` (the weights'), SSM states
        in ``ssm_dtype`` (default ``self.ssm_state_dtype``)."""
        adapted = [name for name, module in self.named_modules() if hasattr(module, "lora_A")]
        if adapted:  # the step reads projection weights directly: unmerged adapters would be skipped
            raise RuntimeError(f"decoding needs merged LoRA adapters ({adapted[0]} has one): call "
                               f"biomamba.train.lora.merge_lora(model) first, or load the exported checkpoint")
        param = self.backbone.embedding.weight
        device = device or param.device
        dtype = dtype or param.dtype
        ssm_dtype = ssm_dtype or self.ssm_state_dtype
        return InferenceCache([layer.mixer.new_state(batch_size, device, dtype, ssm_dtype)
                               for layer in self.backbone.layers])

    def step(self, token_ids: Tensor, cache: InferenceCache) -> Tensor:
        """One token per row: token_ids (b,) → logits (b, padded_vocab); the cache advances by one."""
        return self._step(token_ids, cache, logits=True)

    def _step(self, token_ids: Tensor, cache: InferenceCache, logits: bool) -> Tensor:
        """The same blocks as ``hidden``, one token: logits, or the final-normed hidden state.

        A decode step is launch-bound, so each residual add, the next norm and the projection
        after it are one op (``norm_linear``: the next block's in_proj, or the LM head)."""
        self._settle_backend()
        layers, K = self.backbone.layers, self.kernels
        norms = [layer.norm for layer in layers] + [self.backbone.norm_f]
        projections = [layer.mixer.in_proj for layer in layers] + [self.lm_head]
        x = self.backbone.embedding(token_ids)
        proj, residual = K.norm_linear(x, None, norms[0].weight, norms[0].eps, projections[0].weight,
                                       projections[0].bias)
        if self.config.residual_in_fp32:
            residual = residual.float()
        for i, (layer, state) in enumerate(zip(layers, cache.layers)):
            out, norm, head = layer.mixer.step(proj, state), norms[i + 1], projections[i + 1]
            if i + 1 < len(layers) or logits:
                proj, residual = K.norm_linear(out, residual, norm.weight, norm.eps, head.weight, head.bias)
            else:
                proj, residual = K.add_rmsnorm(out, residual, norm.weight, norm.eps)
        cache.seqlen_offset += 1
        return proj

    def _continue(self, input_ids: Tensor, cache: InferenceCache) -> Tensor:
        """Feed several tokens into a non-empty cache one step at a time (hidden states of each)."""
        return torch.stack([self._step(input_ids[:, t], cache, logits=False) for t in range(input_ids.shape[1])],
                           dim=1)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())
