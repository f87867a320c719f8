"""One frozen settings object, read from ``AXISWATCH_*`` environment variables once.

``REDIS_URL`` (unset: embedded Redis), ``AXISWATCH_DATABASE_URL``, ``AXISWATCH_POLICY``,
``AXISWATCH_HOST``/``_PORT``, ``AXISWATCH_DASHBOARD_PORT``, ``AXISWATCH_THRESHOLD_WATCH``/``_WARNING``/``_CRITICAL``,
``AXISWATCH_EWMA_ALPHA``, ``AXISWATCH_HYSTERESIS``, ``AXISWATCH_MIN_TOKENS``, ``AXISWATCH_DRIFT_BASELINE``,
``AXISWATCH_COOLDOWN_TOKENS``, ``AXISWATCH_WEBHOOK_URL``/``_SECRET``/``_MAX_ATTEMPTS``,
``AXISWATCH_API_KEYS``, ``AXISWATCH_WORKER_RECLAIM_IDLE_MS``, ``AXISWATCH_MAX_NEW_TOKENS``, and the
model settings (``AXISWATCH_MODEL``, ``_DEVICE``, ``_DTYPE``, ``_AXIS``, ``_CAPPING``, ...).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from monitor.auth import parse_keys
from monitor.drift import DriftConfig, Thresholds, thresholds_from_calibration
from monitor.errors import InputError
from monitor.webhook_config import WebhookConfig

MAX_AUDIT_BYTES = 4 * 1024 * 1024  # the largest transcript body /v1/audit (and the dashboard's upload) takes


def shipped_dir() -> Path:
    """Folder of the artifacts shipped for the default model."""
    return Path(__file__).resolve().parent.parent / "probes" / "shipped" / "smollm2-135m-instruct"


BACKENDS = ("hf", "vllm")  # who runs generation (AXISWATCH_BACKEND, serve --backend)


def local_host(host: str) -> str:
    """An address to reach a server bound to ``host`` from this machine (a wildcard means loopback)."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host


def _switch(value: str, key: str) -> bool:
    v = value.strip().lower()
    if v not in ("on", "off", "1", "0", "true", "false", "yes", "no"):
        raise InputError(f"AXISWATCH_{key} must be on or off, not {value!r}")
    return v in ("on", "1", "true", "yes")


def _num(get, key: str, default: str, kind):
    raw = get(key, default)
    try:
        return kind(raw)
    except ValueError:
        raise InputError(f"AXISWATCH_{key} must be {'an integer' if kind is int else 'a number'}, not {raw!r}") from None


def _opt_float(get, key: str) -> float | None:
    raw = get(key)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"AXISWATCH_{key} must be a number (a score threshold), not {raw!r}") from None


def _positive(v: int, key: str) -> int:
    if v < 1:
        raise InputError(f"AXISWATCH_{key} must be at least 1, not {v}")
    return v


def _retention(get) -> float | None:
    """``AXISWATCH_RETENTION_DAYS``: unset keeps every session; else a positive number of days."""
    if not get("RETENTION_DAYS"):
        return None
    days = _num(get, "RETENTION_DAYS", "0", float)
    if not 0 < days < float("inf"):
        raise InputError(f"AXISWATCH_RETENTION_DAYS must be a positive number of days (unset keeps sessions forever), not {days}")
    return days


def _keys(env) -> tuple[str, ...]:
    return parse_keys(env.get("AXISWATCH_API_KEYS"))


def _webhook(env):
    return WebhookConfig.from_env(env)


def _backend(v: str) -> str:
    if v not in BACKENDS:
        raise InputError(f"AXISWATCH_BACKEND must be one of {', '.join(BACKENDS)}, not {v!r}")
    return v


def _port(v: str, key: str = "PORT") -> int:
    if not v.isdigit() or not 0 < int(v) < 65536:
        raise InputError(f"AXISWATCH_{key} must be a port number, not {v!r}")
    return int(v)


