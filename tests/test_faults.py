"""Real faults: `deploy` killed with SIGKILL at each step, then re-run; a release that dies
after becoming healthy; a disk that fills up; shell metacharacters in paths."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Callable

import pytest

from conftest import BLUEGREEN, Project, app_pids, live_slot

# Progress lines that begin each step of a deploy (plain mode: stderr is not a terminal).
STEPS = {
    "upload": "uploading ",
    "unpack": "unpacking into",
    "drain": "draining blue",
    "stop": "stopping blue",
    "start": "starting 3.0.0",
    "health": "blue is healthy",
    "switch": "switching green -> blue",
    "verified": "live is blue",
}
SSH_STEPS = {"upload", "stop", "start", "switch"}


def run_until(p: Project, marker: str, args: list[str],
              on_marker: Callable[[subprocess.Popen[str]], None],
              command: str = "deploy") -> tuple[int, str]:
    """Run `bluegreen COMMAND ARGS` and call ``on_marker`` as soon as it prints ``marker``
    (the progress line that begins a step); returns its exit status and output."""
    proc = subprocess.Popen([*BLUEGREEN, command, *args], cwd=p.dir, stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "HOME": str(p.home)})
    assert proc.stderr is not None
    seen = ""
    for line in proc.stderr:
        seen += line
        if marker in line:
            on_marker(proc)
            break
    else:
        raise AssertionError(f"never reached {marker!r}:\n{seen}")
    seen += proc.stderr.read()
    return proc.wait(60), seen


def kill_at(p: Project, marker: str, *args: str, command: str = "deploy") -> str:
    """Run `bluegreen COMMAND ARGS` and SIGKILL it as soon as it prints ``marker``."""
    status, seen = run_until(p, marker, list(args), lambda proc: proc.send_signal(signal.SIGKILL),
                             command)
    assert status == -signal.SIGKILL, seen
    return seen


@pytest.mark.parametrize("step", list(STEPS))
def test_local_deploy_killed_at_each_step_then_rerun(local_project: Project, step: str) -> None:
    killed_then_rerun(local_project, step)


@pytest.mark.parametrize("step", sorted(SSH_STEPS))
def test_ssh_deploy_killed_at_a_step_then_rerun(ssh_project: Project, step: str) -> None:
    killed_then_rerun(ssh_project, step)


def killed_then_rerun(p: Project, step: str) -> None:
    p.bg("setup")
    p.deploy("1.0.0", mode="slow-stop")
    p.deploy("2.0.0")
    p.artifact("3.0.0")
    before = live_slot(p)
    kill_at(p, STEPS[step], "--version", "3.0.0")
    a = p.answer()
    if step in ("switch", "verified"):  # the switch may have begun
        assert a.status == 200 and a.version in ("2.0.0", "3.0.0"), a
    else:  # before the switch: exactly as it was, live slot untouched
        assert (a.status, a.colour, a.version) == (200, "green", "2.0.0"), a
        assert live_slot(p) == before
    # On one host the lock's release goes with the verify (if it passes): a run killed
    # once it said so left no lock; one killed at the switch, when that round trip went
    # out whole. Otherwise the killed run's lock stays; the next run names it as stale and
    # `unlock` clears it.
    out = p.bg("deploy", "--version", "3.0.0", check=False)
    if step == "verified":
        assert out.returncode == 0 and "already live" in out.stderr, out.stderr
    elif step != "switch" or out.returncode != 0:
        assert out.returncode == 4 and "is gone: that run died" in out.stderr, out.stderr
        # A dead holder is not one to wait for (it said both "died" and "wait for it").
        assert "wait for it" not in out.stderr and "`bluegreen unlock` clears" in out.stderr
        p.bg("unlock")
        p.bg("deploy", "--version", "3.0.0")
    a = p.answer()
    assert (a.colour, a.version) == ("blue", "3.0.0")
    st = p.status()
    assert st["live"] == st["proxy_answer"] == "blue"
    assert st["slots"]["blue"]["version"] == "3.0.0" and st["slots"]["blue"]["healthy"]
    assert st["slots"]["green"]["version"] == "2.0.0" and st["slots"]["green"]["healthy"]
    # No orphans: the only app processes are the two slots' listeners.
    assert app_pids(p) == {st["slots"]["blue"]["pid"], st["slots"]["green"]["pid"]}
    # Rollback still works: the previous release was kept running.
    p.bg("rollback")
    assert p.answer().version == "2.0.0"


def test_switch_interrupted_between_link_and_reload_is_finished(local_project: Project) -> None:
    """The exact crash window of the switch, made by hand: link replaced, nginx not reloaded."""
    p = local_project
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    link = p.nginx.sites_enabled / "testapp"
    tmp = p.nginx.sites_enabled / ".testapp.bluegreen-tmp"

    def crash_mid_switch(colour: str) -> None:
        os.symlink(p.nginx.sites_available / f"testapp-{colour}", tmp)
        os.replace(tmp, link)

    crash_mid_switch("green")
    assert p.answer().colour == "blue"  # nginx still serves blue, whatever the link says
    # `stop blue` must not take the link's word for it: green is healthy, so the
    # interrupted switch is finished first, and only then is blue idle.
    out = p.bg("stop", "blue")
    assert "finishing an interrupted switch" in out.stderr
    a = p.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")
    # The same crash towards a colour that is not healthy (blue is stopped): undone.
    crash_mid_switch("blue")
    out = p.bg("stop", "green", check=1)
    assert "undoing an interrupted switch" in out.stderr and "green is live" in out.stderr
    assert p.link_target().endswith("testapp-green")
    a = p.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")
    # `setup` reloads nginx: it must not be the one to complete that switch either.
    crash_mid_switch("blue")
    out = p.bg("setup")
    assert "undoing an interrupted switch" in out.stderr
    a = p.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")


def test_release_that_dies_after_becoming_healthy_is_not_promoted(project: Project) -> None:
    p = project
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    green = p.status()["slots"]["green"]["pid"]
    os.kill(green, signal.SIGKILL)
    out = p.bg("promote", check=1)
    assert "green is not healthy" in out.stderr and "nothing was switched" in out.stderr
    a = p.answer()
    assert (a.colour, a.version) == ("blue", "1.0.0")
    p.deploy("2.0.0")  # re-run after the fault: stops nothing (gone), starts again, promotes
    assert p.answer().version == "2.0.0"


def test_status_fails_when_the_live_slot_is_killed(project: Project) -> None:
    """The live slot's process OOM-killed (SIGKILL): the proxy answers 502, and `status`
    says so (exit 1, ok false, a problem with the fix), not that all is well."""
    p = project
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    assert p.bg("status").returncode == 0
    os.kill(p.status()["slots"]["green"]["pid"], signal.SIGKILL)
    assert p.answer().status == 502
    out = p.bg("status", "--json", check=1)
    data = json.loads(out.stdout)
    assert data["ok"] is False and data["split_brain"] is False
    assert len(data["problems"]) == 1 and "`bluegreen rollback`" in data["problems"][0]
    assert p.bg("status", check=1).stdout  # the text form too
    p.bg("rollback")  # the fix it names: blue (1.0.0) is healthy
    assert (p.answer().status, p.answer().version) == (200, "1.0.0")
    assert json.loads(p.bg("status", "--json").stdout)["problems"] == []  # green is idle
    os.kill(p.status()["slots"]["blue"]["pid"], signal.SIGKILL)  # and now the live one too
    assert p.answer().status == 502
    data = json.loads(p.bg("status", "--json", check=1).stdout)
    assert data["ok"] is False and len(data["problems"]) == 1
    assert "rollback" not in data["problems"][0] and "`bluegreen deploy`" in data["problems"][0]
    p.deploy("3.0.0")  # the fix it names
    assert p.answer().version == "3.0.0" and p.bg("status").returncode == 0


def test_a_torn_history_line_loses_no_other_event(project: Project) -> None:
    """A power cut in the middle of an append leaves half a line at the end of
    history.jsonl: the next events start on lines of their own and are read; the torn
    line is skipped and reported (`history --json`: the host's `torn_lines`)."""
    p = project
    p.bg("setup")
    p.deploy("1.0.0")
    path = p.deploy_to / "history.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])  # the cut
    p.deploy("2.0.0")
    out = p.bg("history", "--json")
    result = json.loads(out.stdout)
    assert [(e["event"], e["version"]) for e in result["events"][:2]] == [
        ("promote", "2.0.0"), ("deploy", "2.0.0")]
    assert result["hosts"] == [{"name": "web1", "torn_lines": [len(lines)]}]
    assert "torn" in out.stderr
    p.bg("rollback")
    assert json.loads(p.bg("history", "--json").stdout)["events"][0]["event"] == "rollback"


def test_a_history_append_on_a_full_disk_leaves_no_half_line(local_project: Project,
                                                              tmp_path: Path) -> None:
    """deploy_to on a filesystem with room for the lock and the maintenance page but not
    for the whole history line: the append fails (a warning) and leaves nothing of it,
    so once there is room again the next event is read."""
    p = local_project
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], check=True)
    try:
        p.host_override = {"deploy_to": str(mount / "srv")}
        p.write_config()
        p.bg("setup")
        p.deploy("1.0.0")
        history = mount / "srv" / "history.jsonl"
        before = history.read_bytes()
        filler = mount / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"\0" * 4096)  # a page at a time: whole pages, or none
        except OSError:
            pass
        finally:
            os.close(fd)
        # The message is in the lock (the command line, 6 bytes a character in its JSON):
        # 2 pages; in the maintenance page (2 bytes a character): 1 page; in the history
        # line (6 bytes a character): more than what is left of the history's last page.
        message = "é" * 1160
        os.truncate(filler, filler.stat().st_size - 3 * 4096)
        out = p.bg("maintenance", "on", "--message", message)
        assert "history.jsonl" in out.stderr  # the append failed: a warning
        assert history.read_bytes() == before
        assert p.answer().status == 503
        filler.unlink()
        p.bg("maintenance", "off")
        result = json.loads(p.bg("history", "--json").stdout)
        # (the first deploy switched nothing: it records no promote)
        assert [e["event"] for e in result["events"][:2]] == ["maintenance", "deploy"]
        assert result["events"][0]["detail"] == "off"
        assert result["hosts"] == [{"name": "web1"}]  # no torn line
    finally:
        p.cleanup()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_during_upload_and_unpack(local_project: Project, tmp_path: Path) -> None:
    p = local_project
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)], check=True)
    try:
        p.host_override = {"deploy_to": str(mount / "srv")}
        p.write_config()
        p.bg("setup")
        p.deploy("1.0.0")
        big = p.dir / "build" / "big"
        big.mkdir(parents=True)
        # Compresses to almost nothing (the upload fits), unpacks to 2 MB (it does not).
        (big / "zeros").write_bytes(b"\0" * 2_000_000)
        art = p.artifact("2.0.0")
        subprocess.run(["tar", "-czf", str(art), "-C", str(p.dir / "build" / "sample-2.0.0-ok"),
                        ".", "-C", str(big), "zeros"], check=True)
        out = p.bg("deploy", "--version", "2.0.0", check=1)
        assert "unpacking 2.0.0-" in out.stderr and "MB free on" in out.stderr
        a = p.answer()
        assert (a.colour, a.version) == ("blue", "1.0.0")
        assert not any(d.name.startswith("2.0.0") and not d.name.startswith(".")
                       for d in (mount / "srv" / "releases").iterdir())
        # An upload that does not fit either.
        with open(p.artifact("3.0.0"), "ab") as fh:
            fh.write(os.urandom(800_000))  # random bytes after the gzip stream: not compressible
        out = p.bg("deploy", "--version", "3.0.0", check=1)
        assert "No space left on device" in out.stderr and "MB free on" in out.stderr
        a = p.answer()
        assert (a.colour, a.version) == ("blue", "1.0.0")
        # Space freed, the deploy goes through.
        p.deploy("4.0.0")
        assert p.answer().version == "4.0.0"
    finally:
        p.cleanup()
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_metacharacters_in_paths_stay_text(local_project: Project) -> None:
    p = local_project
    weird = p.dir / "srv; touch PWNED; $(touch PWNED2) `touch PWNED3`"
    p.host_override = {"deploy_to": str(weird)}
    p.write_config()
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    assert p.answer().version == "2.0.0"
    assert (weird / "releases").is_dir()
    for name in ("PWNED", "PWNED2", "PWNED3"):
        assert not (p.dir / name).exists() and not Path(name).exists()


