"""The `bluegreen` command line: the group and shared options (``app``), the commands
(``changes``, ``daytwo``) over the commands layer, the tables it prints (``views``) and the
guides `bluegreen docs` shows (``guides``)."""

from bluegreen.cli import changes, daytwo  # noqa: F401  (they add their commands to main)
from bluegreen.cli.app import command_table, main

__all__ = ["command_table", "main"]
