"""Slots under systemd on real Debian servers with systemd as PID 1 (namespaces over an
overlay of /, see tests/systemd_host.py): the system nginx and `systemctl reload nginx`,
units per colour, the journal, a least-privilege deploy user, an Elixir release. Power cuts
are in test_systemd_power.py."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from conftest import BLUEGREEN
from systemd_host import APP, UNIT, Site, SystemdHost, SystemdLab, lab  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def server(lab: SystemdLab) -> SystemdHost:
    """One server for the tests that need no reboot (each cleans up after itself)."""
    host = lab.add()
    host.boot()
    return host


@pytest.fixture
def site(lab: SystemdLab, server: SystemdHost, tmp_path: Path) -> Iterator[Site]:
    s = Site(lab, server, tmp_path / "project")
    yield s
    server.shell(f"systemctl disable -q --now 'bluegreen-{APP}@blue' 'bluegreen-{APP}@green'; "
                 f"rm -rf /srv/{APP} {UNIT} /etc/nginx/sites-enabled/{APP} "
                 f"/etc/nginx/sites-available/{APP}-*; systemctl daemon-reload; "
                 "systemctl reload nginx", check=False)


def test_deploy_promote_rollback_under_systemd(site: Site) -> None:
    site.artifact("1.0.0")
    check = site.bg("check")
    assert "slots run under systemd" in check.stdout, check.stdout
    site.bg("setup")
    unit = site.host.exec("cat", UNIT).stdout
    assert "ExecStart=/bin/sh /srv/testapp/slots/%i/start.sh" in unit
    verify = site.host.exec("systemd-analyze", "verify", f"bluegreen-{APP}@blue.service",
                            check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "installing" not in site.bg("setup").stderr  # idempotent: no daemon-reload

    site.deploy("1.0.0")
    assert (site.answer().colour, site.answer().version) == ("blue", "1.0.0")
    site.deploy("2.0.0")
    assert (site.answer().colour, site.answer().version) == ("green", "2.0.0")
    for colour in ("blue", "green"):
        assert site.unit(colour, "ActiveState") == "active"
        assert site.unit(colour, "UnitFileState") == "enabled"
    status = site.status()
    green = status["slots"]["green"]
    assert green["unit"]["active_state"] == "active" and green["unit"]["enabled"] is True
    assert green["unit"]["main_pid"] and green["own"] is True and green["healthy"] is True
    # The secrets file stays out of the unit's properties.
    env = site.unit("green", "Environment") + site.unit("green", "EnvironmentFiles")
    assert "BLUEGREEN" not in env and "PORT" not in env

    site.bg("rollback")
    assert (site.answer().colour, site.answer().version) == ("blue", "1.0.0")
    site.bg("promote", "green")
    assert site.answer().version == "2.0.0"

    # systemd restarts a crashed slot; status tells.
    pid = int(site.unit("green", "MainPID"))
    site.host.exec("kill", "-9", str(pid))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and site.unit("green", "NRestarts") == "0":
        time.sleep(0.1)
    while time.monotonic() < deadline and site.answer().version != "2.0.0":
        time.sleep(0.1)
    assert site.answer().version == "2.0.0"
    assert site.status()["slots"]["green"]["unit"]["restarts"] >= 1

    logs = site.bg("logs", "-n", "50").stdout
    assert "2.0.0" in logs or "listening" in logs.lower(), logs

    site.bg("stop", "blue")
    assert site.unit("blue", "UnitFileState") == "disabled"
    assert site.unit("blue", "ActiveState") in ("inactive", "failed")


def test_unhealthy_release_under_systemd_shows_journal_and_stays_off(site: Site) -> None:
    site.bg("setup")
    site.deploy("1.0.0")
    out = site.deploy("2.0.0", mode="exit", check=5)
    assert "restarted" in out.stderr or "exited" in out.stderr, out.stderr
    assert "last lines" in out.stderr
    assert site.answer().version == "1.0.0"
    # A release that never became healthy is not started again at boot.
    assert site.unit("green", "UnitFileState") == "disabled"


def test_unit_template_override(site: Site) -> None:
    (site.dir / "unit.j2").write_text(
        "[Unit]\nDescription=custom {{ app }} %i\n[Service]\nType=exec\n"
        "ExecStart=/bin/sh {{ slots_dir }}/%i/start.sh\nTimeoutStopSec={{ stop_timeout }}\n"
        "Restart=always\n[Install]\nWantedBy=multi-user.target\n")
    site.run = {"unit_template": "unit.j2"}
    site.write_config()
    site.bg("setup")
    assert "Description=custom testapp %i" in site.host.exec("cat", UNIT).stdout
    site.deploy("1.0.0")
    assert site.unit("blue", "Restart") == "always"
    assert site.answer().version == "1.0.0"


# The one-time preparation of a server for a deploy user, as docs/servers.md gives it.
PREPARE_DEPLOY_USER = f"""
useradd --create-home --shell /bin/bash deploy
install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
install -m 0600 -o deploy -g deploy /root/.ssh/authorized_keys /home/deploy/.ssh/
install -d -o deploy -g deploy /srv/{APP}
usermod -aG systemd-journal deploy
"""


def test_least_privilege_deploy_user_with_only_the_printed_sudoers(
        lab: SystemdLab, server: SystemdHost, tmp_path: Path) -> None:
    server.shell(PREPARE_DEPLOY_USER)
    site = Site(lab, server, tmp_path / "project", user="deploy")
    site.artifact("1.0.0")
    check = site.bg("check", check=1)
    assert "sudo" in check.stdout and "--print-sudoers" in check.stdout, check.stdout

    drop_in = site.bg("setup", "--print-sudoers").stdout
    lines = [line for line in drop_in.splitlines() if not line.startswith("#")]
    assert lines and all(line.startswith("deploy ALL=(root) NOPASSWD: /") for line in lines)
    assert not any(w in drop_in for w in ("*", " sh ", "/bin/sh", "bash", "ALL\n"))
    assert "/usr/bin/systemctl restart bluegreen-testapp@green.service" in drop_in
    assert "/usr/sbin/nginx -t" in drop_in and "/usr/bin/systemctl reload nginx" in drop_in
    server.exec("sh", "-c", "cat > /etc/sudoers.d/bluegreen-testapp && chmod 0440 "
                "/etc/sudoers.d/bluegreen-testapp && visudo -cf /etc/sudoers.d/bluegreen-testapp",
                input=drop_in)

    # Files whose content runs as root (the unit, the site files) are not in the drop-in:
    # setup says an admin installs them, and prints the script for that.
    assert " tee " not in drop_in and "sites-available/testapp-blue" not in drop_in.replace(
        "ln -sfn /etc/nginx/sites-available/testapp-blue", "")
    out = site.bg("setup", check=1)
    assert "--print-root-files" in out.stderr and "not installed" in out.stderr
    server.exec("sh", "-s", input=site.bg("setup", "--print-root-files").stdout)

    assert "every host is ready" in site.bg("check").stdout
    site.bg("setup")
    site.deploy("1.0.0")
    site.deploy("2.0.0")
    assert (site.answer().colour, site.answer().version) == ("green", "2.0.0")
    main_pid = site.unit("green", "MainPID")
    assert server.exec("ps", "-o", "user=", "-p", main_pid).stdout.strip() == "deploy"
    assert server.exec("stat", "-c", "%U", f"/etc/nginx/sites-available/{APP}-green"
                       ).stdout.strip() == "root"
    site.bg("rollback")
    assert site.answer().version == "1.0.0"
    assert "1.0.0" in site.bg("logs", "--color", "blue", "-n", "100").stdout
    site.bg("stop", "green")
    assert site.unit("green", "UnitFileState") == "disabled"

    # Nothing outside the drop-in: no other unit, no shell, no other file.
    ssh = [*server.ssh[:-1], f"deploy@{server.address}"]
    for refused in ("sudo -n systemctl stop nginx", "sudo -n sh -c id",
                    "sudo -n tee /etc/passwd </dev/null",
                    "sudo -n systemctl restart bluegreen-other@blue.service"):
        proc = subprocess.run([*ssh, refused], capture_output=True, text=True, timeout=30)
        assert proc.returncode != 0, refused
    server.shell(f"systemctl disable -q --now bluegreen-{APP}@blue bluegreen-{APP}@green; "
                 f"rm -rf /srv/{APP} {UNIT} /etc/sudoers.d/bluegreen-{APP} "
                 f"/etc/nginx/sites-enabled/{APP} /etc/nginx/sites-available/{APP}-*; "
                 "systemctl daemon-reload; systemctl reload nginx; userdel -r deploy",
                 check=False)




def test_elixir_release_in_the_foreground_under_systemd(site: Site, tmp_path: Path) -> None:
    """The Elixir preset's way under systemd: `bin/APP start` in the foreground, a node per
    colour (RELEASE_NODE), migrations with the slot's release, a console on the slot's node."""
    import pexpect

    from test_elixir import build_elixir_release

    tree = build_elixir_release(tmp_path / "elixir")
    site.run = {"command": "exec bin/bgapp start", "migrate": "bin/bgapp eval "
                "'Bgapp.Release.migrate()'", "console": "bin/bgapp remote", "health_timeout": 30,
                "stop_timeout": 15, "env": {"RELEASE_NODE": "{app}_{color}",
                                             "RELEASE_TMP": "{slot_dir}/tmp",
                                             "MIGRATIONS_FILE": "{deploy_to}/migrations.log"}}
    site.write_config()
    site.bg("setup")
    for version in ("1.0.0", "2.0.0", "3.0.0", "4.0.0"):
        (tree / "VERSION").write_text(version + "\n")
        artifact = site.dir / "artifacts" / f"sample-{version}.tar.gz"
        artifact.parent.mkdir(exist_ok=True)
        subprocess.run(["tar", "-czf", str(artifact), "-C", str(tree), "."], check=True)
        site.bg("deploy", "--version", version)
    # Each colour was stopped and started again since the first deploy: the node still
    # reachable for the console proves the port mapper (epmd.service) outlives the slots.
    assert site.answer().body.startswith("hello from 4.0.0 (green)")
    assert site.unit("blue", "ActiveState") == "active"  # both nodes run side by side
    migrations = site.host.exec("cat", f"/srv/{APP}/migrations.log").stdout
    assert "migrated 4.0.0 colour=green" in migrations
    pid = site.unit("green", "MainPID")
    child = pexpect.spawn(BLUEGREEN[0], [*BLUEGREEN[1:], "console"], cwd=str(site.dir),
                          env={**os.environ, "HOME": str(site.home), "TERM": "xterm"},
                          encoding="utf-8", timeout=30)
    try:
        child.expect(r"iex\([^)]*testapp_green@[^)]*\)\d+>")
        child.sendline('IO.puts("answer=#{node()}/#{Bgapp.version()}")')
        child.expect(r"answer=testapp_green@[^/\s]+/4\.0\.0\r\n")
    finally:
        child.terminate(force=True)
    assert site.unit("green", "MainPID") == pid  # the console did not disturb the node
    site.bg("rollback")
    assert site.answer().body.startswith("hello from 3.0.0 (blue)")


def test_root_files_run_the_units_as_the_ssh_user_the_host_names(
        lab: SystemdLab, server: SystemdHost, tmp_path: Path) -> None:
    """With `sudo = true` and an address without `user@` (the user from ~/.ssh/config),
    the unit runs the slots as that user, as the host says (`id -un`): a `User=root` unit
    would run, as root, the start script the deploy user rewrites before each restart. A
    unit that would run as root or as another user is refused (exit 2)."""
    server.shell(PREPARE_DEPLOY_USER)
    try:
        site = Site(lab, server, tmp_path / "project", user="deploy")
        drop_in = site.bg("setup", "--print-sudoers").stdout  # it wants "deploy@" (yet)
        config = site.dir / "bluegreen.toml"
        config.write_text(config.read_text().replace(f'"deploy@{server.address}"',
                                                     f'"{server.address}"'))
        ssh_config = site.home / ".ssh" / "config"
        ssh_config.parent.mkdir(mode=0o700)
        ssh_config.write_text(f"Host {server.address}\n  User deploy\n")
        script = site.bg("setup", "--print-root-files").stdout
        assert "User=deploy" in script and "User=root" not in script, script

        # Installed, it runs the slots as deploy.
        server.exec("sh", "-c", "cat > /etc/sudoers.d/bluegreen-testapp && chmod 0440 "
                    "/etc/sudoers.d/bluegreen-testapp", input=drop_in)
        server.exec("sh", "-s", input=script)
        site.bg("setup")
        site.deploy("1.0.0")
        main_pid = site.unit("blue", "MainPID")
        assert server.exec("ps", "-o", "user=", "-p", main_pid).stdout.strip() == "deploy"

        # A unit template that runs the slots as root, or as another user: refused.
        for user in ("root", "nobody"):
            (site.dir / "unit.j2").write_text(
                f"[Service]\nUser={user}\nExecStart=/bin/sh {{{{ slots_dir }}}}/%i/start.sh\n")
            text = config.read_text()
            if "unit_template" not in text:
                config.write_text(text.replace("[run]\n", '[run]\nunit_template = "unit.j2"\n'))
            out = site.bg("setup", "--print-root-files", check=2)
            assert f"User={user}" not in out.stdout
            assert "sudo = true" in out.stderr and "'deploy'" in out.stderr, out.stderr
        # And an SSH user that is root, with sudo = true.
        ssh_config.write_text(f"Host {server.address}\n  User root\n")
        config.write_text(config.read_text().replace('unit_template = "unit.j2"\n', ""))
        out = site.bg("setup", "--print-root-files", check=2)
        assert "User=root" not in out.stdout and "'root'" in out.stderr, out.stderr
    finally:
        server.shell(f"systemctl disable -q --now bluegreen-{APP}@blue bluegreen-{APP}@green; "
                     f"rm -rf /srv/{APP} {UNIT} /etc/sudoers.d/bluegreen-{APP} "
                     f"/etc/nginx/sites-enabled/{APP} /etc/nginx/sites-available/{APP}-*; "
                     "systemctl daemon-reload; systemctl reload nginx; userdel -r deploy",
                     check=False)
