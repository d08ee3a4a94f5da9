"""nginx's workers: whether a reload was applied (new workers came, the old ones stop
accepting), the user they run as and the first directory on a path they cannot traverse
(the maintenance page is tested by them, per request)."""

from __future__ import annotations

import shlex
from pathlib import PurePosixPath

from bluegreen.config import Config, parse_listen
from bluegreen.plan.files import Argv, reading, sh

# The masters of the nginx processes listening on the port ``$1`` (this nginx: another one
# on the machine that reloads is not ours), in ``$masters``: empty when they cannot be seen.
MASTERS = (
    'masters=""\n'
    'for p in $(ss -Htlnp "sport = :$1" 2>/dev/null | grep -o "pid=[0-9]*" | cut -d= -f2 '
    "| sort -u); do\n"
    '  [ "$(cat "/proc/$p/comm" 2>/dev/null)" = nginx ] || continue\n'
    '  pp=$(ps -o ppid= -p "$p" | tr -d " ")\n'
    '  if [ "$(cat "/proc/$pp/comm" 2>/dev/null)" = nginx ]; then masters="$masters $pp"; '
    'else masters="$masters $p"; fi\n'
    "done\n"
    'masters=$(echo $masters | tr " " "\\n" | sort -u)\n')

# `nginx -s reload` only signals the master, which exits 0 whatever then happens: when
# the new configuration cannot be applied (a `listen` port another process holds: `nginx
# -t` does not bind) the master logs `[emerg]` and keeps its workers, and every later
# reload fails the same way. So a reload counts once a worker from before it stops
# accepting (`WATCH`).
NOT_APPLIED = 95


def watched(reload: Argv, back: str, reload_failed: int) -> str:
    """The script's end: note this nginx's workers (the masters on the port ``$1``; when
    none listens there yet, on a port another site in ``$3``, the sites_enabled folder,
    listens on), reload (else ``back``), then run ``WATCH`` (``$2``) on them; ``back``
    puts the link back (ends in `; `), ``reload_failed``: the exit status when the reload
    command fails."""
    return ("for port in \"$1\" $(awk '$1 == \"listen\" {print $2}' \"$3\"/* 2>/dev/null | "
            "sed 's/;$//; s/.*://' | grep -x '[0-9][0-9]*' | sort -u); do\n"
            f"{MASTERS.replace(':$1', ':$port')}"
            '  [ -z "$masters" ] || break\n'
            "done\n"
            'old=""\n'
            "for m in $masters; do old=\"$old $m:$(pgrep -P \"$m\" -f "
            "'^nginx: worker process *$' | paste -sd, -)\"; done\n"
            "since=$(date '+%Y/%m/%d %H:%M:%S')\n"
            f"if ! {shlex.join(reload)}; then {back}exit {reload_failed}; fi\n"
            'python3 -c "$2" "$old" "$since"; rc=$?\n'
            f'if [ "$rc" = {NOT_APPLIED} ]; then {back}exit {NOT_APPLIED}; fi\n'
            'if [ "$rc" != 0 ]; then sleep 0.15; fi\n'
            "exit 0\n")


