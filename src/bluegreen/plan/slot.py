"""Builders for starting, stopping and probing a slot's process."""

from __future__ import annotations

import json
import math
import re
import shlex
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from bluegreen.config import Colour, Config, render
from bluegreen.plan.files import Argv, reading, sh
from bluegreen.plan.layout import Layout


@dataclass(frozen=True)
class SlotState:
    """What ``slots/<colour>/state.json`` records about the release a slot runs."""

    release: str
    version: str
    mode: str  # the supervisor that started it (supervisors.KINDS)
    pid: int | None  # command: the session id; start: the listener pid once healthy
    sid: int | None  # session id of the listener, to recognise the slot's own processes
    cwd: str
    status: str  # starting | running | failed | stopped
    started: str

    def to_json(self) -> str:
        return json.dumps(self.__dict__, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> SlotState | None:
        try:
            data = json.loads(text)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (ValueError, KeyError, TypeError):
            return None

    def replace(self, **changes: Any) -> SlotState:
        return SlotState(**{**self.__dict__, **changes})


@dataclass(frozen=True)
class Slot:
    """One colour on one host, with the release it runs (or is about to run)."""

    colour: Colour
    port: int
    layout: Layout
    release_id: str
    version: str

    @property
    def release_dir(self) -> PurePosixPath:
        return self.layout.release(self.release_id)

    @property
    def dir(self) -> PurePosixPath:
        return self.layout.slot(self.colour)

    bind: str = "127.0.0.1"

    def placeholders(self, cfg: Config) -> dict[str, object]:
        return {
            "bind": self.bind,
            "app": cfg.app,
            "color": self.colour.value,
            "port": self.port,
            "version": self.version,
            "release_dir": str(self.release_dir),
            "slot_dir": str(self.dir),
            "deploy_to": str(self.layout.root),
        }

    def render(self, cfg: Config, value: str) -> str:
        return render(value, **self.placeholders(cfg))

    def cwd(self, cfg: Config) -> str:
        return self.render(cfg, cfg.run.cwd)


def slot_env(cfg: Config, slot: Slot, secrets: dict[str, str]) -> dict[str, str]:
    """Every variable a slot command gets, in SPEC order (later wins)."""
    env = {
        "PORT": str(slot.port),
        "BLUEGREEN_COLOR": slot.colour.value,
        "BLUEGREEN_VERSION": slot.version,
        "BLUEGREEN_RELEASE_DIR": str(slot.release_dir),
        "BLUEGREEN_BIND": slot.bind,
    }
    env.update(secrets)
    env.update({k: slot.render(cfg, v) for k, v in cfg.run.env.items()})
    return env


# The variables every slot gets that are not secrets (`slot_env`'s first ones).
BASE_ENV = ("PORT", "BLUEGREEN_COLOR", "BLUEGREEN_VERSION", "BLUEGREEN_RELEASE_DIR",
            "BLUEGREEN_BIND")


@reading
def given_envs(layout: Layout) -> Argv:
    """Print the env files the host's slots were given (and the shared one), one after the
    other: the secrets a slot's log may hold, also ones rotated since."""
    return sh('for f; do if [ -f "$f" ]; then cat "$f"; echo; fi; done',
              layout.shared_env, *[layout.slot_env(c) for c in Colour])


def given_secrets(cfg: Config, text: str) -> list[str]:
    """The secret values in env files (``export KEY='value'``, as `env_script` writes):
    every variable's but the slot's own (`BASE_ENV`) and `[run.env]`'s."""
    try:
        words = shlex.split(text)
    except ValueError:  # a file cut short: its whole lines
        words = [w for line in text.splitlines() for w in _words(line)]
    plain = set(BASE_ENV) | set(cfg.run.env)
    values = []
    for word in words:
        key, eq, value = word.partition("=")
        if eq and key not in plain and key != "export":
            values.append(value)
    return values


def _words(line: str) -> list[str]:
    try:
        return shlex.split(line)
    except ValueError:
        return []


def env_script(env: dict[str, str]) -> str:
    """The slot's env file: one ``export KEY='value'`` per line, every value quoted,
    so sourcing it never runs anything that a value contains."""
    return "".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items())


