"""End to end on one host, both `local` and over a real sshd: what answers through nginx."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from bluegreen.demo.haproxy import PrivateHAProxy
from bluegreen.demo.nginx import PrivateNginx, free_port
from conftest import BLUEGREEN, SERVER_NAME, Project, get, live_slot, make_project, squatter


def setup(p: Project) -> None:
    p.bg("setup")


def test_setup_links_blue_and_nginx_answers_blue(project: Project) -> None:
    out = project.bg("setup")
    assert "live colour is blue" in out.stderr
    assert project.link_target().endswith("testapp-blue")
    assert get(project.nginx.port, "/deployment_id").body == "blue"
    # Nothing runs yet: the proxy answers 503 on / (no release deployed yet), and status
    # says so.
    assert project.answer().status == 503
    st = project.status()
    assert st["live"] == "blue" and st["proxy_answer"] == "blue"
    assert st["slots"]["blue"]["release"] is None and st["slots"]["blue"]["running"] is False
    # Re-running setup is harmless.
    project.bg("setup")
    assert project.link_target().endswith("testapp-blue")


def test_three_deploys_alternate_and_rollback(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    a = project.answer()
    assert (a.status, a.colour, a.version) == (200, "blue", "1.0.0")
    assert a.body == "hello from 1.0.0 (blue)\n"

    project.deploy("2.0.0")
    a = project.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")
    st = project.status()
    assert st["live"] == "green" and st["proxy_answer"] == "green"
    # The previous colour keeps running, ready for a rollback.
    assert st["slots"]["blue"]["running"] and st["slots"]["blue"]["healthy"]
    assert st["slots"]["blue"]["version"] == "1.0.0"
    blue_pid = st["slots"]["blue"]["pid"]

    # Third deploy goes to blue: the old blue copy must be stopped first (it answers slowly
    # to SIGTERM), and the health check must see the new process, not the dying one.
    project.deploy("3.0.0")
    a = project.answer()
    assert (a.colour, a.version) == ("blue", "3.0.0")
    st = project.status()
    assert st["slots"]["blue"]["pid"] != blue_pid
    assert not _alive(blue_pid)
    assert st["slots"]["green"]["version"] == "2.0.0" and st["slots"]["green"]["healthy"]

    out = project.bg("rollback")
    assert "live is green" in out.stdout
    a = project.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")
    events = [(e["event"], e["color"], e["version"]) for e in project.history()]
    assert events[0] == ("rollback", "green", "2.0.0")
    assert ("deploy", "blue", "3.0.0") in events and ("deploy", "green", "2.0.0") in events


def test_third_deploy_waits_for_slow_old_copy(project: Project) -> None:
    """The seed's collision: the old copy on the target port exits slowly after SIGTERM."""
    setup(project)
    project.deploy("1.0.0", mode="slow-stop")
    project.deploy("2.0.0")
    out = project.deploy("3.0.0")
    assert "stopping blue (1.0.0-" in out.stderr
    a = project.answer()
    assert (a.colour, a.version) == ("blue", "3.0.0")
    log = (project.deploy_to / "slots" / "blue" / "log").read_text()
    assert "Address already in use" not in log
    assert "sample app 3.0.0 (blue) listening" in log


def test_an_old_copy_that_outlives_stop_timeout_is_killed_before_the_start(
        local_project: Project) -> None:
    """The stop goes with the start's round trip (SIGTERM, the wait, the launch); when the
    old copy is still there after run.stop_timeout nothing is launched in that round trip:
    SIGKILL, wait, then the start."""
    p = local_project
    setup(p)
    p.deploy("1.0.0", mode="slow-stop")  # exits 1.5 s after SIGTERM
    p.deploy("2.0.0")
    p.extra_run = {"stop_timeout": 1}
    p.write_config()
    out = p.deploy("3.0.0")
    assert "blue did not exit 1s after SIGTERM; sending SIGKILL" in out.stderr, out.stderr
    assert out.stderr.index("SIGKILL") < out.stderr.index("blue is healthy")
    a = p.answer()
    assert (a.colour, a.version) == ("blue", "3.0.0")
    log = (p.deploy_to / "slots" / "blue" / "log").read_text()
    assert "Address already in use" not in log
    assert log.count("sample app 3.0.0 (blue) listening") == 1


