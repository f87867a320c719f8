"""The one composition root: a running deployment assembled from :class:`Settings`. Redis (embedded
when no ``REDIS_URL``), the store (migrated), what it monitors with (:func:`load_monitoring`: the axis,
the capping config, thresholds and drift settings, checked against the model), the generation backend,
the engine with its outbox, heartbeat, announcement and (where ``OTEL_*`` ask for it) tracing, and, unless ``workers=False``, in-process
persistence and alert workers. ``axiswatch serve`` (and ``chat``, ``demo``, ``shadow``) start through
:func:`start` with the model loaded here; the vLLM plugin (:mod:`monitor.vllm_runner`) starts through the
same function, with vLLM's runner as its backend.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager, ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from monitor.drift import DriftConfig, Thresholds
from monitor.errors import InputError, RedisUnavailable
from monitor.settings import Settings
from monitor.store import Store
from monitor.streams import REDIS_DOWN, Streams
from monitor.streams.embedded import EmbeddedRedis
from monitor.streams.outbox import Outbox
from monitor.workers.alerts import AlertWorker
from monitor.workers.persist import PersistWorker, consumer_name

if TYPE_CHECKING:  # the engine and the artifacts load torch; a data-only runtime never imports them
    from monitor.backends import Backend
    from monitor.engine import Engine
    from monitor.trace_export import Tracing
    from probes.artifacts import AxisArtifact, CappingConfig

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    redis_url: str
    streams: Streams
    store: Store
    outbox: Outbox | None = None
    engine: Engine | None = None  # None: a data-only runtime (model=False)
    workers: list[PersistWorker | AlertWorker] = field(default_factory=list)
    tracing: Tracing | None = None  # the turns' spans (OTEL_* variables; monitor.trace_export); None: off
    _stack: ExitStack = field(default_factory=ExitStack)

    def start_heartbeat(self, every_s: float = 3.0, ttl_s: int = 10) -> None:
        """Keep this replica's heartbeat alive in Redis (others recover its half replies when it stops)."""
        stop = threading.Event()

        def beat():
            while True:
                try:
                    self.streams.heartbeat(self.engine.replica, ttl_s)
                except REDIS_DOWN as e:  # the outbox copes; keep beating
                    log.debug("heartbeat failed: %s", e)
                if stop.wait(every_s):
                    return

        t = threading.Thread(target=beat, name="heartbeat", daemon=True)
        t.start()

        def halt():  # joined, so no daemon thread is left running into interpreter shutdown
            stop.set()
            t.join(5)
            try:  # a clean stop: off the replicas /metrics watches, so no heartbeat alert fires for it
                self.streams.retire(self.engine.replica)
            except REDIS_DOWN as e:  # it is forgotten after an hour (streams.REPLICA_MEMORY_S)
                log.warning("replica %s not retired from Redis (%s)", self.engine.replica, e)

        self._stack.callback(halt)

    def hold(self, cm: AbstractContextManager) -> None:
        """Enter ``cm`` (the vLLM plugin's hooks) until :meth:`close`."""
        self._stack.enter_context(cm)

    def close(self) -> None:
        """Stop taking requests, let the workers drain what was published, then stop everything."""
        if self.engine is not None:
            self.engine.close()
        if self.tracing is not None:  # every turn has ended: its spans go out now
            self.tracing.close()
        if self.outbox is not None:  # replay what waits for Redis, or spill it to the store
            self.outbox.close()
        for w in self.workers:
            w.stop()
            drain = getattr(w, "drain", None)
            if drain is not None:
                try:
                    drain()
                except Exception as e:  # noqa: BLE001 - shutting down: every component still gets its close
                    log.warning("could not drain %s (%s): its entries stay in Redis for the next worker",
                                type(w).__name__, e)
        self._stack.close()
        self.store.close()


def open_outbox(rt: Runtime) -> Outbox:
    """The publisher the engine writes through (it buffers while Redis is down), resumed from its spill."""
    streams, webhooks = rt.streams, rt.settings.webhook is not None
    rt.outbox = Outbox(streams, rt.store, ensure_groups=lambda: streams.ensure_groups(webhooks=webhooks))
    rt.outbox.resume()
    return rt.outbox


@dataclass(frozen=True)
class Monitoring:
    """What a deployment monitors with, loaded and checked against its model."""

    axis: AxisArtifact
    axis_dir: Path
    capping: CappingConfig | None
    cap_dir: Path | None
    thresholds: Thresholds
    drift: DriftConfig


def load_monitoring(settings: Settings, hidden_size: int, n_layers: int, model_id: str | None = None) -> Monitoring:
    """The settings' axis and capping config (:meth:`Settings.capping_dir`), each checked against a model
    with this hidden size and layer count, and the thresholds and drift settings they run with."""
    from probes.artifacts import load_axis, load_capping

    axis_dir = settings.axis_dir()
    axis = load_axis(axis_dir)
    axis.check(model_id, hidden_size, n_layers)
    cap_dir = settings.capping_dir()
    capping = load_capping(cap_dir) if cap_dir is not None else None
    if capping is not None:
        capping.check(hidden_size, n_layers)
    thresholds, drift = settings.drift_setup(axis.calibration)
    return Monitoring(axis, Path(axis_dir), capping, cap_dir, thresholds, drift)


