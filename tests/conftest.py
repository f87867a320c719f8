"""Shared fixtures: the real bundled default model, loaded once per test session."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="session")
def lm():
    from probes.models import load_model

    torch.manual_seed(0)
    return load_model("default", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def rand_axis(lm):
    """A fixed random unit direction [hidden]: the identities under test hold for any direction."""
    g = torch.Generator().manual_seed(1234)
    v = torch.randn(lm.hidden_size, generator=g)
    return v / v.norm()


@pytest.fixture(scope="session")
def shipped():
    from monitor.settings import shipped_dir
    from probes.artifacts import load_axis

    return load_axis(shipped_dir())
