"""The plain values and helpers the config models are made of: colours, placeholders,
listen values, versions, status ranges, and the base model with described keys."""

from __future__ import annotations

import enum
import re
import string
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

APP_RE = r"^[a-z][a-z0-9_-]{0,39}$"
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# Placeholders each kind of value may use.
SLOT_PLACEHOLDERS = frozenset(
    {"app", "color", "port", "version", "release_dir", "slot_dir", "deploy_to", "bind"}
)
BUILD_PLACEHOLDERS = frozenset({"app", "version"})
APP_PLACEHOLDERS = frozenset({"app"})


class Colour(str, enum.Enum):
    BLUE = "blue"
    GREEN = "green"

    @property
    def other(self) -> Colour:
        return Colour.GREEN if self is Colour.BLUE else Colour.BLUE

    def __str__(self) -> str:
        return self.value


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


# Durations in the config: seconds, or "30s", "2m", "500ms", "1h" (``duration``).
Seconds = Annotated[float, BeforeValidator(lambda v: duration(v)), Field(ge=0, le=86400)]
PositiveSeconds = Annotated[float, BeforeValidator(lambda v: duration(v)), Field(gt=0, le=86400)]
Port = Annotated[int, Field(ge=1, le=65535)]
# A listen value: "80", "127.0.0.1:8080", or the port as a TOML integer (80).
Listen = Annotated[str, BeforeValidator(
    lambda v: str(v) if isinstance(v, int) and not isinstance(v, bool) else v)]


def key(default: Any = ..., description: str = "", **kw: Any) -> Any:
    """A config key: its default and the sentence `bluegreen docs` prints for it."""
    return Field(default, description=description, **kw)


def status_ranges(spec: str) -> tuple[tuple[int, int], ...]:
    """``"200-299,301"`` as ranges; ValueError (in words) on anything else."""
    out = []
    for part in spec.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise ValueError(f"{spec!r}: use status codes and ranges such as 200-299,301")
        pair = (int(low), int(high or low))
        if not 100 <= pair[0] <= pair[1] <= 599:
            raise ValueError(f"{spec!r}: codes are 100 to 599, ranges low-high")
        out.append(pair)
    return tuple(out)


def rendered_word(v: str, forbidden: str = ";{}") -> str:
    """A value written as it is into the nginx site, the HAProxy config or the script
    `setup --print-root-files` prints for root: no line break or control character (a line
    of its own there), and none of ``forbidden`` (nginx syntax: `;` ends a directive,
    `{}` a block) outside a `{placeholder}`."""
    if re.search(r"[\x00-\x1f\x7f]", v):
        raise ValueError(f"{v!r}: no line breaks or control characters (it is written "
                         "into the proxy's config or root's install script)")
    bad = sorted(set(re.sub(r"\{\w+\}", "", v)) & set(forbidden))
    if bad:
        raise ValueError(f"{v!r}: {' '.join(repr(c) for c in bad)} not allowed (it is "
                         "written into the proxy's config as it is)")
    return v


def parse_listen(listen: str) -> tuple[str, int]:
    """The address and port the proxy listens on, from an nginx ``listen`` value."""
    first = listen.split()[0] if listen.split() else ""
    addr, _, port = first.rpartition(":")
    if not addr:
        addr = "127.0.0.1"
    if addr in ("*", "0.0.0.0", "[::]"):
        addr = "127.0.0.1"
    addr = addr.strip("[]")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{listen!r} has no port (expected e.g. '80' or '127.0.0.1:8080')")
    return addr, int(port)


def duration(value: object) -> object:
    """A duration's number of seconds: a number, or a string such as "30s", "2m", "500ms",
    "1h", "90" (one syntax for every duration: config keys and options alike). Anything
    else is left for the model to refuse (a bool stays a bool)."""
    if isinstance(value, str):
        match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)?\s*", value)
        if not match:
            raise ValueError(f"{value!r} is not a duration (e.g. 30s, 2m, 1h, 0.5)")
        return float(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600,
                                        None: 1}[match.group(2)]
    return value


def seconds(value: str | float | int) -> float:
    """A duration: a number of seconds, or a string such as "30s", "2m", "1.5s", "90"."""
    number = duration(value)
    if not isinstance(number, (int, float)) or isinstance(number, bool):
        raise ValueError(f"{value!r} is not a duration (e.g. 30s, 2m, 1h, 0.5)")
    if not 0 < number <= 86400:
        raise ValueError(f"{value!r}: a duration is more than 0 and at most 24h")
    return number


def percent_steps(value: str | list[int]) -> tuple[int, ...]:
    """Canary steps: percentages of requests for the new colour, rising, 1 to 100, e.g.
    "10,50,100" or [10, 50, 100]; 100 is added when the last step is not 100."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        steps = [int(str(p).strip().rstrip("%")) for p in parts]
    except ValueError:
        raise ValueError(f"{value!r}: steps are whole percentages, e.g. 10,50,100") from None
    if not steps or any(not 1 <= s <= 100 for s in steps) or steps != sorted(set(steps)):
        raise ValueError(f"{value!r}: steps rise from 1 to 100, each once, e.g. 10,50,100")
    return tuple(steps if steps[-1] == 100 else [*steps, 100])


def check_version(version: str) -> str:
    if not VERSION_RE.match(version):
        raise ValueError(
            f"version {version!r} must match [0-9A-Za-z][0-9A-Za-z._+-]{{0,63}}"
        )
    return version


def placeholders_in(value: str) -> set[str]:
    """The placeholder names in ``value``; raises ValueError on a malformed one."""
    names: set[str] = set()
    for _, field, spec, conv in string.Formatter().parse(value):
        if field is None:
            continue
        if not field.isidentifier() or spec or conv:
            raise ValueError(f"malformed placeholder {{{field}}}; use {{{{ and }}}} for braces")
        names.add(field)
    return names


def render(value: str, **context: object) -> str:
    """Fill the placeholders of a config string."""
    return value.format(**context)
