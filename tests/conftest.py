"""Shared fixtures: the real public samples in ../shared/data (skipped with a reason when absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    return Path(os.environ.get("BIOMAMBA_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = shared_data_dir()
    if not path.is_dir():
        pytest.skip(f"{path} not found: the real public samples live beside the clone (set BIOMAMBA_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def neox_tokenizer_path(shared_data: Path) -> Path:
    path = shared_data / "tokenizers" / "gpt-neox-20b" / "tokenizer.json"
    if not path.is_file():
        pytest.skip(f"{path} not found: the real GPT-NeoX tokenizer is needed for this test")
    return path


@pytest.fixture(autouse=True)
def _offline_hub(monkeypatch):
    # No test may wait on the network: the hub is unreachable here and in CI.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _restore_tf32_flags():
    # The trainer turns TF32 on for CUDA training (process-wide, as a user wants); without this, a
    # trainer test would leave it on and the fp32 kernel-vs-reference tests after it would compare
    # against TF32 matmuls (seen on the GPU: ten fp32 tests failed only when run after one).
    import torch

    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