def announce(rt: Runtime, mon: Monitoring) -> None:
    """What this deployment runs, in Redis for the dashboard (its header, the Axis page)."""
    settings, engine = rt.settings, rt.engine
    assert engine is not None
    rt.streams.set_deployment({
        "model_id": engine.model_id, "layer": engine.layer, "policy": engine.policy,
        "thresholds": mon.thresholds.as_dict(), "axis_dir": str(mon.axis_dir.resolve()),
        "axis_fingerprint": mon.axis.fingerprint(),
        "drift": mon.drift.as_dict(),
        "capping": None if mon.capping is None or mon.cap_dir is None else {**mon.capping.meta(),
                                                                            "dir": str(mon.cap_dir.resolve())},
        "api": settings.api_url(),
        # the Axis page draws these from Redis: a dashboard on another host cannot read axis_dir
        "axis_meta": mon.axis.meta(),  # what axis.json holds
        "axis_report": _report(mon.axis_dir / "report.json")})


def model_backend(settings: Settings) -> tuple[Backend, Monitoring]:
    """The model loaded here and the generation backend the settings ask for around it (``hf``, or
    ``vllm`` with the transformers copy for audits), with what it monitors with."""
    from monitor.backends.hf import HFBackend
    from probes.models import load_model

    lm = load_model(settings.model, settings.device, settings.dtype, settings.cache_dir, settings.layers_path)
    mon = load_monitoring(settings, lm.hidden_size, lm.n_layers, lm.model_id)
    hf = HFBackend(lm, mon.axis, mon.capping, max_batch=settings.batch_size)
    if settings.backend != "vllm":
        return hf, mon
    from monitor.backends.vllm import VLLMBackend, VLLMOptions  # vLLM lives in its own environment

    opts = VLLMOptions(memory_gb=settings.vllm_memory_gb, max_model_len=settings.vllm_max_model_len,
                       tensor_parallel_size=settings.vllm_tensor_parallel_size,
                       enforce_eager=settings.vllm_enforce_eager)
    return VLLMBackend(hf, lm.meta.get("weights"), opts, dtype=settings.dtype), mon


def listen(host: str, port: int, option: str = "--port") -> socket.socket:
    """A socket bound to ``host:port``, or a one-line error naming ``option`` when the port is taken.

    Bound before the model loads, so a clash fails in a second rather than after a start banner."""

    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise InputError(f"cannot listen on {host}:{port}: {e.strerror or e} "
                         f"(is another axiswatch running there? choose another {option})") from None
    return sock


def _report(path) -> dict | None:
    """The axis folder's report.json for the dashboard, or None (a missing or unreadable report must not
    stop serving: the Axis page then says it is missing)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        log.warning("axis report %s not readable (%s); the dashboard's Axis page will lack it", path, e)
        return None


def _tracing() -> Tracing | None:
    """A span per turn where the standard ``OTEL_*`` variables ask for traces (docs/tracing.md); None (and the
    OpenTelemetry SDK not even imported) where they do not."""
    from monitor.tracing import enabled

    if not enabled():
        return None
    from monitor.trace_export import from_env

    return from_env()


def open_data(settings: Settings, stack: ExitStack):
    """Redis (embedded when no URL), its stream groups, and the migrated store."""

    url = settings.redis_url
    if not url:
        url = stack.enter_context(EmbeddedRedis()).url
        log.info("no REDIS_URL: started an embedded redis-server at %s", url)
    # a reply's whole tail must fit the live stream, or a dead replica's half reply cannot be recovered
    streams = Streams.from_url(url, live_maxlen=max(2_000, settings.max_new_tokens + 64))
    try:
        streams.ping()
    except REDIS_DOWN as e:
        raise RedisUnavailable(f"cannot reach Redis at {url}: {e} (unset REDIS_URL to use the embedded one)") from None
    streams.ensure_groups(webhooks=settings.webhook is not None)
    store = Store(settings.database_url)
    store.migrate()
    return url, streams, store


def start(settings: Settings, workers: bool = True, model: bool = True,
          backend: Callable[[Settings], tuple[Backend, Monitoring]] = model_backend, replica: str = "serve") -> Runtime:
    """A running deployment. ``model``: build a backend with ``backend`` (by default the model loaded here,
    :func:`model_backend`; the vLLM plugin passes vLLM's runner) and an engine around it, named
    ``replica`` plus a unique suffix in Redis; without it a data-only runtime (``worker``, the dashboard)."""
    stack = ExitStack()
    rt: Runtime | None = None
    try:
        url, streams, store = open_data(settings, stack)
        rt = Runtime(settings, url, streams, store, _stack=stack)
        if model:
            outbox = open_outbox(rt)
            be, mon = backend(settings)
            from monitor.engine import Engine  # the engine's backends load torch: only where a model serves

            rt.tracing = _tracing()
            rt.engine = Engine(be, mon.thresholds, drift=mon.drift, policy=settings.policy, publisher=outbox,
                               session_lookup=store.session_meta,
                               replica=f"{consumer_name(replica)}-{uuid.uuid4().hex[:6]}",
                               tracer=rt.tracing.turns if rt.tracing is not None else None)
            rt.start_heartbeat()  # or the workers would take this replica's live turns for a dead one's
            announce(rt, mon)
        if workers:
            w = PersistWorker(streams, store, reclaim_idle_ms=settings.reclaim_idle_ms,
                              retention_days=settings.retention_days)
            w.start_thread()
            rt.workers.append(w)
            hook = settings.webhook
            if hook is not None:
                aw = AlertWorker(streams, store, hook, reclaim_idle_ms=settings.reclaim_idle_ms)
                aw.start_thread()
                rt.workers.append(aw)
                log.info("alert webhooks to %s", hook.target)
        return rt
    except BaseException:
        if rt is not None:  # the outbox flushed, the workers stopped, the store closed, then the stack
            rt.close()
        else:
            stack.close()
        raise
