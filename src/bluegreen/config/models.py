"""The models of ``bluegreen.toml``: validated, frozen, each key with its default and
the description `bluegreen docs` prints (see ``reference``). Loading and the checks
that span keys (placeholders) are in ``config``; the plain values in ``values``; the
proxy kinds in ``proxy_settings``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from bluegreen.errors import ConfigError
from bluegreen.config.proxies import (PROXY_SETTINGS, HAProxySettings, NginxSettings, P,
                                      ProxySettings)
from bluegreen.values import (APP_PLACEHOLDERS, APP_RE, BUILD_PLACEHOLDERS, ENV_KEY_RE,
                              SLOT_PLACEHOLDERS, VERSION_RE, Colour, Model as _Model,
                              Port, PositiveSeconds, Seconds, check_version, duration,
                              key as _key, parse_listen, percent_steps, placeholders_in, render, rendered_word,
                              seconds, status_ranges)

__all__ = ["APP_PLACEHOLDERS", "APP_RE", "BUILD_PLACEHOLDERS", "ENV_KEY_RE", "PROXY_SETTINGS",
           "SLOT_PLACEHOLDERS", "VERSION_RE", "Colour", "Config", "HAProxySettings",
           "HostConfig", "NginxSettings", "ProxySettings", "check_version", "parse_listen",
           "placeholders_in", "render", "status_ranges"]


class Release(_Model):
    """What is shipped: the version, how it is built, the artifact."""

    version: str | None = _key(None, "the version; or `version_command`; `deploy --version` "
                               "overrides both. Must match `[0-9A-Za-z][0-9A-Za-z._+-]{0,63}`")
    version_command: str | None = _key(None, "a local shell command printing the version "
                                       "(stdout trimmed)")
    build: str | None = _key(None, "local shell command run by `build` and `deploy` (not with "
                             "`--skip-build` or `--artifact`), in the config file's directory")
    artifact: str | None = _key(None, "the `.tar.gz` to ship, unpacked as the release dir. "
                                "Absolute paths, `..` members, links pointing outside and "
                                "device files are refused")
    keep: int = _key(5, "releases kept per host after a deploy; the blue and green slots' "
                     "releases are never pruned", ge=1, le=1000)
    prepare: str | None = _key(None, "a command run on each host in the new release dir after "
                               "it is unpacked and before it starts, with the slot's env (e.g. "
                               "a virtualenv from a wheelhouse in the artifact, `npm ci`); its "
                               "failure means nothing is started or switched (exit 1); skipped "
                               "when that release was prepared before")

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


class Secret(_Model):
    """`[run.secrets] NAME = { env = "VAR" }` or `{ command = "..." }`: a value resolved on
    this machine at deploy time, never written here, only into the host's 0600 env file."""

    env: str | None = _key(None, "take it from this variable of bluegreen's environment "
                           "(e.g. set by CI)")
    command: str | None = _key(None, "take it from this local shell command's output (its "
                               "last newline dropped), e.g. `op read op://prod/db/password`")

    @model_validator(mode="after")
    def _one_source(self) -> Secret:
        if (self.env is None) == (self.command is None):
            raise ValueError("set exactly one of env or command")
        if self.env is not None and not ENV_KEY_RE.match(self.env):
            raise ValueError(f"env: {self.env!r} is not a valid variable name")
        return self


