"""Hooks, logs and migrate for a `run.command` app, local and over SSH."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Callable

import pytest

from bluegreen.demo.nginx import PrivateNginx
from conftest import BLUEGREEN, Project, app_pids, get, plain_result, run_cli

HOOK = 'echo "$BLUEGREEN_EVENT color=$BLUEGREEN_COLOR version=$BLUEGREEN_VERSION hosts=$BLUEGREEN_HOSTS app=$BLUEGREEN_APP" >> hooks.log'


def test_hooks_run_around_deploy_promote_and_rollback(project: Project) -> None:
    p = project
    p.write_config(hooks={name: HOOK for name in
                          ("pre_deploy", "post_deploy", "pre_promote", "post_promote",
                           "post_rollback")})
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    p.bg("rollback")
    lines = (p.dir / "hooks.log").read_text().splitlines()
    assert lines == [
        "pre_deploy color=blue version=1.0.0 hosts=web1 app=testapp",
        "pre_promote color=blue version=1.0.0 hosts=web1 app=testapp",
        "post_promote color=blue version=1.0.0 hosts=web1 app=testapp",
        "post_deploy color=blue version=1.0.0 hosts=web1 app=testapp",
        "pre_deploy color=green version=2.0.0 hosts=web1 app=testapp",
        "pre_promote color=green version=2.0.0 hosts=web1 app=testapp",
        "post_promote color=green version=2.0.0 hosts=web1 app=testapp",
        "post_deploy color=green version=2.0.0 hosts=web1 app=testapp",
        "post_rollback color=blue version=1.0.0 hosts=web1 app=testapp",
    ]


def test_failing_pre_hook_changes_nothing(project: Project) -> None:
    p = project
    p.bg("setup")
    p.deploy("1.0.0")
    p.write_config(hooks={"pre_deploy": "echo 'tests are red' >&2; exit 3",
                          "pre_promote": "echo 'not now' >&2; exit 1"})
    out = p.deploy("2.0.0", check=1)
    assert "hook pre_deploy" in out.stderr and "tests are red" in out.stderr
    assert "nothing was changed" in out.stderr
    assert not any(d.name.startswith("2.0.0") for d in (p.deploy_to / "releases").iterdir())
    assert p.status()["slots"]["green"]["release"] is None
    assert not (p.deploy_to / "lock").exists()
    p.write_config(hooks={"pre_promote": "echo 'not now' >&2; exit 1"})
    p.deploy("2.0.0", "--no-promote")
    out = p.bg("promote", check=1)
    assert "not now" in out.stderr
    a = p.answer()
    assert (a.colour, a.version) == ("blue", "1.0.0")


def read_until(stream: IO[str], marker: str, timeout: float) -> str:
    """Lines from ``stream`` until one holds ``marker`` or ``timeout`` passes (never blocks
    past it)."""
    import select

    seen = ""
    deadline = time.monotonic() + timeout
    while marker not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([stream], [], [], left)[0]:
            break
        line = stream.readline()
        if not line:
            break
        seen += line
    return seen


def test_logs_show_and_follow_the_slot_log(project: Project) -> None:
    p = project
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    out = p.bg("logs")
    assert "sample app 2.0.0 (green) listening" in out.stdout
    assert "1.0.0" not in out.stdout
    out = p.bg("logs", "--color", "blue", "-n", "1")
    assert out.stdout.strip() == f"sample app 1.0.0 (blue) listening on 127.0.0.1:{p.blue}"
    follower = subprocess.Popen([*BLUEGREEN, "logs", "-f", "--color", "blue", "-n", "1"],
                                cwd=p.dir, env={**os.environ, "HOME": str(p.home)},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert follower.stdout is not None
        # Its first line (the last one there) says it follows: only then stop the slot.
        assert "listening" in read_until(follower.stdout, "listening", 20)
        p.bg("stop", "blue")  # the app logs its shutdown: the follower must print it
        assert "sample app 1.0.0 (blue) stopped" in read_until(follower.stdout, "stopped", 20)
        follower.send_signal(signal.SIGINT)  # Ctrl-C: the way to stop following
        assert follower.wait(10) == 0
        assert follower.stderr is not None and follower.stderr.read() == ""
    finally:
        follower.kill()
        follower.wait(10)


def test_json_progress_events_and_result(project: Project) -> None:
    import json

    p = project
    p.bg("setup")
    p.artifact("1.0.0")
    out = p.bg("deploy", "--version", "1.0.0", "--json")
    events = [json.loads(line) for line in out.stderr.splitlines()]
    assert events and all(set(e) == {"time", "elapsed", "level", "host", "message"} for e in events)
    assert any(e["host"] == "web1" and e["message"].startswith("blue is healthy") for e in events)
    result = plain_result(out.stdout)
    assert result["ok"] is True and result["hosts"] == [{"name": "web1", "color": "blue"}]
    assert result["release"].startswith("1.0.0-") and result["promoted"] is True
    out = p.bg("promote", "blue", "--json")
    assert plain_result(out.stdout) == {"schema": 2, "ok": True, "live": {"web1": "blue"},
                                      "hosts": [{"name": "web1", "live": "blue"}]}
    out = p.bg("stop", "blue", "--json", check=1)
    failure = json.loads(out.stdout)
    assert (failure["ok"], failure["exit_code"], failure["hosts"][0]["name"]) == (False, 1, "web1")
    assert json.loads(out.stderr.splitlines()[-1])["level"] == "error"


# bluegreen's own lines on stderr without a terminal (output.Reporter, plain mode).
OWN_LINE = re.compile(r" *\d+\.\d\ds |warning: |error: ")


def test_stderr_carries_only_bluegreens_own_lines(ssh_project: Project) -> None:
    """Nothing a library prints reaches the user's stderr (asyncssh under cryptography 51
    printed five DSA deprecation warnings on every command over SSH), and with --json
    stderr is JSON lines only; BLUEGREEN_DEBUG=1 shows Python's warnings again."""
    import json

    p = ssh_project
    p.bg("setup")
    p.artifact("1.0.0")
    for args in (["check"], ["deploy", "--version", "1.0.0"], ["status"]):
        err = p.bg(*args).stderr
        foreign = [line for line in err.splitlines() if not OWN_LINE.match(line)]
        assert not foreign, f"bluegreen {' '.join(args)}: {foreign}"
    err = p.bg("deploy", "--version", "1.0.0", "--json").stderr
    assert err and all(json.loads(line)["message"] for line in err.splitlines())
    # The warnings themselves, where this installation's libraries give any:
    # BLUEGREEN_DEBUG=1 shows exactly what a plain import shows.
    plain = subprocess.run([BLUEGREEN[0], "-c", "import asyncssh"], capture_output=True,
                           text=True, check=True).stderr
    expected = sorted(line for line in plain.splitlines() if "Warning: " in line)
    debug = run_cli(p.dir, p.home, ["status"], env={"BLUEGREEN_DEBUG": "1"}).stderr
    assert sorted(line for line in debug.splitlines() if "Warning: " in line) == expected


