"""The configuration reference, made from the config models themselves: what
`bluegreen docs` prints and what docs/configuration.md's key table is generated from (a
test keeps the file equal to it), so the reference cannot drift from the validator."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, get_args, get_origin

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from bluegreen.config.load import PROXY_SETTINGS, Config, HostConfig

# Sections in the order of the example file; "" is the top level.
SECTIONS = ("", "release", "run", "slots", "deploy", "canary", "proxy", "hooks",
            "hosts", "load_balancers")


@dataclass(frozen=True)
class Key:
    path: str  # e.g. "run.health_path", "hosts[].port"
    section: str
    default: str
    description: str


def keys() -> list[Key]:
    """Every key of `bluegreen.toml`, section by section."""
    out: list[Key] = []
    for name, field in Config.model_fields.items():
        if field.exclude:
            continue
        model = _model_of(field.annotation)
        if name == "proxy":
            out.extend(_proxy_keys())
        elif name == "hosts":
            out.extend(_model_keys(HostConfig, "hosts[].", "hosts"))
        elif name == "load_balancers":
            out.append(Key("load_balancers[]", name, "none", field.description or ""))
        elif model is not None:
            out.extend(_model_keys(model, f"{name}.", name))
        else:
            out.append(Key(name, "", _default(field), field.description or ""))
    return out


def _proxy_keys() -> list[Key]:
    seen: dict[str, Key] = {}
    for kind, model in PROXY_SETTINGS.items():
        for key in _model_keys(model, "proxy.", "proxy"):
            if key.path in seen and seen[key.path].default != key.default:
                old = seen[key.path]
                seen[key.path] = Key(key.path, "proxy", f"{old.default}; {kind}: {key.default}",
                                     old.description)
            else:
                seen.setdefault(key.path, key)
    tag = seen.pop("proxy.kind")
    return [Key(tag.path, "proxy", '"nginx"', tag.description), *seen.values()]


def _model_keys(model: type[BaseModel], prefix: str, section: str) -> list[Key]:
    """The model's keys; a key holding a table (e.g. `proxy.tls`) is followed by its own."""
    out = []
    for name, field in model.model_fields.items():
        out.append(Key(prefix + name, section, _default(field), field.description or ""))
        table = _model_of(field.annotation)
        if table is not None:  # a table, or (a dict of them) a table per NAME
            each = "NAME." if get_origin(field.annotation) is dict else ""
            out.extend(_model_keys(table, f"{prefix}{name}.{each}", section))
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds (also as ``Model | None``), or None."""
    for candidate in (annotation, *get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _default(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined:
        value = field.default_factory() if field.default_factory else None
    if value is None:
        return "-"
    if isinstance(value, BaseModel):
        return "-"
    return json.dumps(value)


def markdown() -> str:
    """The key table of docs/configuration.md."""
    rows = ["| key | default | meaning |", "|---|---|---|"]
    rows += [f"| `{k.path}` | {_default_cell(k.default)} | {k.description.replace('|', '/')} |"
             for k in keys()]
    return "\n".join(rows) + "\n"


def _default_cell(default: str) -> str:
    if default in ("required", "-", "none"):
        return default
    first, _, haproxy = default.partition("; haproxy: ")
    return f"`{first}`" + (f"; haproxy: `{haproxy}`" if haproxy else "")


def text(section: str | None = None) -> str:
    """The reference as plain text, one section or all."""
    lines: list[str] = []
    for sec in SECTIONS:
        if section not in (None, sec):
            continue
        chosen = [k for k in keys() if k.section == sec]
        title = {"": "top level", "hosts": "[[hosts]]",
                 "load_balancers": "[[load_balancers]]"}.get(sec, f"[{sec}]")
        lines.append(title)
        for k in chosen:
            lines.append(f"  {k.path}  (default: {k.default})")
            lines.append(f"      {k.description}")
        lines.append("")
    return "\n".join(lines)
