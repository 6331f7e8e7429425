"""lm-evaluation-harness can evaluate our checkpoints: a registered ``biomamba`` model type.

    python -m biomamba.eval.harness run --model biomamba --model_args pretrained=runs/x/best,batch_size=8 \
        --tasks pubmedqa

runs lm-eval's own command line with the model registered (lm-eval discovers no third-party
model from its plain ``lm_eval`` command: it registers only what it imports); from Python,
``import biomamba.eval.harness`` and use ``--model biomamba`` / ``BiomambaLM``.
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
    def __init__(self, pretrained: str, batch_size: int | str = 8, device: str | None = "auto", dtype: str = "auto",
                 backend: str = "auto", tokenizer: str | None = None, max_length: int = 4096, **_: Any):
        super().__init__()
        from biomamba.model.checkpoint import load_model_and_tokenizer
        from biomamba.eval.lm import from_mamba

        # lm-eval passes its --batch_size ("auto", "auto:4", or a number) and --device here
        size = int(batch_size) if str(batch_size).isdigit() else 8
        model, tok = load_model_and_tokenizer(pretrained, tokenizer, device or "auto", dtype, backend)
        self.adapter = from_mamba(model, tok, batch_size=size)
        self.adapter.max_length = int(max_length)

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None) -> "BiomambaLM":
        from lm_eval import utils

        return cls.create_from_arg_obj(utils.simple_parse_args_string(arg_string), additional_config)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict | None = None) -> "BiomambaLM":
        # lm-eval passes its --batch_size / --device beside --model_args; a key given in both
        # raised "multiple values": the model argument wins
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None and k not in arg_dict}
        return cls(**arg_dict, **extra)

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


def main(argv: list[str] | None = None) -> int:
    """lm-eval's command line, with ``--model biomamba`` registered."""
    import sys

    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = ["lm-eval", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    main()
