"""Load ``bluegreen.toml`` into validated, frozen models (``settings``).

Every error names the key path (``hosts[1].port: ...``) and becomes exit code 2.
Nothing here touches a host.
"""

from __future__ import annotations

import difflib
import tomllib
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from bluegreen.errors import ConfigError
from bluegreen.settings import (APP_PLACEHOLDERS, BUILD_PLACEHOLDERS, ENV_KEY_RE,
                                PROXY_SETTINGS, SLOT_PLACEHOLDERS, Colour, Config,
                                HAProxySettings, HostConfig, NginxSettings, ProxySettings,
                                check_version, parse_listen, placeholders_in, render)

__all__ = ["ENV_KEY_RE", "PROXY_SETTINGS", "Colour", "Config", "HAProxySettings",
           "HostConfig", "NginxSettings", "ProxySettings", "check_version", "load_config",
           "parse_config", "parse_listen", "placeholders_in", "render"]

DEFAULT_CONFIG = "bluegreen.toml"


def _check_placeholders(path: str, value: str, allowed: frozenset[str]) -> None:
    try:
        names = placeholders_in(value)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    bad = sorted(names - allowed)
    if bad:
        raise ConfigError(
            f"{path}: unknown placeholder {{{bad[0]}}}; allowed here: "
            + " ".join("{" + n + "}" for n in sorted(allowed))
        )


def _check_all_placeholders(cfg: Config) -> None:
    rel, run, proxy = cfg.release, cfg.run, cfg.proxy
    for key in ("build", "artifact"):
        val = getattr(rel, key)
        if val is not None:
            _check_placeholders(f"release.{key}", val, BUILD_PLACEHOLDERS)
    if rel.version_command is not None:
        _check_placeholders("release.version_command", rel.version_command, APP_PLACEHOLDERS)
    if rel.prepare is not None:
        _check_placeholders("release.prepare", rel.prepare, SLOT_PLACEHOLDERS)
    for key in ("start", "stop", "command", "cwd", "migrate", "console"):
        val = getattr(run, key)
        if val is not None:
            _check_placeholders(f"run.{key}", val, SLOT_PLACEHOLDERS)
    for env_key, env_val in run.env.items():
        _check_placeholders(f"run.env.{env_key}", env_val, SLOT_PLACEHOLDERS)
    if run.env_file is not None:
        _check_placeholders("run.env_file", run.env_file, APP_PLACEHOLDERS)
    for key in ("server_name", "sites_available", "sites_enabled", "site", "test", "reload",
                "config_file", "map_file", "socket", "frontend_file"):
        if key in type(proxy).model_fields:
            _check_placeholders(f"proxy.{key}", getattr(proxy, key), APP_PLACEHOLDERS)
    if proxy.tls is not None:
        for key in ("certificate", "certificate_key", "acme_root"):
            if getattr(proxy.tls, key) is not None:
                _check_placeholders(f"proxy.tls.{key}", getattr(proxy.tls, key),
                                    APP_PLACEHOLDERS)
    _check_placeholders("slots.bind", cfg.slots.bind, frozenset({"app", "private_address"}))
    for i, host in enumerate(cfg.hosts):
        _check_placeholders(f"hosts[{i}].deploy_to", host.deploy_to, APP_PLACEHOLDERS)
    for key, val in cfg.hooks.model_dump().items():
        if val is not None:
            _check_placeholders(f"hooks.{key}", val, APP_PLACEHOLDERS)


def _key_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out or "(top level)"


def _describe(err: dict[str, Any]) -> str:
    loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
    msg = str(err["msg"]).removeprefix("Value error, ")
    if len(loc) >= 2 and loc[0] == "proxy" and loc[1] in PROXY_SETTINGS:
        kind, loc = str(loc[1]), (loc[0], *loc[2:])  # the union's tag is not a key
        key = str(loc[-1])
        if err["type"] == "extra_forbidden" and len(loc) == 2 and any(
                key in model.model_fields for model in PROXY_SETTINGS.values()):
            return f"proxy: {key} is not used by kind = {kind!r}"
    if err["type"] == "extra_forbidden":
        msg = "unknown key" + _did_you_mean(loc)
    elif loc == ("hosts",) and err["type"] == "list_type":
        msg = ("must be a list of tables: write each host as\n  [[hosts]]\n  address = "
               "\"deploy@web1.example.com\"")
    elif err["type"] == "missing":
        msg = "required key is missing"
    elif err["type"] == "union_tag_invalid":
        loc, msg = (*loc, "kind"), "must be " + " or ".join(repr(k) for k in PROXY_SETTINGS)
    return f"{_key_path(loc)}: {msg}"


def _did_you_mean(loc: tuple[int | str, ...]) -> str:
    """` (did you mean 'x'?)` for an unknown key close to a known one at the same place."""
    models: list[type[BaseModel]] = [Config]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        inner: list[type[BaseModel]] = []
        for model in models:
            field = model.model_fields.get(part)
            if field is None:
                continue
            for kind in [field.annotation, *get_args(field.annotation),
                         *(a for t in get_args(field.annotation) for a in get_args(t))]:
                if isinstance(kind, type) and issubclass(kind, BaseModel):
                    inner.append(kind)
        models = inner
    known = {name for model in models for name, f in model.model_fields.items()
             if not f.exclude}
    close = difflib.get_close_matches(str(loc[-1]), sorted(known), n=1, cutoff=0.7)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_config(data: dict[str, Any], base_dir: Path) -> Config:
    """Validate a parsed TOML document."""
    if "base_dir" in data:
        raise ConfigError("base_dir: unknown key")
    try:
        cfg = Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors()
        lines = [_describe(dict(e)) for e in errors]
        raise ConfigError("invalid config: " + "; ".join(lines)) from None
    _check_all_placeholders(cfg)
    return cfg


def load_config(path: str | Path | None) -> Config:
    """Read and validate the config file (``./bluegreen.toml`` by default)."""
    file = Path(path) if path else Path(DEFAULT_CONFIG)
    try:
        text = file.read_text()
    except FileNotFoundError:
        hint = "" if path else " (run `bluegreen init` to write one, or pass -c PATH)"
        raise ConfigError(f"config file {file} not found{hint}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    return parse_config(data, file.resolve().parent)