def run_in_slot(cwd: str, env_file: PurePosixPath, command: str, log: PurePosixPath) -> Argv:
    """Run a slot command (start, stop, migrate) in the slot's env; output goes to its log."""
    return sh(
        'cd "$1" && . "$2" && exec sh -c "$3" >> "$4" 2>&1 < /dev/null',
        cwd,
        env_file,
        command,
        log,
    )


def ready_slot(dirs: list[PurePosixPath], env_file: PurePosixPath, state_file: PurePosixPath,
               state_json: str, log: PurePosixPath, release_id: str, time: str) -> Argv:
    """One round trip before a start: the slot's dirs, its env file from stdin (0600,
    atomically: it holds secrets), its state (an argument: no secret in it), and the
    log line that says a release starts here."""
    return sh('env="$1"; state="$2"; json="$3"; log="$4"; rid="$5"; at="$6"; shift 6\n'
              'mkdir -p -- "$@" || exit 1\n'
              '(umask 077; cat > "$env.bluegreen-tmp") && chmod 0600 "$env.bluegreen-tmp" '
              '&& mv -f "$env.bluegreen-tmp" "$env" || exit 1\n'
              '(umask 077; printf "%s" "$json" > "$state.bluegreen-tmp") '
              '&& chmod 0640 "$state.bluegreen-tmp" && mv -f "$state.bluegreen-tmp" "$state" '
              '|| exit 1\n'
              'echo "--- bluegreen: starting $rid ($at) ---" >> "$log"\n',
              env_file, state_file, state_json, log, release_id, time, *dirs)


def slot_command(cwd: str, env_file: PurePosixPath, command: str) -> Argv:
    """Run a command (migrate, console) in the slot's env, its output and input left to
    the caller."""
    return sh('cd "$1" && . "$2" && exec sh -c "$3"', cwd, env_file, command)


@reading
def logs(files: list[PurePosixPath], release_tmp: str | None, lines: int, follow: bool) -> Argv:
    """Tail the slot's log files, plus the newest Erlang-style log under ``release_tmp``
    (``$RELEASE_TMP/log/erlang.log.N``, where a ``daemon`` release writes its output)."""
    return sh(
        'n="$1"; follow="$2"; tmp="$3"; shift 3\n'
        'if [ -n "$tmp" ]; then rel=$(ls -t "$tmp"/log/erlang.log.* 2>/dev/null | head -n 1); '
        'if [ -n "$rel" ]; then set -- "$@" "$rel"; fi; fi\n'
        'found=""; for f in "$@"; do if [ -e "$f" ]; then found=1; fi; done\n'
        'if [ -z "$found" ]; then echo "(no log yet)"; exit 0; fi\n'
        'exec tail -n "$n" ${follow:+-F} "$@"\n',
        str(lines), "1" if follow else "", release_tmp or "", *[str(f) for f in files],
    )


def spawn(cwd: str, env_file: PurePosixPath, command: str, log: PurePosixPath,
          pid_file: PurePosixPath) -> Argv:
    """Start a foreground command detached, in a session of its own; prints its pid.

    In a non-interactive sh a background job shares the shell's process group, so
    setsid(1) need not fork: ``$!`` is the session leader, and so the process group
    every child of the app inherits."""
    return sh(
        'cd "$1" && . "$2" && { setsid sh -c "$3" >> "$4" 2>&1 < /dev/null & '
        'echo "$!" > "$5"; echo "$!"; }',
        cwd,
        env_file,
        command,
        log,
        pid_file,
    )


def signal_session(sig: str, sid: int) -> Argv:
    """Send ``sig`` to every process of the session (= process group) ``sid``."""
    return sh('kill -"$1" -"$2" 2>/dev/null; exit 0', sig, str(sid))


def signal_pids(sig: str, pids: list[int]) -> Argv:
    return sh('s="$1"; shift; kill -"$s" "$@" 2>/dev/null; exit 0', sig, *[str(p) for p in pids])


