"""`biomamba env`: versions, device, and the backend behind each kernel-seam op."""

from __future__ import annotations

import json
import os

import torch

from biomamba.cli import main
from biomamba.kernels import OPS


def test_env_reports_backend_per_op(capsys):
    assert main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert set(info["versions"]) >= {"torch", "triton", "mamba_ssm"}
    assert info["backends"]["torch"]["ok"] and set(info["backends"]["torch"]["ops"]) == set(OPS)
    assert set(info["auto"]["ops"]) == set(OPS)
    if not torch.cuda.is_available():
        assert info["auto"]["backend"] == "torch" and info["slow_path"] is False
        assert not info["backends"]["mamba_ssm"]["ok"] and info["backends"]["mamba_ssm"]["why"]  # needs CUDA
        triton = info["backends"]["triton"]  # available on the CPU only through the interpreter
        assert triton["ok"] == (os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")) or triton.get("why")


def test_env_plain_text(capsys):
    assert main(["env"]) == 0
    out = capsys.readouterr().out
    assert "ssd_scan" in out and "auto →" in out
