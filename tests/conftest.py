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


@pytest.fixture(scope="session")
def dashboard_db(tmp_path_factory):
    """A store and a real redis-server seeded by the real service (tests/dashboard_seed.py):
    (database URL, Redis URL, name -> session id). Shared by the dashboard's page and browser tests."""
    from dashboard_seed import real_sessions
    from monitor.redis_server import EmbeddedRedis

    db = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'seeded.db'}"
    with EmbeddedRedis() as redis:
        yield db, redis.url, real_sessions(db, redis.url)