def test_live_progress_on_a_terminal(local_project: Project) -> None:
    import pexpect

    p = local_project
    p.bg("setup")
    p.artifact("1.0.0")
    child = pexpect.spawn(BLUEGREEN[0], [*BLUEGREEN[1:], "deploy", "--version", "1.0.0"],
                          cwd=str(p.dir), env={**os.environ, "HOME": str(p.home), "TERM": "xterm"},
                          encoding="utf-8", timeout=60, dimensions=(30, 120))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0

    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", child.before)
    # The per-host table, redrawn in place, ends on the host's last step.
    assert re.search(r"web1\s+[\d.]+s\s+live is blue \(1\.0\.0-", screen), screen
    # Each finished step stays as a line above it, with its time (the table alone hid
    # them): in order, ending with the step before the last.
    assert re.search(r"[\d.]+s \[web1\] uploading sample-1\.0\.0", screen), screen
    assert re.search(r"[\d.]+s \[web1\] blue is healthy", screen), screen


def test_a_lock_without_holder_info_is_explained_and_cleared(local_project: Project) -> None:
    """A lock dir with no info.json (a run killed between `mkdir` and writing it): status
    explains it, a deploy is refused with exit 4 and the remedy, `unlock` clears it."""
    p = local_project
    p.bg("setup")
    p.deploy("1.0.0")
    (p.deploy_to / "lock").mkdir()
    st = p.bg("status")
    assert "lock is held but names no holder" in st.stdout and "bluegreen unlock" in st.stdout
    assert "names no holder" in p.status()["lock"]
    out = p.deploy("2.0.0", check=4)
    assert "names no holder" in out.stderr and "`bluegreen unlock` clears it" in out.stderr
    assert "sh -c" not in out.stderr
    assert "removed" in p.bg("unlock").stdout
    assert p.status()["lock"] is None
    p.deploy("2.0.0")


