"""axiswatch's service side: the probe service (engine, drift tracking, policies, HTTP API), Redis
streams, the store, the workers (persistence, alerts, webhooks, shadow, recovery) and the command line."""

from monitor.settings import Settings, shipped_dir

__all__ = ["Settings", "shipped_dir"]
