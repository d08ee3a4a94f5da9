"""Load ``bluegreen.toml`` into validated, frozen models.

Every error names the key path (``hosts[1].port: ...``) and becomes exit code 2.
Nothing here touches a host.
"""

from __future__ import annotations

import enum
import re
import string
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bluegreen.errors import ConfigError

APP_RE = r"^[a-z][a-z0-9_-]{0,39}$"
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z._+-]{0,63}$")
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DEFAULT_CONFIG = "bluegreen.toml"

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


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


PositiveSeconds = Annotated[float, Field(gt=0, le=86400)]
Port = Annotated[int, Field(ge=1, le=65535)]


class Release(_Model):
    version: str | None = None
    version_command: str | None = None
    build: str | None = None
    artifact: str | None = None
    keep: int = Field(5, ge=1, le=1000)

    @field_validator("version")
    @classmethod
    def _version(cls, v: str | None) -> str | None:
        if v is not None:
            check_version(v)
        return v

    @model_validator(mode="after")
    def _one_version_source(self) -> Release:
        if self.version is not None and self.version_command is not None:
            raise ValueError("set either version or version_command, not both")
        return self


class Run(_Model):
    start: str | None = None
    stop: str | None = None
    command: str | None = None
    cwd: str = "{release_dir}"
    health_path: str = "/health"
    health_timeout: PositiveSeconds = 30
    stop_timeout: PositiveSeconds = 30
    drain_timeout: Annotated[float, Field(ge=0, le=86400)] = 30
    migrate: str | None = None
    console: str | None = None
    env_file: str | None = None
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in " \r\n"):
            raise ValueError("must start with / and contain no spaces")
        return v

    @field_validator("env")
    @classmethod
    def _env_keys(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not ENV_KEY_RE.match(key):
                raise ValueError(f"{key!r} is not a valid environment variable name")
        return v

    @model_validator(mode="after")
    def _one_way_to_run(self) -> Run:
        if (self.start is None) == (self.command is None):
            raise ValueError("set exactly one of run.start (with run.stop) or run.command")
        if self.command is not None and self.stop is not None:
            raise ValueError("run.stop goes with run.start; run.command is stopped by signal")
        return self


class Slots(_Model):
    blue: Port = 4000
    green: Port = 5000
    # The address the slots listen on, asked for health checks. Behind load balancers,
    # "{private_address}" (each host's hosts[].private_address) so the balancers reach it.
    bind: str = "127.0.0.1"

    @model_validator(mode="after")
    def _distinct(self) -> Slots:
        if self.blue == self.green:
            raise ValueError("blue and green must use different ports")
        return self

    def port(self, colour: Colour) -> int:
        return self.blue if colour is Colour.BLUE else self.green


NGINX_ONLY = ("sites_available", "sites_enabled", "site")
HAPROXY_ONLY = ("config_file", "map_file", "socket")
PROXY_COMMANDS = {
    "nginx": {"test": "nginx -t", "reload": "nginx -s reload"},
    "haproxy": {"test": "haproxy -c -q -f /etc/haproxy/haproxy.cfg -f /etc/haproxy/conf.d",
                "reload": "systemctl reload haproxy"},
}


class Proxy(_Model):
    kind: Literal["nginx", "haproxy"] = "nginx"
    server_name: str = "localhost"
    listen: str = "80"
    # nginx kind: a site file per colour and the live link
    sites_available: str = "/etc/nginx/sites-available"
    sites_enabled: str = "/etc/nginx/sites-enabled"
    site: str = "{app}"
    # haproxy kind: one config file with a backend per colour, a map file holding the
    # live colour (read by HAProxy at start), and the runtime API socket the switch uses
    config_file: str = "/etc/haproxy/conf.d/{app}.cfg"
    map_file: str = "/etc/haproxy/conf.d/{app}.map"
    socket: str = "/run/haproxy/admin.sock"
    test: str = ""  # default per kind: PROXY_COMMANDS
    reload: str = ""
    sudo: bool = False
    template: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _kind_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            kind = data.get("kind", "nginx")
            for key, value in PROXY_COMMANDS.get(kind, {}).items():
                data = {**data, key: data.get(key) or value}
        return data

    @model_validator(mode="after")
    def _keys_of_kind(self) -> Proxy:
        other = HAPROXY_ONLY if self.kind == "nginx" else NGINX_ONLY
        given = sorted(self.model_fields_set & set(other))
        if given:
            raise ValueError(f"{given[0]} is not used by kind = {self.kind!r}")
        if self.kind == "haproxy":
            parts = self.listen.split()
            if len(parts) != 1:
                raise ValueError(f"listen: {self.listen!r}: with kind = \"haproxy\" use "
                                 "[address:]port only")
            for key in ("config_file", "map_file"):
                if not getattr(self, key).startswith("/") or re.search(r"\s", getattr(self, key)):
                    raise ValueError(f"{key}: must be an absolute path without spaces")
            if not (self.socket.startswith("/") or re.match(r"^[\w.-]+:\d{1,5}$", self.socket)):
                raise ValueError("socket: must be a unix socket path or address:port")
        return self

    @property
    def is_haproxy(self) -> bool:
        return self.kind == "haproxy"

    @field_validator("site")
    @classmethod
    def _site(cls, v: str) -> str:
        if "/" in v or v.startswith(".") or not v:
            raise ValueError("must be a plain file name (no '/', not starting with '.')")
        return v

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.*{}~^\\$-]+( [A-Za-z0-9_.*{}~^\\$-]+)*$", v):
            raise ValueError("must be nginx server names separated by single spaces")
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        parse_listen(v)
        return v