class Run(_Model):
    """How a slot runs the app: its command, health check, timeouts and environment."""

    start: str | None = _key(None, "a command that starts the app in the background and "
                             "returns (`bin/app daemon`); with `stop`")
    stop: str | None = _key(None, "stops what `start` started; without it the port's listener "
                            "gets SIGTERM, then SIGKILL after `stop_timeout`")
    command: str | None = _key(None, "instead of `start`: a foreground command, detached in a "
                               "session of its own (`setsid`), pid in `slots/<colour>/pid`, output "
                               "in `slots/<colour>/log`; stopped by SIGTERM to the session, then "
                               "SIGKILL after `stop_timeout`. Prefix it with `exec`")
    cwd: str = _key("{release_dir}", "where slot commands run")
    health_path: str = _key("/health", "`GET http://{bind}:{port}{health_path}` must answer 2xx, "
                            "asked from the host itself (through the SSH connection)")
    health_timeout: PositiveSeconds = _key(30, "seconds for a new release to become healthy")
    health_host: str | None = _key(None, "the `Host` header of health requests, for apps that "
                                   "check it (Django's ALLOWED_HOSTS); default: the first name "
                                   "of `proxy.server_name`")
    health_status: str = _key("200-299", "the status codes that count as healthy: codes and "
                              "ranges, e.g. `\"200-299,301\"`")
    health_interval: Annotated[float, BeforeValidator(duration), Field(ge=0.01, le=60)] = _key(
        0.1, "seconds between health requests while a new release starts")
    stop_timeout: PositiveSeconds = _key(30, "seconds for a stopped process to exit before "
                                         "SIGKILL")
    drain_timeout: Seconds = _key(
        30, "seconds to wait until no connection is open to an idle slot before it is stopped")
    migrate: str | None = _key(None, "run once, on the first host, after the new slot is healthy "
                               "and before the switch; its failure means no switch (exit 1)")
    console: str | None = _key(None, "what `bluegreen console` runs in a pty in the slot's env "
                               "(e.g. `bin/myapp remote`)")
    env_file: str | None = _key(None, "local dotenv file (`KEY=VALUE`, never run by a shell), "
                                "uploaded to `shared/.env` mode 0600; its values are masked in "
                                "everything bluegreen prints")
    env: dict[str, str] = _key({}, "extra variables for slot commands (placeholders allowed)")
    secrets: dict[str, Secret] = _key({}, "`[run.secrets]`: `NAME = { env = \"VAR\" }` or "
                                      "`NAME = { command = \"...\" }`, resolved locally at "
                                      "deploy time, uploaded only into the 0600 env file "
                                      "with the env_file's values, masked in all output")
    supervisor: Literal["auto", "systemd", "process"] = _key(
        "auto", "what runs the slots: `systemd` (a unit per colour, enabled, so slots come "
        "back after a reboot; needs `command`), `process` (bluegreen's own detached "
        "process, or the app's `start`/`stop`), or `auto`: systemd where the host runs it "
        "and `command` is set, else process")
    unit_template: str | None = _key(None, "your own Jinja2 template for the systemd unit "
                                     "(`bluegreen-{app}@.service`; variables: `app`, "
                                     "`unit_prefix`, `slots_dir`, `deploy_to`, `stop_timeout`, "
                                     "`user`)")

    @field_validator("health_path")
    @classmethod
    def _health_path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in " \r\n"):
            raise ValueError("must start with / and contain no spaces")
        return v

    @field_validator("health_status")
    @classmethod
    def _health_status(cls, v: str) -> str:
        status_ranges(v)
        return v

    @field_validator("health_host")
    @classmethod
    def _health_host(cls, v: str | None) -> str | None:
        if v is not None and not re.match(r"^[A-Za-z0-9.-]+(:\d{1,5})?$", v):
            raise ValueError("must be a host name, optionally with :port")
        return v

    @field_validator("env", "secrets")
    @classmethod
    def _env_keys(cls, v: dict[str, Any]) -> dict[str, Any]:
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
        if self.supervisor == "systemd" and self.command is None:
            raise ValueError("run.supervisor = \"systemd\" needs run.command (the app's "
                             "foreground command, e.g. `bin/myapp start` for an Elixir "
                             "release) instead of run.start")
        return self


class Slots(_Model):
    """The two slots' ports and the address they listen on."""

    blue: Port = _key(4000, "the blue slot's port")
    green: Port = _key(5000, "the green slot's port (must differ from blue's)")
    bind: str = _key("127.0.0.1", "the address the slots listen on (`{bind}`, `BLUEGREEN_BIND`) "
                     "and where health checks go; behind load balancers `\"{private_address}\"`")

    @field_validator("bind")
    @classmethod
    def _bind(cls, v: str) -> str:
        """In the proxies' upstreams (`server <bind>:<port>;`), as it is."""
        return rendered_word(v, forbidden=";{}#'\" ")

    @model_validator(mode="after")
    def _distinct(self) -> Slots:
        if self.blue == self.green:
            raise ValueError("blue and green must use different ports")
        return self

    def port(self, colour: Colour) -> int:
        return self.blue if colour is Colour.BLUE else self.green


class HostConfig(_Model):
    """A server (`[[hosts]]`, or `[[load_balancers]]`) and how to reach it."""

    address: str = _key(..., "`local` (this machine, no SSH) or `[user@]host`")
    name: str | None = _key(None, "used by `--host NAME`; must be unique (default: the address)")
    port: Port | None = _key(None, "the SSH port of the host (default: `Port` for it in "
                             "~/.ssh/config, else 22)")
    deploy_to: str = _key("/srv/{app}", "absolute path of the layout on the host")
    identity_file: str | None = _key(None, "private key; else ssh-agent and `~/.ssh/config`")
    known_hosts: str | None = _key(None, "host keys are always verified; an unknown or changed "
                                   "key is exit 3 (default: `~/.ssh/known_hosts`)")
    private_address: str | None = _key(None, "where load balancers reach this host's slots "
                                       "(default: the host part of `address`)")
    sudo: bool = _key(False, "the SSH user is not root: run what needs root (the systemd "
                      "unit, `systemctl` on the app's units) through `sudo -n`")

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
        return rendered_word(v, forbidden="")  # in the unit's ExecStart

    @field_validator("name", "private_address")
    @classmethod
    def _in_proxy_config(cls, v: str | None) -> str | None:
        """In the proxies' upstreams and HAProxy's server names, as they are."""
        return None if v is None else rendered_word(v, forbidden=";{}#'\" ")

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
    """How a deploy spreads over many hosts."""

    boot_limit: int | None = _key(None, "at most this many hosts stop and start their slot at "
                                  "once during a deploy (default: all)", ge=1, le=10000)