@dataclass(frozen=True)
class Settings:
    model: str = "default"
    device: str = "cpu"
    dtype: str = "float32"
    cache_dir: str | None = None
    axis: str | None = None  # axis folder; None = shipped artifacts of the default model
    capping: str | None = None  # capping folder; None = the axis folder's capping config
    layers_path: str | None = None
    judge: str = "offline"
    batch_size: int = 16
    redis_url: str | None = None  # None: start the embedded redis-server
    database_url: str = "sqlite:///axiswatch.db"
    policy: str = "flag"
    host: str = "127.0.0.1"
    port: int = 8000
    dashboard_port: int = 8501
    thresholds: tuple[float | None, float | None, float | None] = (None, None, None)  # watch, warning, critical
    # overrides of the calibrated thresholds (drift values; raw projections for baseline "absolute"); None keeps the calibrated one
    ewma_alpha: float | None = None  # None: the alpha the thresholds were calibrated for (0.1 without one)
    hysteresis: float | None = None  # None: a quarter of the alerting band (Thresholds.default_hysteresis)
    recover_tokens: int = 32  # calm tokens before a state drops and the alerts above it resolve
    min_tokens: int | None = None  # None: the calibration's (16 without one)
    cooldown_tokens: int = 64
    drift_baseline: str | None = None  # "session" or "absolute"; None: the calibration's ("session" without one)
    level_detector: bool = True  # the absolute level detector beside the drift, where the axis calibrated one
    webhook: WebhookConfig | None = None  # its repr hides the secret
    api_keys: tuple[str, ...] = field(default=(), repr=False)  # AXISWATCH_API_KEYS; empty: no authentication
    admin_keys: tuple[str, ...] = field(default=(), repr=False)  # AXISWATCH_ADMIN_API_KEYS: who may erase via the API
    reclaim_idle_ms: int = 30_000  # a worker takes over entries another consumer left pending this long
    max_new_tokens: int = 1024  # the most tokens one request may ask for
    backend: str = "hf"  # who runs generation: "hf" (our transformers loop) or "vllm" (vLLM's engine)
    vllm_memory_gb: float = 1.0  # the vllm backend's KV cache (on CPU, host memory reserved for it)
    vllm_max_model_len: int = 2048
    vllm_tensor_parallel_size: int = 1
    vllm_enforce_eager: bool = False  # vLLM's default, compiled (the monitor's op is in the graph); 1: eager
    retention_days: float | None = None  # AXISWATCH_RETENTION_DAYS: the persistence worker erases sessions idle longer

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        get = lambda k, d=None: env.get(f"AXISWATCH_{k}") or d  # noqa: E731
        batch = get("BATCH_SIZE", "16")
        if not batch.isdigit() or int(batch) < 1:
            raise InputError(f"AXISWATCH_BATCH_SIZE must be a positive integer, not {batch!r}")
        return cls(model=get("MODEL", "default"), device=get("DEVICE", "cpu"), dtype=get("DTYPE", "float32"),
                   cache_dir=get("CACHE_DIR"), axis=get("AXIS"), capping=get("CAPPING"),
                   layers_path=get("LAYERS_PATH"), judge=get("JUDGE", "offline"),
                   batch_size=int(batch), redis_url=env.get("REDIS_URL") or get("REDIS_URL"),
                   database_url=get("DATABASE_URL", "sqlite:///axiswatch.db"), policy=get("POLICY", "flag"),
                   host=get("HOST", "127.0.0.1"), port=_port(get("PORT", "8000")),
                   dashboard_port=_port(get("DASHBOARD_PORT", "8501"), "DASHBOARD_PORT"),
                   thresholds=(_opt_float(get, "THRESHOLD_WATCH"), _opt_float(get, "THRESHOLD_WARNING"),
                               _opt_float(get, "THRESHOLD_CRITICAL")),
                   ewma_alpha=_num(get, "EWMA_ALPHA", "0.1", float) if get("EWMA_ALPHA") else None,
                   hysteresis=_num(get, "HYSTERESIS", "0", float) if get("HYSTERESIS") else None,
                   recover_tokens=_num(get, "RECOVER_TOKENS", "32", int),
                   min_tokens=_num(get, "MIN_TOKENS", "16", int) if get("MIN_TOKENS") else None,
                   drift_baseline=get("DRIFT_BASELINE"),
                   level_detector=_switch(get("LEVEL_DETECTOR", "on"), "LEVEL_DETECTOR"),
                   cooldown_tokens=_num(get, "COOLDOWN_TOKENS", "64", int), webhook=_webhook(env),
                   api_keys=_keys(env), admin_keys=parse_keys(env.get("AXISWATCH_ADMIN_API_KEYS"), "AXISWATCH_ADMIN_API_KEYS"),
                   reclaim_idle_ms=_num(get, "WORKER_RECLAIM_IDLE_MS", "30000", int),
                   max_new_tokens=_positive(_num(get, "MAX_NEW_TOKENS", "1024", int), "MAX_NEW_TOKENS"),
                   backend=_backend(get("BACKEND", "hf")),
                   vllm_memory_gb=_num(get, "VLLM_MEMORY_GB", "1.0", float),
                   vllm_max_model_len=_positive(_num(get, "VLLM_MAX_MODEL_LEN", "2048", int), "VLLM_MAX_MODEL_LEN"),
                   vllm_tensor_parallel_size=_positive(_num(get, "VLLM_TENSOR_PARALLEL_SIZE", "1", int),
                                                       "VLLM_TENSOR_PARALLEL_SIZE"),
                   vllm_enforce_eager=get("VLLM_ENFORCE_EAGER", "0").lower() not in ("0", "false", "no", ""),
                   retention_days=_retention(get))

    def with_(self, **kw) -> Settings:
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def drift_setup(self, calibration: dict):
        """The :class:`~monitor.drift.Thresholds` and :class:`~monitor.drift.DriftConfig` the engine runs
        with: the axis' alert calibration (``calibration["alerting"]``, see ``axiswatch calibrate-alerts``)
        with the configured overrides applied. With all three ``AXISWATCH_THRESHOLD_*`` set, an axis
        without an alert calibration works too."""
        w, a, c = self.thresholds
        if w is None or a is None or c is None or (calibration or {}).get("alerting"):
            calibrated, knobs = thresholds_from_calibration(calibration)
        else:
            calibrated, knobs = Thresholds(w, a, c), {}
        calibrated_for = str(knobs.get("baseline", "session"))
        if self.drift_baseline and self.drift_baseline != calibrated_for and None in (w, a, c):
            raise InputError(f"AXISWATCH_DRIFT_BASELINE={self.drift_baseline} but the axis' alert thresholds were "
                             f"calibrated for the {calibrated_for!r} baseline (another statistic, other units): set "
                             "all three AXISWATCH_THRESHOLD_* too, or recalibrate with axiswatch calibrate-alerts")
        thresholds = Thresholds(calibrated.watch if w is None else w, calibrated.warning if a is None else a,
                                calibrated.critical if c is None else c)
        drift = DriftConfig(alpha=self.ewma_alpha if self.ewma_alpha is not None else float(knobs.get("alpha", 0.1)),
                            hysteresis=self.hysteresis, cooldown_tokens=self.cooldown_tokens,
                            min_tokens=self.min_tokens if self.min_tokens is not None else int(knobs.get("min_tokens", 16)),
                            baseline=self.drift_baseline or str(knobs.get("baseline", "session")),
                            reference_tokens=int(knobs.get("reference_tokens", 16)),
                            recover_tokens=self.recover_tokens,
                            # the level beside the drift; baseline "absolute" is a level on its own
                            level_thresholds=knobs.get("level_thresholds") if self.level_detector
                            and (self.drift_baseline or knobs.get("baseline", "session")) == "session" else None,
                            level_alpha=float(knobs.get("level_alpha", 0.02)))
        return thresholds, drift.resolved(thresholds)

    def axis_dir(self) -> Path:
        return Path(self.axis) if self.axis else shipped_dir()

    def capping_folder(self) -> Path:
        """Where the capping config in use is looked for: ``AXISWATCH_CAPPING``, else the axis folder (either
        may name a file in that folder, ``capping.json`` or ``axis.json``)."""
        folder = Path(self.capping) if self.capping else self.axis_dir()
        return folder.parent if folder.is_file() else folder

    def capping_dir(self) -> Path | None:
        """The folder of the capping config in use (:meth:`capping_folder`); None when it holds no
        ``capping.json`` (then there is no capping, and policy ``cap`` is refused)."""
        folder = self.capping_folder()
        return folder if (folder / "capping.json").is_file() else None

    def api_url(self) -> str:
        """The probe service's address as seen from this machine (``http://host:port``)."""
        return f"http://{local_host(self.host)}:{self.port}"

    def axis_drift(self) -> tuple[Thresholds, DriftConfig]:
        """:meth:`drift_setup` of the axis folder's alert calibration, read from its ``axis.json`` (no
        tensors loaded): what a service on these settings runs with, for replays outside it."""
        path = self.axis_dir() / "axis.json"
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"axis metadata {path} cannot be read: {e}") from None
        return self.drift_setup(meta.get("calibration", {}) if isinstance(meta, dict) else {})
