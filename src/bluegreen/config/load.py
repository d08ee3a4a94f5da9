"""Load ``bluegreen.toml`` into validated, frozen models (``settings``).

Every error names the key path (``hosts[1].port: ...``) and becomes exit code 2.
Nothing here touches a host.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel, ValidationError

from bluegreen.errors import ConfigError
from bluegreen.config.models import (APP_PLACEHOLDERS, BUILD_PLACEHOLDERS, ENV_KEY_RE,
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


def find_config(start: Path | None = None) -> Path | None:
    """``bluegreen.toml`` in ``start`` (the working directory), else in the nearest
    directory above it, as git finds its repository from a subdirectory; None when none.
    A file found above runs its commands as this user (the build, hooks, secret commands),
    so the search stops at a directory this user does not own, and the file must be this
    user's in a directory nobody else may write to: another user's /tmp/bluegreen.toml is
    never picked up from /tmp/work (as git refuses a repository another user owns)."""
    here = (start or Path.cwd()).absolute()
    if (here / DEFAULT_CONFIG).is_file():
        return here / DEFAULT_CONFIG
    uid = os.getuid()
    for directory in here.parents:
        try:
            st = directory.stat()
            candidate = directory / DEFAULT_CONFIG
            found = candidate.stat() if candidate.is_file() else None
        except OSError:
            return None
        if st.st_uid != uid or st.st_mode & 0o022:
            return None
        if found is not None:
            return candidate if found.st_uid == uid else None
    return None


def load_config(path: str | Path | None, destination: str | None = None) -> Config:
    """Read and validate the config file (by default ``bluegreen.toml`` here or in the
    nearest directory above: ``find_config``); with a
    ``destination``, ``<stem>.<destination>.toml`` beside it is merged over it (tables key
    by key, arrays of tables such as ``[[hosts]]`` replaced), as Kamal's
    ``deploy.staging.yml``. A problem names the file its key came from."""
    file = Path(path) if path else find_config() or Path(DEFAULT_CONFIG)
    hint = "" if path else (" here or in any directory above (run `bluegreen init` to write "
                            "one, or pass -c PATH)")
    data = _read_toml(file, hint)
    if destination is None:
        return parse_config(data, file.resolve().parent)
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,39}$", destination):
        raise ConfigError(f"--destination {destination!r}: letters, digits, '-' and '_' only")
    overlay_file = file.with_name(f"{file.stem}.{destination}{file.suffix or '.toml'}")
    overlay = _read_toml(overlay_file, f" (destination {destination!r} reads it, merged over "
                                       f"{file.name})")
    try:
        return parse_config(merge(data, overlay), file.resolve().parent)
    except ConfigError as exc:
        raise ConfigError(_name_files(exc.message, overlay, file.name, overlay_file.name)
                          ) from None


def _read_toml(file: Path, hint: str) -> dict[str, Any]:
    try:
        text = file.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file {file} not found{hint}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """``overlay`` over ``base``: tables merged key by key, anything else (values, arrays
    of tables) replaced."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _name_files(message: str, overlay: dict[str, Any], base_name: str, overlay_name: str) -> str:
    """Prefix each problem of a config error with the file its key was set in."""
    head = "invalid config: "
    body = message.removeprefix(head)
    problems = re.split(r"; (?=\(top level\)|[A-Za-z_][\w.\[\]]*: )", body)
    named = []
    for problem in problems:
        key = problem.split(": ", 1)[0]
        parts = [p for p in re.split(r"[.\[\]]", key) if p]
        node: Any = overlay
        for part in parts:
            if isinstance(node, dict) and part in node:
                node = node[part]
            elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            else:
                node = None
                break
        in_overlay = node is not None and bool(parts) or (parts and parts[0] in overlay
                                                           and isinstance(overlay[parts[0]], list))
        named.append(f"{overlay_name if in_overlay else base_name}: {problem}")
    return (head if message.startswith(head) else "") + "; ".join(named)
