"""Runs the Triton kernel tests on the CPU through Triton's interpreter, in subprocesses.

``TRITON_INTERPRET=1`` must be set before triton is first imported, which other test files
may already have done in this process; a fresh interpreter process is the robust way. The
interpreter is slow and single-threaded (~3 min for the file here), so the file's tests are
dealt out to one process per core (CI has two), each with one torch thread.
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
FILE = HERE / "test_kernels_triton.py"
PYTEST = [sys.executable, "-m", "pytest", "-o", "addopts=", "-q", "-p", "no:cacheprovider"]


def _env() -> dict[str, str]:
    return dict(os.environ, TRITON_INTERPRET="1", PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")


def _test_ids() -> list[str]:
    proc = subprocess.run(PYTEST + ["--collect-only", str(FILE)], cwd=HERE.parent, env=_env(),
                          capture_output=True, text=True, timeout=300)
    ids = [ln.strip() for ln in proc.stdout.splitlines() if "::" in ln]
    assert proc.returncode == 0 and ids, (proc.stdout + proc.stderr)[-4000:]
    return ids


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine test_kernels_triton.py runs natively")
def test_triton_kernels_under_interpreter():
    ids = _test_ids()
    shards = max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4))
    procs = [subprocess.Popen(PYTEST + ["-x"] + ids[i::shards], cwd=HERE.parent, env=_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(shards)]
    outs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
        outs.append((proc.returncode, out))
    for rc, out in outs:
        tail = out[-6000:]
        assert rc == 0, tail
        assert " passed" in out and "failed" not in out, tail
    # every collected test ran in some shard (passed or skipped, counted in the summaries)
    ran = sum(int(w) for _, out in outs for line in out.splitlines()[-3:]
              for w, nxt in zip(line.split(), line.split()[1:]) if nxt.rstrip(",") in ("passed", "skipped"))
    assert ran == len(ids), (ran, len(ids))
