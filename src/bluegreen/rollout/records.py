"""The lock and the history on each host: an atomic ``mkdir`` lock that is never taken
over, and an append-only ``history.jsonl``."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from bluegreen.config import Colour
from bluegreen.errors import BlueGreenError, CommandFailed, Interrupted, LockHeld
from bluegreen.hosts.fleet import Node
from bluegreen.hosts import Result
from bluegreen.plan import history, lock
from bluegreen.plan.slot import SlotState
from bluegreen.rollout.artifact import Artifact
from bluegreen.rollout.slots import moment, now_iso

LOCK_POLL = 1.0  # seconds between two tries for a held lock (`--lock-wait`)


async def acquire(node: Node, info: lock.LockInfo) -> None:
    result = await node.run(lock.acquire(node.layout), input=info.to_json(), check=False)
    if result.exit_status == lock.HELD:
        _, holder = await read_lock(node)
        raise _held(node, holder)
    if result.exit_status == lock.NOT_SET_UP:
        raise BlueGreenError(f"{node.layout.root} does not exist: run `bluegreen setup` first",
                             host=node.name)
    if not result.ok:
        raise CommandFailed(f"cannot take the lock {node.layout.lock}: {result.stderr.strip()}",
                            host=node.name)


# Between who holds a lock and what to do about it (a waiting command prints the former).
_WHAT_TO_DO = "; "


def _held(node: Node, holder: lock.LockInfo | None) -> LockHeld:
    """The lock is held: by a run that may still be going on (wait for it, or --lock-wait),
    or by one that is gone (nothing to wait for: unlock)."""
    if may_still_run(holder):
        advice = ("wait for it (--lock-wait DURATION waits), or if no bluegreen command is "
                  "running, `bluegreen unlock --force` clears it")
    else:
        advice = "nothing will release it: `bluegreen unlock` clears it"
    return LockHeld(describe_holder(node, holder) + _WHAT_TO_DO + advice, host=node.name)


@asynccontextmanager
async def built_while_free(nodes: list[Node], art: Artifact | Callable[[], Artifact]
                           ) -> AsyncIterator[Artifact]:
    """``art``, or what it builds (locally) once no host's lock is held, read first: a
    build while another run holds one would overwrite the build directory and artifact
    that run is uploading. A held lock is exit 4 with nothing built; the lock is taken
    after, as always."""
    if callable(art):
        held = await asyncio.gather(*(read_lock(n) for n in nodes))
        for node, (is_held, holder) in zip(nodes, held):
            if is_held:
                raise _held(node, holder)
        art = await asyncio.to_thread(art)  # the connections keep answering meanwhile
    yield art


async def read_lock(node: Node) -> tuple[bool, lock.LockInfo | None]:
    """Whether the host is locked, and by whom (None when the holder is unreadable)."""
    result = await node.run(lock.read(node.layout))
    if not result.stdout.startswith("held"):
        return False, None
    return True, lock.LockInfo.from_json(result.stdout.removeprefix("held"))


def describe_holder(node: Node, holder: lock.LockInfo | None) -> str:
    if holder is None:
        return (f"{node.layout.lock} is held but names no holder (a run killed while taking "
                "it, or a full disk)")
    text = f"locked by {holder.describe()}"
    if holder.host == socket.gethostname() and not _pid_alive(holder.pid):
        text += f" (pid {holder.pid} is gone: that run died)"
    else:
        age = lock.age_seconds(holder.started)
        if age is not None and age > lock.STALE_AFTER:
            # A run on another machine cannot be checked from here; a lock this old
            # is most likely left by one that died.
            text += f" ({age / 3600:.1f} h ago: probably a run that died)"
    return text


def may_still_run(holder: lock.LockInfo | None) -> str | None:
    """Why the run holding a lock may still be running, or None when it cannot be: its pid
    is gone from this machine, or the lock is over an hour old. A run on another machine
    cannot be checked from here, so its fresh lock may be a run going on. A lock that
    names no holder is one a run died taking (or a full disk)."""
    if holder is None:
        return None
    age = lock.age_seconds(holder.started)
    if age is not None and age > lock.STALE_AFTER:
        return None
    if holder.host == socket.gethostname():
        return f"pid {holder.pid} still runs" if _pid_alive(holder.pid) else None
    return f"it runs on {holder.host}, where its pid cannot be checked from here"


async def release(node: Node) -> None:
    """Release the lock, with every step put off until now (they run first; the lock is
    released even when one fails, and that failure is raised after)."""
    if node.released:  # with the last step (``release_if_done``): send what is left
        await node.flush()
        return
    await node.finish(lock.release(node.layout))


def release_if_done(node: Node) -> None:
    """Release the lock with the next round trip, after its steps, if they all succeed:
    for the step that ends a command (a promote's verify), when nothing else is done on
    the host under the lock. Otherwise the lock stays, and ``release`` releases it."""
    def released(result: Result) -> None:
        node.released = result.ok  # else released at the end, as always

    node.if_done(lock.release(node.layout), then=released)


async def _acquire_all(nodes: list[Node], info: lock.LockInfo) -> None:
    """Take every host's lock, or none: the locks taken are released when one fails."""
    results = await asyncio.gather(*(acquire(n, info) for n in nodes), return_exceptions=True)
    taken = [n for n, r in zip(nodes, results) if not isinstance(r, BaseException)]
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        await asyncio.gather(*(release(n) for n in taken), return_exceptions=True)
        raise failures[0]


async def _acquire_waiting(nodes: list[Node], info: lock.LockInfo, wait: float,
                           again: Callable[[], None] | None) -> None:
    """Take every host's lock, polling while one is held, for at most ``wait`` seconds
    (`--lock-wait`); then exit 4 as without it. Between two tries no lock is kept (two
    runs waiting for each other's hosts would otherwise both time out). ``again``: called
    before each new try (what goes with the lock's round trip is announced anew)."""
    deadline = time.monotonic() + wait
    said: dict[str, str] = {}
    while True:
        try:
            await _acquire_all(nodes, info)
            return
        except LockHeld as held:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockHeld(f"still locked after waiting {_duration(wait)} (--lock-wait): "
                               f"{held.reason}", host=held.host) from None
            node = next((n for n in nodes if n.name == held.host), nodes[0])
            holder = held.reason.split(_WHAT_TO_DO)[0]
            if said.get(node.name) != holder:  # once per holder, not on every poll
                said[node.name] = holder
                node.say(f"waiting for the lock (up to {_duration(left)} more): {holder}")
            await asyncio.sleep(min(LOCK_POLL, left))
            if again is not None:
                again()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


@asynccontextmanager
async def locked(nodes: list[Node], user: str, command: str, *, wait: float = 0,
                 again: Callable[[], None] | None = None) -> AsyncIterator[None]:
    """Hold every host's lock for the body; a held lock is exit 4 and nothing is done
    (with ``wait``: once it has been held that many seconds, see ``_acquire_waiting``)."""
    info = lock.LockInfo(user=user, host=socket.gethostname(), pid=os.getpid(),
                         command=command, started=now_iso())
    if wait > 0:
        await _acquire_waiting(nodes, info, wait, again)
    else:
        await _acquire_all(nodes, info)
    try:
        yield
    except BaseException as exc:
        released = await asyncio.gather(*(release(n) for n in nodes), return_exceptions=True)
        for node, err in zip(nodes, released):  # the error in flight is the one raised
            if isinstance(err, BlueGreenError):
                node.warn(f"also: {err.reason}")
        if isinstance(exc, Interrupted):
            held = [n.name for n, err in zip(nodes, released) if err is not None]
            exc.reason += (f"; the lock is still held on {', '.join(held)} (`bluegreen "
                           "unlock` clears it)" if held else "; the lock is released")
        raise
    released = await asyncio.gather(*(release(n) for n in nodes), return_exceptions=True)
    errors = [e for e in released if isinstance(e, BaseException)]
    if errors:
        raise errors[0]


async def record(node: Node, event: str, colour: Colour | None, state: SlotState | None,
                 user: str, detail: str = "", *, if_done: bool = False,
                 release: tuple[str, str] | None = None) -> None:
    """Append one event to the host's history (secrets masked), with the next round trip
    (at the latest the lock's release): a failed append is a warning, as it always was.
    ``if_done``: after the next round trip's steps, if they all succeed (`Node.if_done`).
    ``release``: (release id, version) when no slot holds it (yet)."""
    release = (state.release, state.version) if state else release
    entry = history.entry(
        time=now_iso(), event=event, host=node.name, color=colour.value if colour else None,
        release=release[0] if release else None, version=release[1] if release else None,
        user=user, detail=node.out.mask(detail)[:2000],
    )
    if not if_done:
        node.later(history.append(node.layout), input=history.line(entry), keep_reads=True)
        return

    def appended(result: Result) -> None:
        if not result.ok:
            node.warn(f"appending to {node.layout.history} failed (exit {result.exit_status}): "
                      f"{(result.stderr.strip() or result.stdout.strip())[-300:]}")

    node.if_done(history.append(node.layout), input=history.line(entry), then=appended)


async def rolled_away(node: Node, colour: Colour, since: str) -> dict[str, Any] | None:
    """The newest ``rollback`` in the host's history that sent its traffic off ``colour``
    after ``since`` (when that colour's slot started the release it runs), or None."""
    start = moment(since)
    events, _ = history.parse((await node.run(history.read(node.layout))).stdout)
    for event in events[::-1]:
        when = moment(event.get("time"))
        if (event.get("event") == "rollback" and event.get("color") == colour.other.value
                and start is not None and when is not None and when > start):
            return event
    return None


async def interrupted(left: dict[Node, str | None], targets: dict[str, Colour], user: str,
                      what: str, switching: bool) -> Interrupted:
    """Record ``interrupted`` on every host (with the lock's release), and the error that
    says what was left on each."""
    before = "the switch had begun" if switching else "nothing was started there"
    for node, done in left.items():
        await record(node, "interrupted", targets.get(node.name), None, user, done or before)
    tail = ("interrupted during the switch: `bluegreen status` shows what the proxies answer; "
            "the next command finishes or undoes it" if switching
            else "live traffic was not touched")
    return Interrupted(f"{what} was interrupted: " + "; ".join(
        [*(f"[{n.name}] {done}" for n, done in left.items() if done), tail]))


async def record_failure(nodes: list[Node], user: str, err: BlueGreenError,
                         about: dict[str, tuple[Colour, tuple[str, str] | None]] | None = None
                         ) -> None:
    """Append a ``failed`` event on the app host that failed (on every one when the error
    names none of them, e.g. a load balancer); ``about``: per host, the colour and the
    (release, version) the command was about, when known."""
    targets = [n for n in nodes if err.host == n.name] or nodes
    what = about or {}
    await asyncio.gather(
        *(record(n, "failed", what[n.name][0] if n.name in what else None, None, user,
                 err.message.split("\n")[0], release=what[n.name][1] if n.name in what
                 else None) for n in targets),
        return_exceptions=True,
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (ended, not yet reaped by its parent, e.g. a warm process) is gone
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True
