"""The config layer: ``bluegreen.toml`` loaded (``load``) into validated, frozen models
(``models``, one per section; each proxy kind's settings in ``proxies``), the reference
`bluegreen docs` prints (``reference``) and the files `bluegreen init` writes (``presets``).
Nothing here touches a host. The names below are what the other layers use; they are
imported on first use (pydantic takes ~0.1 s), so `bluegreen --help` and `init` skip it."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bluegreen.config.load import (ENV_KEY_RE, PROXY_SETTINGS, Colour, Config,
                                       HAProxySettings, HostConfig, NginxSettings,
                                       ProxySettings, check_version, load_config, parse_config,
                                       parse_listen, placeholders_in, render)
    from bluegreen.config.models import (APP_PLACEHOLDERS, BUILD_PLACEHOLDERS,
                                         SLOT_PLACEHOLDERS, Secret, status_ranges)

_FROM_MODELS = {"APP_PLACEHOLDERS", "BUILD_PLACEHOLDERS", "SLOT_PLACEHOLDERS", "Secret",
                "status_ranges"}
__all__ = ["APP_PLACEHOLDERS", "BUILD_PLACEHOLDERS", "ENV_KEY_RE", "PROXY_SETTINGS",
           "SLOT_PLACEHOLDERS", "Colour", "Config", "HAProxySettings", "HostConfig",
           "NginxSettings", "ProxySettings", "Secret", "check_version", "load_config",
           "parse_config", "parse_listen", "placeholders_in", "render", "status_ranges"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'bluegreen.config' has no attribute {name!r}")
    module = "models" if name in _FROM_MODELS else "load"
    value = getattr(importlib.import_module(f"bluegreen.config.{module}"), name)
    globals()[name] = value
    return value