def test_exec_runs_in_the_slot_with_its_env_and_passes_the_exit_status(
        project: Project) -> None:
    """`exec -- CMD`: in the live slot's release dir, with env_file secrets (as Kamal's
    `app exec` lacked on fresh servers, kamal#1180), stdin passed on, CMD's exit status."""
    p = project
    (p.dir / ".env.production").write_text("API_TOKEN=tok-for-exec-7\n")
    p.extra_run = {"env_file": ".env.production"}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    out = p.bg("exec", "--", "sh", "-c", 'echo "$API_TOKEN $BLUEGREEN_COLOR"; cat VERSION')
    assert out.stdout.split() == ["tok-for-exec-7", "green", "2.0.0"], out
    out = p.bg("exec", "--color", "blue", "--", "cat", "VERSION")
    assert out.stdout.strip() == "1.0.0"
    out = p.bg("exec", "--all-hosts", "--", "cat", "VERSION")
    assert out.stdout.strip() == "2.0.0" and "[web1] exec on green" in out.stderr
    assert p.bg("exec", "--", "cat", input="from stdin\n").stdout == "from stdin\n"
    failed = p.bg("exec", "--", "sh", "-c", "echo oops >&2; exit 7", check=7)
    assert "oops" in failed.stderr and "exited 7" in failed.stderr
    # Arguments reach CMD as they were, not re-split by a shell.
    out = p.bg("exec", "--", "printf", "%s|", "a b", "$HOME", "'q'")
    assert out.stdout == "a b|$HOME|'q'|"


def test_exec_interactive_gets_a_terminal_on_the_server(ssh_project: Project) -> None:
    import pexpect

    p = ssh_project
    p.bg("setup")
    p.deploy("1.0.0")
    child = pexpect.spawn(BLUEGREEN[0], [*BLUEGREEN[1:], "exec", "-i", "--", "sh", "-c",
                                         'tty; read line; echo "got $line"; exit 3'],
                          cwd=str(p.dir), env={**os.environ, "HOME": str(p.home),
                                               "TERM": "xterm"},
                          encoding="utf-8", timeout=30)
    child.expect(r"/dev/pts/\d+")
    child.sendline("typed")
    child.expect("got typed")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 3


def test_remove_tears_the_app_down_and_asks_first(project: Project) -> None:
    p = project
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    assert app_pids(p)
    refused = p.bg("remove", check=2)  # no terminal to confirm on
    assert "pass --yes" in refused.stderr and p.answer().version == "2.0.0"
    out = p.bg("remove", "--yes")
    assert out.stdout.strip() == "web1: removed"
    assert not app_pids(p) and not p.deploy_to.exists()
    assert not (p.nginx.sites_enabled / "testapp").exists()  # type: ignore[union-attr]
    assert list(p.nginx.sites_available.iterdir()) == []  # type: ignore[union-attr]
    assert p.answer().status in (0, 404) and p.answer().version is None
    assert p.nginx.pid() is not None  # nginx itself keeps running (other sites)


