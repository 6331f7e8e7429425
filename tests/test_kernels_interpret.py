"""Runs the Triton kernel tests on the CPU through Triton's interpreter, in a subprocess.

``TRITON_INTERPRET=1`` must be set before triton is first imported, which other test files
may already have done in this process; a fresh interpreter process is the robust way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine test_kernels_triton.py runs natively")
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-x", str(HERE / "test_kernels_triton.py")],
        cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-6000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "failed" not in proc.stdout, tail