@reading
def probe(port: int, sid: int | PurePosixPath | None, pids: list[int] | None = None) -> Argv:
    """Who listens on ``port`` (pid and session), how many connections are established
    to it, whether session ``sid`` (or the one a file names: a pid file written in the same
    round trip) still has a live (non-zombie) process, and which of ``pids`` are alive."""
    return sh(PROBE, str(port), "" if sid is None else f"@{sid}"
              if isinstance(sid, PurePosixPath) else str(sid), *[str(p) for p in pids or []])


def wait_gone(port: int, sid: int | None, pids: list[int], timeout: float) -> Argv:
    """One round trip: `probe` every 0.1 s on the host until nothing listens on ``port``
    and neither session ``sid`` nor ``pids`` has a live process (exit 0), or ``timeout``
    seconds pass (exit 1)."""
    return sh('probe() {\n' + PROBE + '}\n'
              't="$1"; shift; end=$(( $(date +%s) + t ))\n'
              'while probe "$@" | grep -qE "^(listen |session alive|pid )"; do\n'
              '  [ "$(date +%s)" -lt "$end" ] || exit 1\n'
              '  sleep 0.1\n'
              'done\n',
              str(math.ceil(timeout)), str(port), "" if sid is None else str(sid),
              *[str(p) for p in pids])


PROBE = (
        'port="$1"; sid="$2"; shift 2\n'
        'case "$sid" in @*) sid=$(cat "${sid#@}" 2>/dev/null);; esac\n'
        'for p in $(ss -Htlnp "sport = :$port" | grep -o "pid=[0-9]*" | cut -d= -f2 | sort -u); do\n'
        # The listener's session, and the slot bluegreen started it for (from its
        # environment), so a slot's own process is recognised even without a pid on record.
        '  env=$(tr "\\0" "\\n" < "/proc/$p/environ" 2>/dev/null | '
        'grep -E "^BLUEGREEN_(COLOR|RELEASE_DIR)=" | sort | cut -d= -f2- | tr "\\n" " ")\n'
        '  echo "listen $p $(ps -o sid= -p "$p" | tr -d " ") $env"\n'
        "done\n"
        'echo "established $(ss -Htn state established "( sport = :$port )" | wc -l)"\n'
        'if [ -n "$sid" ] && ps -o stat= --sid "$sid" | grep -qv "^Z"; then echo "session alive"; fi\n'
        'for p in "$@"; do\n'
        '  if ps -o stat= -p "$p" | grep -qv "^Z"; then echo "pid $p"; fi\n'
        "done\n")


@dataclass(frozen=True)
class Listener:
    sid: int | None
    colour: str | None = None  # BLUEGREEN_COLOR in its environment
    release_dir: str | None = None  # BLUEGREEN_RELEASE_DIR in its environment


@dataclass(frozen=True)
class Probe:
    listeners: dict[int, Listener] = field(default_factory=dict)  # by pid
    established: int = 0
    session_alive: bool = False
    alive_pids: frozenset[int] = frozenset()

    @property
    def listening(self) -> bool:
        return bool(self.listeners)


def parse_probe(output: str) -> Probe:
    listeners: dict[int, Listener] = {}
    established = 0
    alive = False
    pids: set[int] = set()
    for line in output.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "listen" and len(parts) >= 2 and parts[1].isdigit():
            sid = int(parts[2]) if len(parts) > 2 and parts[2].isdigit() else None
            # env values, sorted by name: BLUEGREEN_COLOR, then BLUEGREEN_RELEASE_DIR
            env = parts[3:] if sid is not None else parts[2:]
            listeners[int(parts[1])] = Listener(sid, env[0] if env else None,
                                                env[1] if len(env) > 1 else None)
        elif parts[0] == "established" and len(parts) == 2 and parts[1].isdigit():
            established = int(parts[1])
        elif line.strip() == "session alive":
            alive = True
        elif parts[0] == "pid" and len(parts) == 2 and parts[1].isdigit():
            pids.add(int(parts[1]))
    return Probe(listeners, established, alive, frozenset(pids))


def parse_pid(output: str) -> int:
    match = re.search(r"^(\d+)\s*$", output.strip(), re.M)
    if not match:
        raise ValueError(f"no pid in {output!r}")
    return int(match.group(1))
