"""The ``axiswatch`` command line: the front door.

Every command reads :class:`Settings` from the environment once; options
override it. Errors from the :mod:`monitor.errors` tree become one line on
stderr and exit status 1. The group and its shared helpers live in
:mod:`monitor.cli.base`; importing the command modules registers them on it.
"""

from __future__ import annotations

from monitor.cli import (  # noqa: F401 - they register their commands
    alerts,
    axis,
    chat,
    dashboard,
    rescore,
    retention,
    scoring,
    serve,
    sessions,
)
from monitor.cli.base import cli

__all__ = ["cli", "main"]


def main():
    cli(prog_name="axiswatch")


if __name__ == "__main__":
    main()
