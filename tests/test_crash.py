"""Invariant 3 for every command that changes a host: each is killed (SIGKILL) as soon as
it prints each of its progress lines, then the state right after the kill is checked, the
dead run's lock is named, and a re-run after `unlock` finishes the job. On one host here;
on many hosts (a kill between the switch's phases) in test_multihost.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


from conftest import Project, live_slot, sample_artifact
from test_faults import kill_at

# (command and arguments, the progress line to kill it at)
PROMOTE = [("promote", "switching blue -> green"), ("promote", "live is green")]
ROLLBACK = [("rollback", "switching green -> blue"), ("rollback", "live is blue")]
STOP = [("stop blue", "draining blue"), ("stop blue", "stopping blue")]
PRUNE = [("prune --keep 1", "pruning")]


def two_releases(p: Project, *, promote: bool = True) -> None:
    p.bg("setup")
    p.deploy("1.0.0")
    if promote:
        p.deploy("2.0.0")
    else:
        p.deploy("2.0.0", "--no-promote")


def rerun(p: Project, args: list[str], codes: tuple[int, ...] = (0,)) -> None:
    """The next run names the dead holder (when the kill came before the lock was
    released); after `unlock` the same command finishes (an exit code in ``codes``)."""
    out = p.bg(*args, check=False)
    if out.returncode == 4:
        assert "is gone: that run died" in out.stderr
        p.bg("unlock")
        out = p.bg(*args, check=False)
    assert out.returncode in codes, out.stderr


def consistent(p: Project) -> dict[str, object]:
    """After any command: the link, the proxy's answer and what answers agree."""
    st = p.status()
    a = p.answer()
    assert st["live"] == st["proxy_answer"] == a.colour, (st, a)
    return st


@pytest.mark.parametrize("command,marker", PROMOTE + ROLLBACK)
def test_switch_commands_killed_then_rerun(local_project: Project, command: str,
                                           marker: str) -> None:
    p = local_project
    two_releases(p, promote=command == "rollback")
    args = command.split()
    kill_at(p, marker, *args[1:], command=args[0])
    # Killed mid-switch: the link may name the new colour while nginx serves the old one;
    # either release answers, both slots still run, and the next command settles it.
    a = p.answer()
    assert a.status == 200 and a.version in ("1.0.0", "2.0.0"), a
    assert all(p.status()["slots"][c]["healthy"] for c in ("blue", "green"))
    # Re-run as it was (a CI retry, up-arrow): killed before its switch, it finishes now;
    # after, it refuses to go on in the other direction (exit 1) and nothing moves.
    want = "green" if command == "promote" else "blue"
    rerun(p, args, codes=(0, 1))
    st = consistent(p)
    assert st["live"] == want and p.answer().version == ("2.0.0" if want == "green" else "1.0.0")


@pytest.mark.parametrize("command,marker", STOP)
def test_stop_killed_then_rerun(local_project: Project, command: str, marker: str) -> None:
    p = local_project
    two_releases(p)
    before = live_slot(p)
    kill_at(p, marker, "blue", command="stop")
    assert live_slot(p) == before  # the live slot (green) is not touched
    rerun(p, ["stop", "blue"])
    st = consistent(p)
    assert st["slots"]["blue"]["running"] is False and st["live"] == "green"
    assert live_slot(p) == before


def test_setup_killed_then_rerun(local_project: Project) -> None:
    p = local_project
    kill_at(p, "wrote ", command="setup")  # after the lock, while writing the site files
    rerun(p, ["setup"])
    consistent(p)
    assert p.answer().colour == "blue"


def test_setup_killed_between_link_and_reload_then_rerun(local_project: Project) -> None:
    """Where the kill above sometimes lands (CI saw it): the first setup linked the site but
    nginx never loaded it, so nothing answers for the app. The next setup finishes it (it
    used to stop at "the proxy does not answer ...: is nginx running?")."""
    import os
    import subprocess
    import time

    p = local_project
    p.bg("setup")
    link = p.nginx.sites_enabled / "testapp"
    target = os.readlink(link)
    link.unlink()
    subprocess.run(p.nginx.command("-s", "reload"), check=True)
    deadline = time.monotonic() + 10
    while p.answer().status != 0:  # the old workers let go: nothing serves the app
        assert time.monotonic() < deadline, "nginx kept serving the app without its site"
        time.sleep(0.05)
    os.symlink(target, link)  # linked, not loaded: where that killed setup stopped
    p.bg("setup")
    consistent(p)
    assert p.answer().colour == "blue"


@pytest.mark.parametrize("command,marker", PRUNE)
def test_prune_killed_then_rerun(local_project: Project, command: str, marker: str) -> None:
    p = local_project
    p.bg("setup")
    for version in ("1.0.0", "2.0.0", "3.0.0", "4.0.0"):
        p.deploy(version)  # keep = 5 by default: nothing pruned yet
    before = live_slot(p)
    kill_at(p, marker, "--keep", "1", command="prune")
    assert live_slot(p) == before
    rerun(p, command.split())
    releases = sorted(d.name.split("-")[0] for d in (p.deploy_to / "releases").iterdir()
                      if not d.name.startswith("."))
    assert releases == ["3.0.0", "4.0.0"]  # the live and the idle slot's, never pruned
    consistent(p)


@pytest.mark.parametrize("marker", ["uploading", "starting 3.0.0", "switching"])
def test_deploy_on_three_hosts_killed_then_rerun(tmp_path: Path, marker: str) -> None:
    """Many hosts: a deploy killed at a step leaves every host serving what it served (or,
    from the switch on, each host's link and answer agreeing), and a re-run converges."""
    from test_multihost import running_fleet

    with running_fleet(tmp_path, 3) as fleet:
        fleet.deploy("1.0.0")
        fleet.deploy("2.0.0")
        sample_artifact(fleet.dir, "3.0.0")
        kill_at(fleet, marker, "--version", "3.0.0")  # type: ignore[arg-type]
        answers = fleet.answers()
        if marker == "switching":
            assert all(v in ("2.0.0", "3.0.0") for _, v in answers), answers
        else:
            assert answers == [("green", "2.0.0")] * 3
        out = fleet.bg("deploy", "--version", "3.0.0", check=False)
        if out.returncode == 4:
            fleet.bg("unlock")
            out = fleet.bg("deploy", "--version", "3.0.0")
        assert out.returncode == 0
        assert fleet.answers() == [("blue", "3.0.0")] * 3
        data = json.loads(fleet.bg("status", "--json").stdout)
        assert data["split_brain"] is False