def test_remove_deletes_only_its_own_layout_from_a_shared_deploy_to(project: Project) -> None:
    """deploy_to is a home dir (`/home/deploy`) with the deploy user's SSH keys and another
    app in it: `remove` deletes only what bluegreen made there, keeps the dir and says so.
    The prompt on a terminal names the dir; answering no changes nothing."""
    import json

    import pexpect

    p = project
    home = p.dir / "home-deploy"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAA deploy@laptop\n")
    (home / "otherapp").mkdir()
    (home / "otherapp" / "index.html").write_text("other app\n")
    p.host_override = {"deploy_to": str(home)}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    child = pexpect.spawn(BLUEGREEN[0], [*BLUEGREEN[1:], "remove"], cwd=str(p.dir),
                          env={**os.environ, "HOME": str(p.home), "TERM": "dumb"},
                          encoding="utf-8", timeout=60, dimensions=(30, 400))
    child.expect(r"\[y/N\]")
    assert str(home) in child.before, child.before
    child.sendline("n")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus != 0 and p.answer().version == "2.0.0"

    result = plain_result(p.bg("remove", "--yes", "--json").stdout)
    assert result["ok"] is True
    assert result["hosts"] == [{"name": "web1", "left_for_admin": [], "deploy_to": str(home),
                                "kept": [".ssh", "otherapp"]}]
    assert p.answer().version is None and not app_pids(p)
    assert (home / ".ssh" / "authorized_keys").read_text() == "ssh-ed25519 AAAA deploy@laptop\n"
    assert (home / "otherapp" / "index.html").read_text() == "other app\n"
    assert sorted(os.listdir(home)) == [".ssh", "otherapp"]
    # Run again (e.g. after a crash): nothing of bluegreen's is left, the rest stays.
    again = json.loads(p.bg("remove", "--yes", "--json").stdout)
    assert again["hosts"][0]["kept"] == [".ssh", "otherapp"]
    assert sorted(os.listdir(home)) == [".ssh", "otherapp"]


def maintenance_round(p: Project, deployed: Callable[[], object] | None = None) -> None:
    """on (503 with the message, /deployment_id still answers, slots untouched, kept by a
    deploy, shown by status, recorded), then off (served again). ``deployed``: called
    after the first deploy."""
    p.bg("setup")
    p.deploy("1.0.0")
    if deployed is not None:
        deployed()
    before = app_pids(p)
    out = p.bg("maintenance", "on", "--message", "Upgrading the database; back at 10:00 & more")
    assert "maintenance on" in out.stdout
    answer = p.answer()
    assert answer.status == 503 and "Upgrading the database; back at 10:00 &amp; more" in \
        answer.body, answer
    assert get(p.nginx.port, "/deployment_id").body.strip() == "blue"
    assert app_pids(p) == before and p.status()["maintenance"] is True
    assert "maintenance on" in p.bg("status").stdout
    deployed = p.deploy("2.0.0")
    assert "maintenance is on" in deployed.stderr
    assert p.answer().status == 503 and get(p.nginx.port, "/deployment_id").body.strip() == "green"
    p.bg("maintenance", "off")
    assert (p.answer().status, p.answer().version) == (200, "2.0.0")
    assert p.status()["maintenance"] is False
    events = [(e["event"], e["detail"]) for e in p.history()[:4]]
    assert ("maintenance", "off") in events
    assert any(e == "maintenance" and d.startswith("on: Upgrading") for e, d in events)


def test_maintenance_mode_with_nginx(project: Project) -> None:
    maintenance_round(project)


def page_row(p: Project) -> bool | None:
    """`check --json`'s row for the maintenance page: ok, or None (a note)."""
    result = json.loads(p.bg("check", "--json").stdout)
    rows = [r for r in result["hosts"][0]["items"] if r["item"].startswith("maintenance page")]
    assert result["ok"] is True and len(rows) == 1, result
    return rows[0]["ok"]  # type: ignore[no-any-return]