class HostConfig(_Model):
    address: str
    name: str | None = None
    port: Port = 22
    deploy_to: str = "/srv/{app}"
    identity_file: str | None = None
    known_hosts: str | None = None
    # Where load balancers reach this host's slots (default: the host part of address).
    private_address: str | None = None

    @field_validator("address")
    @classmethod
    def _address(cls, v: str) -> str:
        if v != "local" and not re.match(r"^([A-Za-z0-9._-]+@)?[A-Za-z0-9.:_-]+$", v):
            raise ValueError("must be 'local' or '[user@]host'")
        return v

    @field_validator("deploy_to")
    @classmethod
    def _deploy_to(cls, v: str) -> str:
        if not v.startswith("/") or v.rstrip("/") == "":
            raise ValueError("must be an absolute path other than /")
        return v

    @property
    def label(self) -> str:
        return self.name or self.address

    @property
    def reach_address(self) -> str:
        """The address other hosts use to reach this one's slots."""
        if self.private_address:
            return self.private_address
        return "127.0.0.1" if self.is_local else self.address.rpartition("@")[2]

    @property
    def is_local(self) -> bool:
        return self.address == "local"


class Deploy(_Model):
    boot_limit: int | None = Field(None, ge=1, le=10000)  # hosts starting at once (None: all)


class Hooks(_Model):
    """Local shell commands run around deploy, promote and rollback (like Kamal's hooks).
    A failing pre_* hook aborts before anything changes; a failing post_* hook is reported."""

    pre_deploy: str | None = None
    post_deploy: str | None = None
    pre_promote: str | None = None
    post_promote: str | None = None
    post_rollback: str | None = None


class Config(_Model):
    app: Annotated[str, Field(pattern=APP_RE)]
    release: Release = Field(default_factory=lambda: Release())
    run: Run
    slots: Slots = Field(default_factory=lambda: Slots())
    proxy: Proxy = Field(default_factory=lambda: Proxy())
    hooks: Hooks = Field(default_factory=lambda: Hooks())
    deploy: Deploy = Field(default_factory=lambda: Deploy())
    # Second topology: these hosts run the proxy, with every app host's slot in the
    # upstream; app hosts then run no proxy (deploy_to is unused here).
    load_balancers: list[HostConfig] = Field(default_factory=list)
    hosts: list[HostConfig] = Field(min_length=1)
    # Directory of the config file; relative local paths are resolved against it.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="after")
    def _unique_host_names(self) -> Config:
        seen: set[str] = set()
        for host in [*self.hosts, *self.load_balancers]:
            if host.label in seen:
                raise ValueError(f"two hosts are named {host.label!r}; give each a unique name")
            seen.add(host.label)
        return self

    @model_validator(mode="after")
    def _balancers_reach_slots(self) -> Config:
        if self.load_balancers:
            for host in self.hosts:
                if self.bind_address(host).startswith("127.") or host.is_local:
                    raise ValueError(
                        "slots.bind: behind load_balancers the slots must listen on an "
                        "address the balancers reach, e.g. \"{private_address}\", and every "
                        "host needs a network address (not \"local\")")
        return self

    def bind_address(self, host: HostConfig) -> str:
        """The address ``host``'s slots listen on (slots.bind, rendered for it)."""
        return render(self.slots.bind, app=self.app, private_address=host.reach_address)

    def local_path(self, value: str) -> Path:
        """A local path from the config, relative to the config file's directory."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def select_hosts(self, names: tuple[str, ...] | list[str]) -> list[HostConfig]:
        """The hosts named by ``--host`` (all when none is given)."""
        if not names:
            return list(self.hosts)
        known = {h.label: h for h in self.hosts}
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(
                f"--host {unknown[0]}: no such host; known: {', '.join(known)}"
            )
        return [known[n] for n in dict.fromkeys(names)]


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
    for key in ("start", "stop", "command", "cwd", "migrate", "console"):
        val = getattr(run, key)
        if val is not None:
            _check_placeholders(f"run.{key}", val, SLOT_PLACEHOLDERS)
    for env_key, env_val in run.env.items():
        _check_placeholders(f"run.env.{env_key}", env_val, SLOT_PLACEHOLDERS)
    if run.env_file is not None:
        _check_placeholders("run.env_file", run.env_file, APP_PLACEHOLDERS)
    for key in ("server_name", "sites_available", "sites_enabled", "site", "test", "reload",
                "config_file", "map_file", "socket"):
        _check_placeholders(f"proxy.{key}", getattr(proxy, key), APP_PLACEHOLDERS)
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
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    return f"{_key_path(loc)}: {msg}"


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