# nginx's master starts the new workers on a reload, sleeps 100 ms, and only then tells
# the old ones to stop accepting (they retitle themselves "... is shutting down" and close
# their listening sockets): until then both answer, so an answer of the new colour proves
# nothing about the next. Wait until each worker from before the reload of a master that
# took it has stopped accepting (up to 5 s more); where they cannot be seen, wait out
# nginx's 100 ms with room to spare. When no master took it within 5 s and an `[emerg]`
# line was logged since the reload (a bind() is retried for 2.5 s), or within 15 s (a
# big configuration loads slowly): NOT_APPLIED, with the first and the last `[emerg]` line
# since the reload in the error logs the masters hold open (and the usual one) on
# stderr. Arguments: "master:worker,worker master:..." and the time before the reload.
WATCH = f"""
import os, sys, time
old = {{}}
for item in sys.argv[1].split():
    master, _, pids = item.partition(":")
    old[master] = [p for p in pids.split(",") if p]
if not any(old.values()):
    time.sleep(0.15)
    sys.exit(0)
def serving(pid):
    try:
        with open("/proc/%s/cmdline" % pid, "rb") as f:
            title = f.read()
    except OSError:
        return False
    return bool(title) and b"shutting down" not in title
def emergencies():
    logs = {{"/var/log/nginx/error.log"}}
    for m in old:
        try:
            fds = os.listdir("/proc/%s/fd" % m)
        except OSError:
            continue
        for fd in fds:
            try:
                path = os.readlink("/proc/%s/fd/%s" % (m, fd))
            except OSError:
                continue
            if path.startswith("/") and os.path.isfile(path):
                logs.add(path)
    found = []
    for path in logs:
        try:
            with open(path, "rb") as f:
                f.seek(max(0, os.path.getsize(path) - 65536))
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        found += [l for l in text.splitlines() if "[emerg]" in l and l[:19] >= sys.argv[2]]
    return found
start = time.monotonic()
checks = [5.0, 15.0]
while True:
    took = [m for m, pids in old.items() if pids and not all(map(serving, pids))]
    if took:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(serving(p) for m in took for p in old[m]):
            time.sleep(0.005)
        sys.exit(0)
    if time.monotonic() - start >= checks[0]:
        found = emergencies()
        if found or len(checks) == 1:
            break
        checks.pop(0)
    time.sleep(0.005)
# nginx says why first ("bind() to ... failed"), then, last, "still could not bind()".
print(" / ".join(dict.fromkeys(found[:1] + found[-1:])), file=sys.stderr)
sys.exit({NOT_APPLIED})
"""

# Run as the SSH user with the workers' user name and the path: prints the first
# component (directory, or the file itself) that user may not traverse or read, by the
# mode bits (ACLs are not read). A component that does not exist ends the walk: setup
# creates it with the umask's modes.
_ACCESS = r"""
import grp, os, pwd, sys
name, path = sys.argv[1], sys.argv[2]
try:
    pw = pwd.getpwnam(name) if not name.isdigit() else pwd.getpwuid(int(name))
except KeyError:
    sys.exit(0)
if pw.pw_uid == 0:
    sys.exit(0)
gids = {pw.pw_gid} | {g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem}
parts = path.split("/")
for i in range(2, len(parts) + 1):
    p = "/".join(parts[:i])
    try:
        st = os.stat(p)
    except OSError:
        sys.exit(0)
    mode = (st.st_mode >> 6 if st.st_uid == pw.pw_uid
            else st.st_mode >> 3 if st.st_gid in gids else st.st_mode)
    if not mode & (1 if i < len(parts) else 4):
        print("blocked " + p)
        sys.exit(0)
"""


@reading
def access(cfg: Config, path: PurePosixPath) -> Argv:
    """Print ``user NAME``, the user this nginx's workers run as (this nginx: the master
    of the processes on ``proxy.listen``'s port; else any nginx's workers), and
    ``blocked DIR`` when that user may not reach ``path``. Nothing when no worker is
    seen."""
    _, port = parse_listen(cfg.proxy.listen)
    return sh(
        'path=$2\n'
        f"{MASTERS}"
        "pids=$(for m in $masters; do pgrep -P \"$m\" -f '^nginx: worker process'; done)\n"
        "[ -n \"$pids\" ] || pids=$(pgrep -f '^nginx: worker process')\n"
        'u=""\n'
        'for p in $pids; do u=$(ps -o user= -p "$p" | tr -d " "); [ -z "$u" ] || break; done\n'
        '[ -n "$u" ] || exit 0\n'
        'echo "user $u"\n'
        'python3 -c "$3" "$u" "$path"\n'
        "exit 0\n", str(port), path, _ACCESS)


def parse_access(output: str) -> tuple[str | None, str | None]:
    """The workers' user and the path they cannot reach (None: none seen / none)."""
    user = blocked = None
    for line in output.splitlines():
        key, _, value = line.partition(" ")
        if key == "user" and value:
            user = value.strip()
        elif key == "blocked" and value:
            blocked = value.strip()
    return user, blocked