@pytest.mark.skipif(os.geteuid() != 0, reason="nginx's `user` directive needs root")
def test_maintenance_on_that_nginx_workers_cannot_see_fails_and_says_why(
        project: Project, nginx: PrivateNginx) -> None:
    """nginx's workers run as nobody and deploy_to is under a 0700 directory: their `-f`
    test of the page is false, so users would keep getting the app. `maintenance on`
    exits 1 naming the workers' user and that directory, and takes the page back (status
    does not say maintenance); once the workers can reach it, on and off take."""
    p = project
    nginx.write_config(workers=1, user="nobody nogroup")
    subprocess.run(nginx.command("-s", "reload"), check=True)
    private = Path(tempfile.mkdtemp(prefix="bluegreen-private-"))  # 0700, outside tmp_path
    try:
        p.host_override = {"deploy_to": str(private / "srv")}
        p.write_config()
        p.bg("setup")
        p.deploy("1.0.0")
        assert page_row(p) is None  # `check` warns (a note; it does not fail)
        out = p.bg("maintenance", "on", "--json", check=1)
        result = json.loads(out.stdout)
        assert result["ok"] is False and result["exit_code"] == 1
        assert "'nobody'" in result["error"] and str(private) in result["error"]
        assert (p.answer().status, p.answer().version) == (200, "1.0.0")
        assert p.status()["maintenance"] is False

        private.chmod(0o711)  # the workers may traverse it now
        assert page_row(p) is True
        p.bg("maintenance", "on")
        assert p.answer().status == 503 and "Down for maintenance" in p.answer().body
        p.bg("maintenance", "off")
        assert (p.answer().status, p.answer().version) == (200, "1.0.0")
    finally:
        p.cleanup()
        shutil.rmtree(private, ignore_errors=True)


def test_maintenance_mode_with_haproxy_through_the_runtime_api(local_project_hx: Project) -> None:
    p = local_project_hx
    pids: list[int] = []
    # (from the first deploy on, which reloads once: setup's no-release page goes)
    maintenance_round(p, deployed=lambda: pids.extend(p.nginx.pids()))  # type: ignore[union-attr]
    assert pids and p.nginx.pids() == pids  # type: ignore[union-attr]  # never reloaded
    # `remove` takes its files away: config, map and maintenance map.
    p.bg("remove", "--yes")
    assert sorted(f.name for f in p.nginx.conf_d.iterdir()) == []  # type: ignore[union-attr]
    assert p.answer().version is None


