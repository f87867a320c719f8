"""The ``axiswatch`` command line: the front door.

Every command reads :class:`Settings` from the environment once; options
override it. Errors from the :mod:`monitor.errors` tree become one line on
stderr and exit status 1. The group and its shared helpers live in
:mod:`monitor.cli_base`; importing the command modules registers them on it.
"""

from __future__ import annotations

from monitor import cli_axis, cli_chat, cli_dashboard, cli_scoring, cli_service, cli_sessions  # noqa: F401
from monitor.cli_base import cli

__all__ = ["cli", "main"]


def main():
    cli(prog_name="axiswatch")


if __name__ == "__main__":
    main()
