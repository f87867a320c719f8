"""axiswatch's service side. At the top: the engine (turns around a generation backend), sessions,
drift tracking and policy, the records, the HTTP API, settings and the wiring (service). Subpackages:
``backends`` (who runs the model: the interface and ``hf``), ``streams`` (the only code that touches
Redis), ``store`` (the only code that touches the database), ``workers`` (persistence, alerts,
webhooks, dead letters, shadow mode, recovery) and ``cli`` (the command line)."""

from monitor.settings import Settings, shipped_dir

__all__ = ["Settings", "shipped_dir"]