def test_promote_already_live_and_explicit_promote(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    out = project.bg("promote", "blue")
    assert "blue is already live" in out.stderr
    project.deploy("2.0.0", "--no-promote")
    a = project.answer()
    assert (a.colour, a.version) == ("blue", "1.0.0")
    assert project.status()["slots"]["green"]["healthy"]
    project.bg("promote")
    a = project.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")


def test_a_switch_returns_only_once_no_old_nginx_worker_answers(
        local_project: Project) -> None:
    """nginx keeps the workers of the old configuration accepting for 100 ms after a reload
    (both colours answer, in turn): the switch waits until they stop, and the verify's
    answers come after that. So every request sent once a promote returns gets the new
    colour (a verify of three answers without the wait returns while the old one still
    answers: seen with this test)."""
    p = local_project
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    colour = "green"
    for _ in range(4):
        colour = "blue" if colour == "green" else "green"
        p.bg("promote", colour)
        answers = [p.answer().colour for _ in range(15)]
        assert answers == [colour] * 15


def test_app_that_exits_at_start_is_not_promoted(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    before = live_slot(project)
    out = project.deploy("2.0.0", mode="exit", check=5)
    assert live_slot(project) == before  # the live slot's process, files, link: untouched
    assert "the process exited" in out.stderr
    assert "exiting at start on purpose" in out.stderr  # the log tail
    a = project.answer()
    assert (a.colour, a.version) == ("blue", "1.0.0")
    assert project.link_target().endswith("testapp-blue")
    assert project.history()[0]["event"] == "failed"
    # The fault removed, a re-run finishes the job.
    project.deploy("2.0.1")
    assert project.answer().version == "2.0.1"


def test_never_healthy_release_is_not_promoted(project: Project) -> None:
    project.extra_run = {"health_timeout": 2}
    project.write_config()
    setup(project)
    project.deploy("1.0.0")
    before = live_slot(project)
    out = project.deploy("2.0.0", mode="unhealthy", check=5)
    assert live_slot(project) == before
    assert "answered HTTP 500" in out.stderr
    assert "listening on 127.0.0.1" in out.stderr  # log tail shown
    a = project.answer()
    assert (a.colour, a.version) == ("blue", "1.0.0")
    st = project.status()
    assert st["slots"]["green"]["running"] is False  # the broken release was stopped


def test_ctrl_c_during_the_health_wait_stops_the_new_release_and_says_so(
        project: Project) -> None:
    """SIGINT to a deploy while the new release (never healthy) is in its health wait: the
    idle slot is stopped again (its previous release was stopped already, so nothing else
    would), history records `interrupted`, the lock is released, live is untouched."""
    p = project
    p.extra_run = {"health_timeout": 60}
    p.write_config()
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0")  # live: green; blue (1.0.0) is the idle slot the next deploy takes
    p.artifact("3.0.0", "unhealthy")
    proc = subprocess.Popen([*BLUEGREEN, "deploy", "--version", "3.0.0", "--json"], cwd=p.dir,
                            env={**os.environ, "HOME": str(p.home)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while get(p.blue, "/health").status != 500:  # 3.0.0 runs, and answers 500
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    result = json.loads(out)
    assert (result["ok"], result["exit_code"]) == (False, 130), out
    st = p.status()
    assert st["slots"]["blue"]["running"] is False, st  # what the deploy started, stopped
    assert get(p.blue, "/health").status == 0
    assert st["lock"] is None, st
    event = p.history()[0]
    assert (event["event"], event["color"]) == ("interrupted", "blue"), event
    a = p.answer()
    assert (a.colour, a.version) == ("green", "2.0.0")


def test_foreign_process_on_idle_port(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    with squatter(project.green) as other:
        before = live_slot(project)
        out = project.deploy("2.0.0", check=5)
        assert live_slot(project) == before
        assert "not the slot's own" in out.stderr
        assert other.poll() is None  # not ours: left alone
        a = project.answer()
        assert (a.colour, a.version) == ("blue", "1.0.0")


def test_rejected_site_template_puts_link_back(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    project.deploy("2.0.0", "--no-promote")
    template = project.dir / "broken.conf.j2"
    template.write_text("server { listen {{ listen }}; this_is_not_a_directive on; }\n")
    project.extra_proxy = {"template": "broken.conf.j2"}
    project.write_config()
    before = live_slot(project)
    out = project.bg("promote", check=1)
    assert "rejected the site" in out.stderr
    assert "the live link stays on blue" in out.stderr
    assert project.link_target().endswith("testapp-blue")
    a = project.answer()
    assert (a.colour, a.version) == ("blue", "1.0.0")
    # Nothing reloaded: a reload would have replaced nginx's workers (its master stays).
    assert live_slot(project) == before


def test_the_trial_before_a_switch_never_moves_the_live_link(local_project: Project) -> None:
    """`nginx -t` of the new link runs on a private copy of sites-enabled (as root): the
    live link goes from blue to green once, at the switch; it never points at green
    during the trial (a power cut then would boot nginx on it)."""
    p = local_project
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    ran = p.dir / "tests.log"
    p.extra_proxy = {"test": p.nginx.proxy_settings()["test"] + f" && echo ran >> {ran} "
                             "&& sleep 0.4"}
    p.write_config()
    seen: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            target = p.link_target()
            if not seen or seen[-1] != target:
                seen.append(target)
            time.sleep(0.005)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = p.bg("promote")
    finally:
        done.set()
        watcher.join()
    assert ran.read_text().split() == ["ran", "ran"], out.stderr  # the trial, the switch
    assert [t.rsplit("-", 1)[1] for t in seen] == ["blue", "green"], seen
    assert p.answer().version == "2.0.0"


def test_lock_held_exits_4_and_unlock_clears_it(project: Project) -> None:
    setup(project)
    lock = project.deploy_to / "lock"
    lock.mkdir()
    (lock / "info.json").write_text(json.dumps({
        "user": "alice", "host": "laptop", "pid": 4242, "command": "bluegreen deploy",
        "started": "2026-11-26T10:00:00+00:00"}))
    out = project.deploy("1.0.0", check=4)
    assert "alice@laptop pid 4242" in out.stderr
    assert "h ago: probably a run that died" in out.stderr  # another machine: judged by age
    assert project.answer().status == 503  # nothing was deployed
    out = project.bg("unlock")
    assert "removed: locked by alice@laptop" in out.stdout
    assert not lock.exists()
    assert "no lock" in project.bg("unlock").stdout
    project.deploy("1.0.0")
    assert project.answer().version == "1.0.0"


def test_unlock_refuses_a_live_fresh_holder_unless_forced(project: Project) -> None:
    """A deploy that is running (held in its pre_deploy hook) keeps its lock: `unlock`
    exits 4 and removes nothing; `--force` removes it. A fresh lock from another machine
    (whose pid cannot be checked) too; a dead holder's lock goes without --force."""
    p = project
    setup(p)
    p.deploy("1.0.0")
    hooked = p.dir / "hooked"
    p.write_config(hooks={"pre_deploy": f"touch {hooked}; exec sleep 60"})
    p.artifact("2.0.0")
    running = subprocess.Popen([*BLUEGREEN, "deploy", "--version", "2.0.0"], cwd=p.dir,
                               env={**os.environ, "HOME": str(p.home)}, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not hooked.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert hooked.exists() and running.poll() is None
        lock = p.deploy_to / "lock"
        p.bg("unlock", check=4)
        p.bg("unlock", "--json", check=4)
        assert lock.exists() and running.poll() is None
        assert json.loads(p.bg("unlock", "--force", "--json").stdout)["hosts"][0]["lock"] \
            .startswith("removed")
        assert not lock.exists()
    finally:
        os.killpg(running.pid, signal.SIGKILL)
        running.wait()
    assert p.answer().version == "1.0.0"
    assert "no lock" in p.bg("unlock").stdout
    lock.mkdir()
    (lock / "info.json").write_text(json.dumps({
        "user": "alice", "host": "laptop", "pid": 4242, "command": "bluegreen deploy",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())}))
    p.bg("unlock", check=4)
    assert lock.exists()
    p.bg("unlock", "--force")
    assert not lock.exists()


def test_every_changing_command_waits_for_the_lock(local_project: Project) -> None:
    """Invariant 4 across commands: while a run holds the lock (this test's own pid, so it
    is alive), every command that changes the host exits 4 naming it and changes nothing."""
    p = local_project
    p.extra_run = {"migrate": "echo migrated >> {deploy_to}/migrated"}
    p.write_config()
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    lock = p.deploy_to / "lock"
    lock.mkdir()
    (lock / "info.json").write_text(json.dumps({
        "user": "bob", "host": socket.gethostname(), "pid": os.getpid(),
        "command": "bluegreen deploy", "started": "2026-11-29T10:00:00+00:00"}))
    before = live_slot(p)
    history = (p.deploy_to / "history.jsonl").read_text()
    migrated = (p.deploy_to / "migrated").read_text()  # by the two deploys
    for args in (["setup"], ["deploy", "--version", "2.0.0"], ["promote", "blue"],
                 ["rollback"], ["stop", "blue"], ["prune", "--keep", "1"], ["migrate"]):
        out = p.bg(*args, check=4)
        assert f"locked by bob@{socket.gethostname()} pid {os.getpid()}" in out.stderr, args
        assert "that run died" not in out.stderr  # the holder is alive
    assert live_slot(p) == before
    assert (p.deploy_to / "history.jsonl").read_text() == history
    assert (p.deploy_to / "migrated").read_text() == migrated
    assert p.status()["slots"]["blue"]["healthy"]  # status takes no lock


def test_stop_refuses_live_and_stops_idle(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    project.deploy("2.0.0")
    out = project.bg("stop", "green", check=1)
    assert "green is live" in out.stderr
    green_pid = project.status()["slots"]["green"]["pid"]
    project.bg("stop", "blue")
    st = project.status()
    assert st["slots"]["blue"]["running"] is False and st["slots"]["blue"]["pid"] is None
    assert st["slots"]["green"]["pid"] == green_pid
    assert project.answer().version == "2.0.0"
    assert project.history()[0]["event"] == "stop"
    # Nothing to roll back to now.
    out = project.bg("rollback", check=1)
    assert "nothing to roll back to" in out.stderr
    assert project.answer().version == "2.0.0"


def test_status_json_contract(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    data = json.loads(project.bg("status", "--json").stdout)
    assert data["app"] == "testapp"
    host = data["hosts"][0]
    assert set(host) >= {"host", "reachable", "live", "proxy_answer", "slots"}
    blue = host["slots"]["blue"]
    assert set(blue) >= {"release", "version", "port", "pid", "running", "healthy"}
    assert blue["release"].startswith("1.0.0-") and len(blue["release"]) == len("1.0.0-") + 12
    assert blue["port"] == project.blue and isinstance(blue["pid"], int)
    green = host["slots"]["green"]
    assert green == {**green, "release": None, "version": None, "pid": None, "running": False,
                     "healthy": False}


def test_start_stop_daemon_mode(project: Project) -> None:
    """An app started by a command that daemonizes and returns, stopped by its stop command."""
    project.extra_run = {
        "command": None,
        "start": "nohup python3 app.py > {slot_dir}/daemon.out 2>&1 & echo $! > {slot_dir}/daemon.pid",
        "stop": "kill $(cat {slot_dir}/daemon.pid)",
    }
    project.write_config()
    setup(project)
    project.deploy("1.0.0")
    project.deploy("2.0.0")
    blue_pid = project.status()["slots"]["blue"]["pid"]
    project.deploy("3.0.0")
    assert not _alive(blue_pid)
    a = project.answer()
    assert (a.colour, a.version) == ("blue", "3.0.0")
    project.bg("rollback")
    assert project.answer().version == "2.0.0"


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_reload_failure_puts_link_back(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    project.deploy("2.0.0", "--no-promote")
    project.extra_proxy = {"reload": "echo 'reload is broken' >&2; exit 1"}
    project.write_config()
    out = project.bg("promote", check=1)
    assert "reload is broken" in out.stderr and "link put back to blue" in out.stderr
    assert project.link_target().endswith("testapp-blue")
    a = project.answer()
    assert (a.colour, a.version) == ("blue", "1.0.0")


def test_concurrent_deploys_one_gets_exit_4(project: Project) -> None:
    setup(project)
    project.deploy("1.0.0")
    project.artifact("2.0.0", "slow-stop")
    project.artifact("3.0.0")
    # The winner holds the lock for 2 s more (pre_deploy runs under it): a deploy is fast
    # enough now that one could otherwise finish before the other starts.
    project.write_config(hooks={"pre_deploy": "sleep 2"})
    import os
    import sys

    env = {**os.environ, "HOME": str(project.home)}
    procs = [subprocess.Popen([sys.executable, "-m", "bluegreen", "deploy", "--version", v],
                              cwd=project.dir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for v in ("2.0.0", "3.0.0")]
    # `status` takes no lock: it works while the deploys run.
    assert json.loads(project.bg("status", "--json").stdout)["hosts"][0]["reachable"]
    results = [(p.wait(120), p.stderr.read() if p.stderr else "") for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 4], results
    loser = next(err for code, err in results if code == 4)
    assert "locked by" in loser and "bluegreen deploy --version" in loser
    assert project.answer().version in ("2.0.0", "3.0.0")
    assert not (project.deploy_to / "lock").exists()


def test_lock_wait_waits_for_a_held_lock_then_runs(local_project: Project) -> None:
    """`--lock-wait DURATION` (CI pipelines that overlap): a command finding the lock held
    by a deploy (kept in its pre_deploy hook until the test lets it go) waits, saying who
    holds it, and runs once it is released; a wait too short is exit 4 as without it."""
    p = local_project
    setup(p)
    p.deploy("1.0.0")
    p.artifact("2.0.0")
    gate = p.dir / "gate"
    p.write_config(hooks={"pre_deploy": f"while [ ! -e {gate} ]; do sleep 0.1; done"})
    env = {**os.environ, "HOME": str(p.home)}

    def start(*args: str, name: str) -> tuple[subprocess.Popen[str], Path]:
        err = p.dir / f"{name}.stderr"
        proc = subprocess.Popen([*BLUEGREEN, *args], cwd=p.dir, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=err.open("w"))
        return proc, err

    first, _ = start("deploy", "--version", "2.0.0", name="first")
    second: subprocess.Popen[str] | None = None
    try:
        deadline = time.monotonic() + 30
        while not (p.deploy_to / "lock" / "info.json").exists():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        short = p.bg("stop", "blue", "--lock-wait", "1s", "--json", check=4)
        assert json.loads(short.stdout)["exit_code"] == 4
        # setup changes nothing before it holds the lock (it closed deploy_to, which a
        # running `maintenance on` may have opened, and installed the unit, before it)
        p.deploy_to.chmod(0o751)
        p.bg("setup", check=4)
        assert stat.S_IMODE(p.deploy_to.stat().st_mode) == 0o751
        p.deploy_to.chmod(0o750)
        p.bg("stop", "blue", "--lock-wait", "soon", check=2)  # one duration syntax
        # A rollback only works after the deploy: green must hold 2.0.0, live.
        second, second_err = start("rollback", "--lock-wait", "60s", "--json", name="second")
        while "waiting for the lock" not in second_err.read_text():
            assert second.poll() is None and time.monotonic() < deadline, second_err.read_text()
            time.sleep(0.05)
        waiting = [json.loads(line) for line in second_err.read_text().splitlines()
                   if "waiting for the lock" in line]
        assert waiting[0]["host"] == "web1" and "bluegreen deploy --version 2.0.0" in waiting[0][
            "message"]
        time.sleep(1.5)  # it keeps waiting (polling) while the lock is held
        assert second.poll() is None
        gate.touch()
        assert first.wait(60) == 0
        assert second.wait(60) == 0, second_err.read_text()
        assert second.stdout is not None and json.loads(second.stdout.read())["live"] == {
            "web1": "blue"}
        assert p.answer().version == "1.0.0"
        assert [e["event"] for e in p.history()[:3]] == ["rollback", "promote", "deploy"]
        assert not (p.deploy_to / "lock").exists()
    finally:  # never leave the first deploy waiting on its hook
        gate.touch()
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.wait(60)


def test_lock_wait_on_every_command_that_locks() -> None:
    from bluegreen.cli import main

    for name in ("setup", "deploy", "promote", "rollback", "stop", "prune", "remove",
                 "maintenance", "migrate"):
        assert "lock_wait" in {o.name for o in main.commands[name].params}, name
    for name in ("status", "history", "unlock", "check", "logs"):
        assert "lock_wait" not in {o.name for o in main.commands[name].params}, name


def test_a_deploy_started_during_another_exits_4_before_building(project: Project) -> None:
    """A second deploy while the first waits in its pre_deploy hook (the lock held): exit 4
    before its local build runs, which would overwrite the artifact the first run uploads."""
    p = project
    setup(p)
    p.deploy("1.0.0")
    p.artifact("2.0.0")
    wait = "touch waiting; for i in $(seq 1200); do [ -e go ] && break; sleep 0.05; done"
    p.write_config(release={"version": "2.0.0", "artifact": "artifacts/sample-{version}.tar.gz",
                            "build": "echo built >> builds"}, hooks={"pre_deploy": wait})
    env = {**os.environ, "HOME": str(p.home)}
    first = subprocess.Popen([*BLUEGREEN, "deploy", "--json"], cwd=p.dir, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not (p.dir / "waiting").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (p.dir / "builds").read_text() == "built\n"  # the first run's build
        second = p.bg("deploy", "--json", check=4)
        assert json.loads(second.stdout)["exit_code"] == 4
        assert (p.dir / "builds").read_text() == "built\n"  # the second one built nothing
    finally:
        (p.dir / "go").touch()
        out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err
    assert json.loads(out)["ok"] is True
    assert p.answer().version == "2.0.0"


def test_stale_lock_names_the_dead_holder(local_project: Project) -> None:
    import socket

    p = local_project
    setup(p)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (p.deploy_to / "lock").mkdir()
    (p.deploy_to / "lock" / "info.json").write_text(json.dumps({
        "user": "root", "host": socket.gethostname(), "pid": dead.pid,
        "command": "bluegreen deploy", "started": "2026-11-26T10:00:00+00:00"}))
    out = p.deploy("1.0.0", check=4)
    assert f"pid {dead.pid} is gone: that run died" in out.stderr
    assert "bluegreen unlock" in out.stderr


def test_build_version_command_and_prune(local_project: Project) -> None:
    p = local_project
    src = p.dir / "src"
    src.mkdir()
    (src / "app.py").write_text((p.artifact("0.0.0").parent.parent / "build" /
                                 "sample-0.0.0-ok" / "app.py").read_text())
    (p.dir / "VERSION").write_text("5.0.0\n")
    p.write_config(release={
        "version_command": "cat VERSION",
        "build": "cp VERSION src/VERSION && mkdir -p dist && tar -czf dist/app-{version}.tar.gz -C src .",
        "artifact": "dist/app-{version}.tar.gz",
        "keep": 2,
    })
    out = p.bg("build")
    assert "release 5.0.0-" in out.stdout and "sha256 " in out.stdout
    setup(p)
    for version in ("5.0.0", "5.0.1", "5.0.2", "5.0.3"):
        (p.dir / "VERSION").write_text(version + "\n")
        p.bg("deploy")
        assert p.answer().version == version
    releases = sorted(d.name for d in (p.deploy_to / "releases").iterdir()
                      if not d.name.startswith("."))  # the manifests beside them
    # keep=2: the two newest, which are also the live (5.0.3) and idle (5.0.2) slots' releases.
    assert [r.split("-")[0] for r in releases] == ["5.0.2", "5.0.3"]
    assert any(e["event"] == "prune" for e in p.history())
    p.bg("rollback")
    assert p.answer().version == "5.0.2"
    out = p.bg("prune", "--keep", "1")
    assert "removed 0 release(s)" in out.stdout  # both remaining releases are in slots


def test_deploys_never_touch_the_live_slot(project: Project) -> None:
    """Invariant 2, checked on the slot itself: a deploy to the idle colour, a re-deploy of
    the live release (a no-op there) and one whose release is already uploaded leave the
    live slot's process, state, env and release files as they were."""
    setup(project)
    project.deploy("1.0.0")
    before = live_slot(project)
    # The same artifact again (rebuilding it would give another sha256: gzip's mtime).
    out = project.bg("deploy", "--version", "1.0.0")  # the live release: nothing to do
    assert "already live on blue; nothing to deploy here" in out.stderr
    assert "uploading" not in out.stderr
    assert live_slot(project) == before
    project.deploy("2.0.0", "--no-promote")
    assert live_slot(project) == before
    project.bg("promote")
    live_green = live_slot(project)
    assert live_green.colour == "green" and live_green.proxy_workers != before.proxy_workers
    project.bg("rollback")
    before = live_slot(project)
    out = project.bg("deploy", "--version", "2.0.0", "--no-promote")  # already on the host
    assert "already on the host; upload skipped" in out.stderr
    assert live_slot(project) == before


def test_deploys_switches_and_drains_under_an_independent_client(project: Project,
                                                                  tmp_path: Path) -> None:
    """Zero downtime as a client in a process of its own sees it, over SSH too: deploys
    (the third drains and stops the colour live two deploys ago), a rollback and a promote,
    on keep-alive and fresh connections: not one failed request."""
    from loadclient import LoadClient

    p = project
    setup(p)
    p.deploy("1.0.0")
    client = LoadClient(tmp_path / "load.json", SERVER_NAME, [f"127.0.0.1:{p.nginx.port}"])
    try:
        p.deploy("2.0.0")
        out = p.deploy("3.0.0")
        assert "stopping blue" in out.stderr
        p.bg("rollback")
        p.bg("promote", "blue")
    finally:
        report = client.stop()
    assert report["failures"] == [], report
    assert report["requests"] > 50 and set(report["versions"]) <= {"1.0.0", "2.0.0", "3.0.0"}
    assert report["versions"].get("3.0.0") and report["versions"].get("2.0.0")


def test_promote_without_a_colour_only_goes_forward(local_project: Project) -> None:
    """A retried `promote` (a CI job run twice) must not put the old release back: the
    second one refuses (exit 1, nothing changed, a hint); `rollback` says which release it
    goes back to; naming the colour always works."""
    p = local_project
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    p.bg("promote")
    assert p.answer().version == "2.0.0"
    before = live_slot(p)
    again = p.bg("promote", check=1)
    assert "nothing newer to promote: blue holds 1.0.0" in again.stderr, again.stderr
    assert "`bluegreen rollback`" in again.stderr and "`bluegreen promote blue`" in again.stderr
    assert live_slot(p) == before and p.answer().version == "2.0.0"
    back = p.bg("rollback")
    assert "rolling back to 1.0.0-" in back.stderr and "away from 2.0.0-" in back.stderr
    assert p.answer().version == "1.0.0"
    p.bg("promote", "green")  # on purpose (without the colour: refused after a rollback)
    assert p.answer().version == "2.0.0"
    p.bg("promote", "blue")  # on purpose
    assert p.answer().version == "1.0.0"


def refused(p: Project, *args: str) -> dict[str, object]:
    """`bluegreen ARGS --json` refused with exit 1: its result."""
    out = p.bg(*args, "--json", check=1)
    result: dict[str, object] = json.loads(out.stdout)
    assert result["ok"] is False and result["exit_code"] == 1, result
    return result


def test_rollback_only_goes_backward(project: Project) -> None:
    """A repeated `rollback` (a CI retry, up-arrow) must not switch to the release it rolled
    away from, nor `rollback` to a release that was never live: exit 1 naming `rollback
    --to`, nothing switched."""
    p = project
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    result = json.loads(p.bg("rollback", "--json").stdout)
    assert result["ok"] is True and result["live"] == {"web1": "blue"}
    assert (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    before = live_slot(p)
    assert "rollback --to" in str(refused(p, "rollback")["error"])
    assert live_slot(p) == before and (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    # A release staged after the live one was never live: nothing to go back to there.
    p.deploy("3.0.0", "--no-promote")
    assert "rollback --to" in str(refused(p, "rollback")["error"])
    assert live_slot(p) == before and (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    # Going further back on purpose still works.
    p.bg("rollback", "--to", "2.0.0")
    assert p.answer().version == "2.0.0"


def test_promote_without_a_colour_does_not_undo_a_rollback(local_project: Project) -> None:
    """A retried CI `promote` after a human `rollback` must not ship the release rolled away
    from again (its slot started after the live one's, so a comparison of start times alone
    let it through): refused unless the colour is named. A release deployed after the
    rollback is promoted as usual."""
    p = local_project
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    p.bg("promote")
    p.bg("rollback")
    assert (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    before = live_slot(p)
    error = str(refused(p, "promote")["error"])
    assert "promote green" in error, error
    assert live_slot(p) == before and (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    p.bg("promote", "green")  # named: on purpose
    assert (p.answer().colour, p.answer().version) == ("green", "2.0.0")
    p.bg("rollback")
    assert (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    p.deploy("3.0.0", "--no-promote")  # a fixed release, staged after the rollback
    out = p.bg("promote", "--json")
    assert (p.answer().colour, p.answer().version) == ("green", "3.0.0")
    # The history is read with the lock: no round trip more than a promote of a colour.
    assert json.loads(out.stdout)["hosts"][0]["round_trips"]["total"] == 3, out.stdout


def test_rollback_to_an_older_kept_release(project: Project) -> None:
    """`rollback --to VERSION`: the kept release starts on the idle colour (no upload) and
    is promoted once healthy; an unknown one is refused with what is kept."""
    p = project
    setup(p)
    for version in ("1.0.0", "2.0.0", "3.0.0"):
        p.deploy(version)
    assert (p.answer().colour, p.answer().version) == ("blue", "3.0.0")
    out = p.bg("rollback", "--to", "1.0.0")
    assert "rolling back to 1.0.0-" in out.stderr and "upload skipped" in out.stderr
    assert "uploading" not in out.stderr
    assert (p.answer().colour, p.answer().version) == ("green", "1.0.0")
    assert p.bg("rollback").stdout.strip() == "web1: rolled back; live is blue"  # instant one
    assert p.answer().version == "3.0.0"
    missing = p.bg("rollback", "--to", "0.9.0", check=1)
    assert "no kept release is '0.9.0'" in missing.stderr and "2.0.0-" in missing.stderr
    assert p.answer().version == "3.0.0"


def test_a_kept_release_whose_files_changed_is_never_started(project: Project) -> None:
    """A kept release dir with a file changed (same size) or deleted since it was unpacked
    (a half-done prune, a stray `rm`) is not taken as whole: `rollback --to` it exits 1
    naming it and the file, live untouched; a deploy of its artifact unpacks it anew."""
    p = project
    setup(p)
    p.deploy("1.0.0")
    artifact = (p.dir / "artifacts" / "sample-1.0.0.tar.gz").read_bytes()
    p.deploy("2.0.0")
    releases = p.deploy_to / "releases"
    rid = next(d.name for d in releases.iterdir() if d.name.startswith("1.0.0-"))
    before = live_slot(p)
    (releases / rid / "VERSION").write_text("6.6.6\n")  # same size, other content
    out = p.bg("rollback", "--to", "1.0.0", check=1)
    assert f"release {rid} on this host is not as it was unpacked" in out.stderr, out.stderr
    assert "./VERSION: FAILED" in out.stderr and "deploy --version 1.0.0" in out.stderr
    assert live_slot(p) == before and (p.answer().colour, p.answer().version) == ("green", "2.0.0")
    (releases / rid / "app.py").unlink()
    out = p.bg("rollback", "--to", rid, check=1)
    assert "./app.py: FAILED" in out.stderr and rid in out.stderr, out.stderr
    assert live_slot(p) == before and (p.answer().colour, p.answer().version) == ("green", "2.0.0")
    # With the artifact at hand, a deploy of the same release unpacks it again.
    (p.dir / "artifacts" / "sample-1.0.0.tar.gz").write_bytes(artifact)  # the same bytes
    out = p.bg("deploy", "--version", "1.0.0")
    assert "not as it was unpacked" in out.stderr and "uploading" in out.stderr, out.stderr
    assert (p.answer().colour, p.answer().version) == ("blue", "1.0.0")
    assert (releases / rid / "VERSION").read_text() == "1.0.0\n"
    assert (releases / rid / "app.py").is_file()
    # Whole again: the next rollback --to it (from 3.0.0) reuses it without an upload.
    p.deploy("3.0.0")
    out = p.bg("rollback", "--to", "1.0.0")
    assert "upload skipped" in out.stderr and p.answer().version == "1.0.0"


def test_a_changed_release_the_live_slot_runs_from_is_not_unpacked_again(
        local_project: Project) -> None:
    """The release dir the live slot runs from is never removed by a deploy, also when its
    files changed since the unpack and the deploy brings its artifact (the live process is
    down, so the deploy goes to the idle colour): exit 1, nothing changed."""
    p = local_project
    setup(p)
    p.deploy("1.0.0")  # blue, live
    artifact = (p.dir / "artifacts" / "sample-1.0.0.tar.gz").read_bytes()
    p.deploy("2.0.0", "--no-promote")  # green, idle
    [rid] = [d.name for d in (p.deploy_to / "releases").iterdir() if d.name.startswith("1.0.0-")]
    tree = p.deploy_to / "releases" / rid
    (tree / "VERSION").write_text("6.6.6\n")
    os.killpg(int((p.deploy_to / "slots" / "blue" / "pid").read_text()), signal.SIGKILL)
    time.sleep(0.2)
    before = live_slot(p)
    (p.dir / "artifacts" / "sample-1.0.0.tar.gz").write_bytes(artifact)
    out = p.bg("deploy", "--version", "1.0.0", check=1)
    assert f"release {rid} on this host is not as it was unpacked" in out.stderr, out.stderr
    assert "The live slot runs from it" in out.stderr
    assert live_slot(p) == before and (tree / "VERSION").read_text() == "6.6.6\n"
    assert p.link_target().endswith("testapp-blue")


def test_a_release_changed_by_its_prepare_is_reused_as_prepared(local_project: Project) -> None:
    """What `release.prepare` changes in the release dir is part of it: the manifest is
    written again after it, so `rollback --to` that release reuses it (no refusal)."""
    p = local_project
    p.write_config(release={"version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz",
                            "prepare": "echo '# prepared' >> app.py"})
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    p.deploy("3.0.0")
    out = p.bg("rollback", "--to", "1.0.0")
    assert "upload skipped" in out.stderr and "prepare skipped" in out.stderr, out.stderr
    assert p.answer().version == "1.0.0"
    rid = p.status()["slots"]["green"]["release"]
    assert (p.deploy_to / "releases" / rid / "app.py").read_text().endswith("# prepared\n")


def test_history_records_no_switch_that_moved_nothing(local_project: Project) -> None:
    """A switch that moves nothing (the first deploy starts on the live colour; `promote`
    of the live colour) records no `promote`: history holds what changed."""
    p = local_project
    setup(p)
    p.deploy("1.0.0")
    assert [(e["event"], e["color"], e["version"]) for e in p.history()] == [
        ("deploy", "blue", "1.0.0")]
    p.bg("promote", "blue", "--json")
    assert len(p.history()) == 1
    p.deploy("2.0.0")
    events = p.history()
    assert [(e["event"], e["color"], e["version"], e["detail"]) for e in events] == [
        ("promote", "green", "2.0.0", "blue -> green"),
        ("deploy", "green", "2.0.0", "started on green"), ("deploy", "blue", "1.0.0",
                                                            "started on blue")]


def test_a_failed_event_names_its_colour_and_release(local_project: Project) -> None:
    p = local_project
    setup(p)
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    # A deploy that fails: blue is drained for 3.0.0, which exits at start.
    p.deploy("3.0.0", mode="exit", check=5)
    failed = p.history()[0]
    assert (failed["event"], failed["color"], failed["version"]) == ("failed", "blue", "3.0.0")
    assert failed["release"].startswith("3.0.0-")
    # A promote that fails: blue's 3.0.0 is not healthy.
    p.bg("promote", "blue", "--json", check=1)
    failed = p.history()[0]
    assert (failed["event"], failed["color"], failed["version"]) == ("failed", "blue", "3.0.0")
    assert p.answer().version == "2.0.0"


@pytest.mark.parametrize("kind", ["nginx", "haproxy"])


def test_before_the_first_release_the_proxy_says_none_is_deployed(kind: str,
                                                                   tmp_path: Path) -> None:
    """After `setup`, before the first deploy, the proxy answers / with a 503 that says no
    release is deployed yet (nginx answered a bare 502, HAProxy a bare 503), while
    /deployment_id keeps answering; also after a first release that failed; after the
    first deploy, 200 from the app, and a release that dies later is the proxy's plain
    error again (the page is not left)."""
    proxy: PrivateNginx | PrivateHAProxy
    if kind == "nginx":
        proxy = PrivateNginx(tmp_path / "nginx", free_port())
    else:
        proxy = PrivateHAProxy(tmp_path / "haproxy", free_port())
    proxy.write_config()
    proxy.start()
    p = make_project(tmp_path, proxy, None)
    try:
        p.bg("setup")
        a = p.answer()
        assert (a.status, a.colour) == (503, "blue"), a
        assert a.body.startswith("no release deployed yet"), a.body
        assert get(proxy.port, "/deployment_id").body.strip() == "blue"
        p.bg("setup")  # a re-run keeps it
        assert p.answer().body.startswith("no release deployed yet")
        p.deploy("0.9.0", mode="exit", check=5)  # a first release that exits at start
        a = p.answer()
        assert a.status == 503 and a.body.startswith("no release deployed yet"), a
        p.deploy("1.0.0")
        a = p.answer()
        assert (a.status, a.colour, a.version) == (200, "blue", "1.0.0")
        os.killpg(int((p.deploy_to / "slots" / "blue" / "pid").read_text()), signal.SIGKILL)
        time.sleep(0.3)
        a = p.answer()
        assert a.status in (502, 503) and "no release deployed yet" not in a.body, a
        p.bg("setup")  # a release ran on blue: plain files
        assert "no release deployed yet" not in p.answer().body
    finally:
        p.cleanup()
        proxy.stop()
