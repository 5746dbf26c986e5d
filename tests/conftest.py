"""Test setup: no network, few threads, and helpers for the reference fixtures in ../shared (skipped without it)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("T2VTURBO_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path inside ../shared; the calling test is skipped when it is absent (a user's clone)."""
    p = SHARED.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"reference data not available: {p}")
    return p


@pytest.fixture(scope="session", autouse=True)
def _threads():
    # One thread: the test models are small, results are then independent of the machine's core count, and two
    # OpenMP threads on a busy 2-core machine were measured ~10x slower (oversubscription).
    import torch

    torch.set_num_threads(1)
    yield
