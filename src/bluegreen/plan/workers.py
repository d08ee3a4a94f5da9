"""Readers of the running nginx's workers: the user they run as and the first directory
on a path they cannot traverse (the maintenance page is tested by them, per request)."""

from __future__ import annotations

from pathlib import PurePosixPath

from bluegreen.config import Config, parse_listen
from bluegreen.plan.files import Argv, reading, sh
from bluegreen.plan.nginx import MASTERS

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
