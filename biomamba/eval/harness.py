"""lm-evaluation-harness can evaluate our checkpoints: a registered ``biomamba`` model type.

    lm_eval --model biomamba --model_args pretrained=runs/x/best,batch_size=8 --tasks pubmedqa

(after ``import biomamba.eval.harness``, or through its Python API with ``BiomambaLM``).
The exported Hugging Face layout also works with lm-eval's own ``hf`` model type; this
adapter adds our kernels and recurrent-state generation with stop strings. Requires the
optional ``lm_eval`` package.
"""

from __future__ import annotations

from typing import Any

from lm_eval.api.model import LM
from lm_eval.api.registry import register_model


@register_model("biomamba")
class BiomambaLM(LM):
    def __init__(self, pretrained: str, batch_size: int | str = 8, device: str = "auto", dtype: str = "auto",
                 backend: str = "auto", tokenizer: str | None = None, max_length: int = 4096, **_: Any):
        super().__init__()
        from biomamba.model.checkpoint import load_model_and_tokenizer
        from biomamba.eval.lm import from_mamba

        model, tok = load_model_and_tokenizer(pretrained, tokenizer, device, dtype, backend)
        self.adapter = from_mamba(model, tok, batch_size=int(batch_size))
        self.adapter.max_length = int(max_length)

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self.adapter.loglikelihood_greedy([req.args for req in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        from biomamba.eval.perplexity import text_nll

        tok = self.adapter.tokenizer
        out = []
        for req in requests:
            totals = text_nll([req.args[0]], tok, self.adapter.nll_windows, window=self.adapter.max_length,
                              prefix_id=tok.eos_id)
            out.append(-totals.nll)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for req in requests:
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.get("max_gen_toks", 256))
            out.append(self.adapter.generate([context], max_new, until)[0])
        return out
