"""axiswatch's service side: settings and the command line (the probe service comes next)."""

from monitor.settings import Settings, shipped_dir

__all__ = ["Settings", "shipped_dir"]
