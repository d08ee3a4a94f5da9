"""The modules the CLI's commands call, imported when first used: `bluegreen --help` and
commands that need no host skip pydantic, rich, asyncssh and Jinja2 (~0.2 s). Declared
once here; a type checker sees the real modules."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = ["Later", "artifact", "commands_context", "operations", "reference", "releases",
           "reports", "setting_up", "views", "workflow"]


class Later(ModuleType):
    """A module imported when one of its names is first used."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.__dict__["_name"] = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self.__dict__["_name"]), attr)


if TYPE_CHECKING:
    from bluegreen.cli import views
    from bluegreen.commands import context as commands_context
    from bluegreen.commands import operations, releases, reports, workflow
    from bluegreen.commands import setup as setting_up
    from bluegreen.config import reference
    from bluegreen.rollout import artifact
else:
    artifact = Later("bluegreen.rollout.artifact")
    commands_context = Later("bluegreen.commands.context")
    operations = Later("bluegreen.commands.operations")
    reference = Later("bluegreen.config.reference")
    releases = Later("bluegreen.commands.releases")
    reports = Later("bluegreen.commands.reports")
    setting_up = Later("bluegreen.commands.setup")
    views = Later("bluegreen.cli.views")
    workflow = Later("bluegreen.commands.workflow")