def test_nothing_bluegreen_creates_is_open_to_other_users(ssh_project: Project) -> None:
    """Over SSH (sshd's umask 022): after setup and deploys, no file or dir under deploy_to
    can be read, listed or passed through by another user (`nobody`, asked for real), but
    for the maintenance page while it is on: deploy_to and shared/ o+x (not listed), the
    page 0644. The site serves, and maintenance still works through nginx."""
    import shutil
    import tempfile
    from pathlib import Path

    base = Path(tempfile.mkdtemp(prefix="bg-modes-", dir="/tmp"))
    base.chmod(0o755)  # another user could reach deploy_to; only its own modes stop them
    p = ssh_project
    root = base / "srv"
    try:
        p.host_override = {"deploy_to": str(root)}
        (p.dir / ".env.production").write_text("TOKEN=s3cr3t-token-99\n")
        p.extra_run = {"command": 'echo "token $TOKEN"; exec python3 app.py',
                       "env_file": ".env.production"}
        p.write_config()
        p.bg("setup")
        p.deploy("1.0.0")
        p.deploy("2.0.0")
        assert p.answer().version == "2.0.0"

        def open_to_others() -> dict[str, str]:
            return {str(q.relative_to(base)): oct(q.stat().st_mode & 0o7)
                    for q in [root, *root.rglob("*")]
                    if not q.is_symlink() and q.stat().st_mode & 0o7}

        def as_nobody(*argv: str) -> bool:
            return subprocess.run(["runuser", "-u", "nobody", "--", *argv],
                                  capture_output=True).returncode == 0

        assert open_to_others() == {}
        log = root / "slots" / "green" / "log"
        assert "token ********" not in log.read_text() and "token s3cr3t" in log.read_text()
        assert not as_nobody("cat", str(log)) and not as_nobody("ls", str(root))
        assert not as_nobody("cat", str(root / "history.jsonl"))

        p.bg("maintenance", "on", "--message", "back soon")
        answer = p.answer()
        assert answer.status == 503 and "back soon" in answer.body, answer
        page = root / "shared" / "maintenance.html"
        assert open_to_others() == {"srv": "0o1", "srv/shared": "0o1",
                                    "srv/shared/maintenance.html": "0o4"}
        assert as_nobody("cat", str(page)) and not as_nobody("ls", str(root))
        assert not as_nobody("cat", str(log))
        p.bg("setup")  # keeps the way to the page while it is there
        assert p.answer().status == 503 and as_nobody("cat", str(page))
        p.bg("maintenance", "off")
        assert (p.answer().status, p.answer().version) == (200, "2.0.0")
        assert open_to_others() == {}
    finally:
        p.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def test_rollback_list_and_pick(local_project: Project) -> None:
    """`rollback --list` (and `--json`): the kept releases, newest first, where each runs and
    the one a plain rollback would choose; `rollback --pick` on a terminal rolls back to the
    one chosen (as `--to`), and is a usage error off one."""
    import pexpect

    p = local_project
    p.bg("setup")
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        p.deploy(version)
    # blue runs 3.0.0 (live), green 2.0.0 (idle), 1.0.0 is on disk only.
    data = json.loads(p.bg("rollback", "--list", "--json").stdout)
    assert (data["schema"], data["ok"], [h["name"] for h in data["hosts"]]) == (
        2, True, ["web1"])
    rows = data["hosts"][0]["releases"]
    assert [(r["version"], r["where"], r["rollback_target"]) for r in rows] == [
        ("3.0.0", "live", False), ("2.0.0", "idle", True), ("1.0.0", "disk", False)]
    assert all(r["release"].startswith(r["version"] + "-") for r in rows)
    ages = [r["age_seconds"] for r in rows]
    assert all(isinstance(a, int) and 0 <= a < 600 for a in ages) and ages == sorted(ages)
    plain = p.bg("rollback", "--list").stdout
    marked = [line.split() for line in plain.splitlines() if "<- rollback" in line]
    assert len(marked) == 1 and rows[1]["release"] in marked[0] and "idle" in marked[0]
    assert "on disk only" in plain and p.answer().version == "3.0.0"  # nothing changed
    assert len(p.history()) == 5  # (deploy, promote) x 2 after the first deploy

    p.bg("rollback", "--pick", check=2)  # no terminal to ask on
    p.bg("rollback", "--list", "--to", "1.0.0", check=2)
    child = pexpect.spawn(BLUEGREEN[0], [*BLUEGREEN[1:], "rollback", "--pick"], cwd=str(p.dir),
                          env={**os.environ, "HOME": str(p.home), "TERM": "dumb"},
                          encoding="utf-8", timeout=60, dimensions=(30, 200))
    child.expect("Roll back to which release")
    assert "1.0.0" in child.before and "2.0.0" in child.before
    child.sendline("2")  # the numbered choices: 2.0.0 (1), 1.0.0 (2); never the live one
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
    assert (p.answer().colour, p.answer().version) == ("green", "1.0.0")
    rows = json.loads(p.bg("rollback", "--list", "--json").stdout)["hosts"][0]["releases"]
    assert [(r["version"], r["where"]) for r in rows] == [
        ("1.0.0", "live"), ("3.0.0", "idle"), ("2.0.0", "disk")]