class Canary(_Model):
    """`deploy --canary` and `promote --canary`: the new colour gets a share of requests,
    judged on the proxy's own numbers against the old colour at each step; a bad verdict
    sends everything back to the old colour (`bluegreen docs canary`)."""

    steps: str = _key("10,50,100", "the new colour's share of requests at each step, in "
                      "percent, rising (100 is added when missing); `--canary` overrides it")
    step: str = _key("30s", "how long each step is judged before the next (`30s`, `2m`); "
                     "`--step` overrides it")
    max_error_rate: Annotated[float, Field(ge=0, le=1)] = _key(
        0.01, "bad when the new colour's share of failed requests (5xx, and connections the "
        "proxy could not make) is more than this above the old colour's, over the same window")
    max_latency_ratio: Annotated[float, Field(ge=1, le=1000)] = _key(
        2.0, "bad when the new colour's response time (nginx: p99; HAProxy: its average) is "
        "more than this times the old colour's (differences under 10 ms are not judged)")
    min_requests: int = _key(100, "requests the new colour must serve in a step before a "
                             "verdict; a step waits up to 3 times `step` for them, then the "
                             "canary is aborted (not enough traffic to judge)", ge=0, le=10**9)
    sticky: bool = _key(True, "a client keeps the colour it was given during the canary "
                        "(a cookie the proxy sets); `--no-sticky` for plain weights")

    @field_validator("steps")
    @classmethod
    def _steps(cls, v: str) -> str:
        percent_steps(v)
        return v

    @field_validator("step")
    @classmethod
    def _step(cls, v: str) -> str:
        seconds(v)
        return v

    @property
    def step_seconds(self) -> float:
        return seconds(self.step)

    @property
    def percents(self) -> tuple[int, ...]:
        return percent_steps(self.steps)


class Hooks(_Model):
    """Local shell commands run around deploy, promote and rollback (like Kamal's hooks).
    A failing pre_* hook aborts before anything changes; a failing post_* hook is reported."""

    pre_deploy: str | None = _key(None, "in `deploy`, hosts locked and target colour known, "
                                  "before anything is uploaded")
    post_deploy: str | None = _key(None, "after `deploy` (after `post_promote`)")
    pre_promote: str | None = _key(None, "in `deploy` and `promote`, every target healthy and "
                                   "every proxy ready, just before the switch")
    post_promote: str | None = _key(None, "after `promote`, or a deploy that promoted")
    post_rollback: str | None = _key(None, "after `rollback`")


class Config(_Model):
    """The whole `bluegreen.toml`."""

    app: Annotated[str, Field(pattern=APP_RE)] = _key(..., "the app's name: "
                                                      "`[a-z][a-z0-9_-]{0,39}`")
    release: Release = Field(default_factory=lambda: Release())
    run: Run
    slots: Slots = Field(default_factory=lambda: Slots())
    proxy: ProxySettings = Field(default_factory=lambda: NginxSettings())
    hooks: Hooks = Field(default_factory=lambda: Hooks())
    deploy: Deploy = Field(default_factory=lambda: Deploy())
    canary: Canary = Field(default_factory=lambda: Canary())
    # Second topology: these hosts run the proxy, with every app host's slot in the
    # upstream; app hosts then run no proxy (deploy_to is unused here).
    load_balancers: list[HostConfig] = _key([], "hosts running the proxy in front of the app "
                                            "hosts (same keys as `hosts`)")
    hosts: list[HostConfig] = Field(min_length=1)
    # Directory of the config file; relative local paths are resolved against it.
    base_dir: Path = Field(default=Path("."), exclude=True)

    @model_validator(mode="before")
    @classmethod
    def _default_kind(cls, data: Any) -> Any:
        """`proxy.kind` may be left out (nginx); the union needs it to pick the model."""
        if isinstance(data, dict) and isinstance(data.get("proxy"), dict) \
                and "kind" not in data["proxy"]:
            data = {**data, "proxy": {**data["proxy"], "kind": "nginx"}}
        return data

    @model_validator(mode="before")
    @classmethod
    def _key_paths(cls, data: Any) -> Any:
        """Relative `identity_file`/`known_hosts` are relative to the config file's
        directory (after `~` expansion), not to wherever bluegreen is run from."""
        if not isinstance(data, dict) or "base_dir" not in data:
            return data
        base = Path(data["base_dir"])

        def resolve(entry: Any) -> Any:
            if not isinstance(entry, dict):
                return entry
            out = dict(entry)
            for key in ("identity_file", "known_hosts"):
                if isinstance(out.get(key), str) and out[key]:
                    path = Path(out[key]).expanduser()
                    out[key] = str(path if path.is_absolute() else base / path)
            return out

        for group in ("hosts", "load_balancers"):
            if isinstance(data.get(group), list):
                data = {**data, group: [resolve(e) for e in data[group]]}
        return data

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

    def proxy_of(self, model: type[P]) -> P:
        """The proxy settings as the kind ``model`` (a proxy kind's own keys)."""
        if not isinstance(self.proxy, model):
            raise ConfigError(f"proxy.kind is {self.proxy.kind!r}, not the kind of "
                              f"{model.__name__}")
        return self.proxy

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