def test_nginx_not_running(project: Project) -> None:
    p = project
    p.bg("setup")
    p.deploy("1.0.0")
    p.nginx.stop()
    out = p.deploy("2.0.0", check=1)
    assert "is nginx running?" in out.stderr
    assert p.status()["slots"]["green"]["release"] is None  # refused before anything changed
    p.nginx.start()
    p.deploy("2.0.0")
    assert p.answer().version == "2.0.0"


def test_truncated_and_unsafe_artifacts_are_refused(local_project: Project) -> None:
    import io
    import tarfile

    p = local_project
    p.bg("setup")
    p.deploy("1.0.0")
    art = p.artifact("2.0.0")
    art.write_bytes(art.read_bytes()[: len(art.read_bytes()) // 2])
    out = p.bg("deploy", "--version", "2.0.0", check=1)
    assert "not a readable .tar.gz" in out.stderr
    evil = p.dir / "artifacts" / "sample-3.0.0.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../../outside")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    out = p.bg("deploy", "--version", "3.0.0", check=1)
    assert "unsafe artifact" in out.stderr
    assert not (p.deploy_to / "outside").exists()
    assert not any(d.name.startswith(("2.0.0", "3.0.0")) for d in (p.deploy_to / "releases").iterdir())
    assert p.answer().version == "1.0.0"


@pytest.mark.parametrize("marker", ["uploading ", "starting 2.0.0"])
def test_ssh_connection_dies_mid_deploy(ssh_project: Project, marker: str) -> None:
    """The sshd process serving bluegreen's connection is killed at that step."""
    p = ssh_project
    assert p.sshd is not None
    p.bg("setup")
    p.deploy("1.0.0")
    p.artifact("2.0.0")
    def kill_sshd_sessions(proc: subprocess.Popen[str]) -> None:
        assert p.sshd is not None
        children = subprocess.run(["pgrep", "-P", str(p.sshd.proc.pid)], capture_output=True,
                                  text=True).stdout.split()
        for child in children:
            os.kill(int(child), signal.SIGKILL)

    status, seen = run_until(p, marker, ["--version", "2.0.0"], kill_sshd_sessions)
    assert status == 3, seen
    assert "lost the SSH connection" in seen
    a = p.answer()
    assert (a.colour, a.version) == ("blue", "1.0.0")
    out = p.deploy("2.0.0", check=4)  # its lock is still there: it could not remove it
    assert "locked by" in out.stderr
    p.bg("unlock")
    p.deploy("2.0.0")
    a = p.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")
    st = p.status()
    assert app_pids(p) == {st["slots"]["blue"]["pid"], st["slots"]["green"]["pid"]}
