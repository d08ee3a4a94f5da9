"""Connecting: host keys verified (never accepted), unreachable hosts, `check`, secrets,
and shell metacharacters in values that reach a host."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from bluegreen.demo.nginx import PrivateNginx
from conftest import Project, free_port, run_cli, sample_artifact, squatter


def test_wrong_host_key_is_refused(ssh_project: Project, tmp_path: Path) -> None:
    project = ssh_project
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    bad = tmp_path / "known_hosts_bad"
    pub = (tmp_path / "other_key.pub").read_text().split()
    assert project.sshd is not None
    bad.write_text(f"[127.0.0.1]:{project.sshd.port} {pub[0]} {pub[1]}\n")
    project.host_override = {"known_hosts": str(bad)}
    project.write_config()
    out = project.bg("status", check=3)
    assert "unreachable" in out.stdout and "host key" in out.stdout
    out = project.bg("setup", check=3)
    assert "host key" in out.stderr and "not accepted" in out.stderr
    assert not project.deploy_to.exists()  # nothing was touched
    assert bad.read_text().count("\n") == 1  # and the key was not added

    project.host_override = {"known_hosts": str(tmp_path / "missing_known_hosts")}
    project.write_config()
    out = project.deploy("1.0.0", check=3)
    assert "no known_hosts file" in out.stderr


def test_local_host_needs_no_known_hosts(local_project: Project) -> None:
    """`local` never uses SSH: it works with HOME holding no known_hosts file at all."""
    assert not (local_project.home / ".ssh").exists()
    local_project.bg("setup")
    assert local_project.status()["reachable"] is True


def test_unreachable_host_exit_3(ssh_project: Project) -> None:
    """An SSH host whose port is closed: exit 3 for a command that changes things, and
    status lists it as unreachable (also exit 3)."""
    project = ssh_project
    project.host_override = {"port": free_port()}
    project.write_config()
    out = project.bg("setup", check=3)
    assert "cannot connect to root@127.0.0.1" in out.stderr
    out = project.bg("status", "--json", check=3)
    data = json.loads(out.stdout)
    assert data["hosts"][0]["reachable"] is False


def test_check_reports_what_setup_would_do(project: Project) -> None:
    # The local side first: no artifact and no release.build to make it: a note (deploy
    # will need --artifact), not a failure.
    out = project.bg("check")
    assert "does not exist and there is no release.build" in out.stdout
    project.artifact("1.0.0")
    out = project.bg("check")
    assert "setup will create it" in out.stdout
    assert f"port {project.blue} (blue)" in out.stdout and "free" in out.stdout
    assert "setup will link blue" in out.stdout
    assert "passes" in out.stdout  # nginx -t
    assert not project.deploy_to.exists()  # check changes nothing
    project.bg("setup")
    out = project.bg("check")
    assert "live is blue" in out.stdout
    # Advice from the nginx it sees (no worker_shutdown_timeout here): notes naming the
    # version installed on this machine.
    installed = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr
    version = installed.strip().rsplit("/", 1)[-1].split()[0]
    assert f"note {version}" in out.stdout and "keepalive_min_timeout" in out.stdout
    assert "worker_shutdown_timeout" in out.stdout and "note not set" in out.stdout
    assert isinstance(project.nginx, PrivateNginx)
    project.nginx.write_config(workers=1, main="worker_shutdown_timeout 10m;\n")
    out = project.bg("check")
    assert "ok 10m: websockets" in out.stdout
    project.extra_proxy = {"sites_available": str(project.dir / "nope")}
    project.write_config()
    out = project.bg("check", check=1)
    assert "FAIL" in out.stdout and "missing" in out.stdout
    project.extra_proxy = {}
    project.write_config()
    project.deploy("1.0.0")
    # Another app's process on the idle slot's port: named before any deploy fails on it.
    with squatter(project.green) as other:
        out = project.bg("check", check=1)
        assert f"held by pid {other.pid}, not this app's slot" in out.stdout
        assert "held by this app's own slot" in out.stdout  # blue: ours
    project.write_config(release={"version": "1.0.0", "build": "no-such-builder --all"})
    out = project.bg("check", check=1)
    assert "`no-such-builder` not found" in out.stdout


def check_rows(project: Project, code: int) -> dict[str, tuple[bool | None, str]]:
    """`check --json`'s rows, this machine's and the host's, by item (exit ``code``)."""
    data = json.loads(project.bg("check", "--json", check=code).stdout)
    assert data["ok"] is (code == 0)
    rows = [*data["local"], *(row for host in data["hosts"] for row in host["items"])]
    return {row["item"]: (row["ok"], row["detail"]) for row in rows}


def test_check_fails_what_deploy_would_trip_on_and_not_a_ci_artifact(
        project: Project, tmp_path: Path) -> None:
    """A project whose artifact comes from `deploy --artifact` (no release.build, nothing
    at release.artifact yet) passes `check`, with a note naming --artifact (it FAILed, so
    a CI could never get a green check), and deploys. `check` FAILs, each with its fix,
    what `setup` or `deploy` would trip on and it said ready to: a missing
    run.env_file, nginx not running on the host, a `git archive` build outside a git
    repository or without a commit."""
    rows = check_rows(project, 0)
    ok, detail = rows["release.artifact"]
    assert ok is None and "--artifact" in detail
    ci_built = sample_artifact(tmp_path / "ci", "1.0.0")
    project.bg("setup")
    project.bg("deploy", "--artifact", str(ci_built))
    assert (project.answer().status, project.answer().colour) == (200, "blue")

    project.extra_run = {"env_file": ".env.production"}
    project.write_config()
    ok, detail = check_rows(project, 1)["run.env_file .env.production"]
    assert ok is False and "does not exist" in detail and "create it" in detail
    (project.dir / ".env.production").write_text("A=1\nB=2\n")
    assert check_rows(project, 0)["run.env_file .env.production"] == (True, "2 variable(s)")

    project.write_config(release={
        "version": "1.0.0", "artifact": "dist/app-{version}.tar.gz",
        "build": "mkdir -p dist && git archive --format=tar HEAD | gzip -n > "
                 "dist/app-{version}.tar.gz"})
    ok, detail = check_rows(project, 1)["release.build sources"]
    assert ok is False and "not in a git repository" in detail
    git = ["git", "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=project.dir, check=True)
    ok, detail = check_rows(project, 1)["release.build sources"]
    assert ok is False and "no commit yet" in detail
    subprocess.run([*git, "add", "bluegreen.toml"], cwd=project.dir, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "x"], cwd=project.dir, check=True)
    ok, detail = check_rows(project, 0)["release.build sources"]
    assert ok is None and "uncommitted change(s)" in detail  # .env.production, artifacts/

    assert check_rows(project, 0)["nginx running"][0] is True
    project.nginx.stop()
    ok, detail = check_rows(project, 1)["nginx running"]
    assert ok is False and "not running" in detail and "start it" in detail
    assert project.bg("setup", check=False).returncode != 0  # what check now names


def test_secrets_never_printed_and_metacharacters_stay_text(project: Project) -> None:
    secret = "s3cr3t-Value-42"
    (project.dir / ".env.production").write_text(
        f"DATABASE_PASSWORD={secret}\nQUOTED=\"a b $(touch {project.dir}/pwned1)\"\n")
    # The app itself prints the secret to its log; bluegreen must mask it in the log tail.
    project.extra_run = {"command": 'echo "db password is $DATABASE_PASSWORD"; exec python3 app.py',
                         "env_file": ".env.production",
                         "env": {"ODD": f"x; touch {project.dir}/pwned2 `touch {project.dir}/pwned3`"}}
    project.write_config()
    project.bg("setup")
    out1 = project.deploy("1.0.0")
    out2 = project.deploy("2.0.0", mode="unhealthy", check=5)
    hist = project.bg("history", "--json").stdout
    status = project.bg("status", "--json").stdout
    for text in (out1.stdout, out1.stderr, out2.stdout, out2.stderr, hist, status,
                 (project.deploy_to / "history.jsonl").read_text()):
        assert secret not in text
    assert "db password is ********" in out2.stderr  # the log tail, masked
    # Every remote command shown (-v), the JSON progress lines, the logs and check.
    project.artifact("3.0.0")
    verbose = project.bg("deploy", "--version", "3.0.0", "-v", "--json")
    assert json.loads(verbose.stdout)["ok"] is True and '"level"' in verbose.stderr
    logs = project.bg("logs", "-n", "500")
    assert "db password is ********" in logs.stdout
    check = project.bg("check")
    for text in (verbose.stdout, verbose.stderr, logs.stdout, logs.stderr, check.stdout,
                 check.stderr):
        assert secret not in text
    for marker in ("pwned1", "pwned2", "pwned3"):
        assert not (project.dir / marker).exists()
    shared = project.deploy_to / "shared" / ".env"
    assert oct(shared.stat().st_mode & 0o777) == "0o600"
    assert oct((project.deploy_to / "slots" / "blue" / "env").stat().st_mode & 0o777) == "0o600"
    # The app got the values as plain text.
    pid = project.status()["slots"]["green"]["pid"]
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"DATABASE_PASSWORD={secret}".encode() in environ
    assert f"QUOTED=a b $(touch {project.dir}/pwned1)".encode() in environ
    assert any(e.startswith(b"ODD=x; touch ") for e in environ)
    for path in project.deploy_to.rglob("*"):
        if not path.is_symlink():
            assert not path.stat().st_mode & 0o002, f"{path} is world-writable"
    assert os.environ.get("DATABASE_PASSWORD") is None



def test_a_failing_app_that_prints_its_secrets_leaks_them_nowhere(ssh_project: Project) -> None:
    """An app that prints its secrets (from `run.env_file` and from `[run.secrets]`) and
    then never becomes healthy, or exits: no secret shows in `deploy --json` (the stdout
    document and the stderr events), `-v` (tracebacks too), the error's log tail; nor in
    `migrate` (which fails printing them) or `logs`. Also the secrets given before a
    rotation: the live slot still runs with them, and the idle slot's log holds them."""
    p = ssh_project
    old = ("0ld-Env-Secret-41", "0ld-Command-Secret-6")
    new = ("n3w-Env-Secret-42", "n3w-Command-Secret-7")

    def use(secrets: tuple[str, str]) -> None:
        (p.dir / ".env.production").write_text(f"DATABASE_PASSWORD={secrets[0]}\n")
        p.extra_run["secrets"] = {"API_TOKEN": {"command": f"printf %s {secrets[1]}"}}
        p.write_config()

    p.extra_run = {"command": 'echo "db=$DATABASE_PASSWORD token=$API_TOKEN"; '
                              'echo "db=$DATABASE_PASSWORD token=$API_TOKEN" >&2; '
                              "exec python3 app.py",
                   "env_file": ".env.production", "health_timeout": 3}
    use(old)
    p.bg("setup")
    p.deploy("1.0.0")  # blue
    p.deploy("2.0.0")  # green, live: it keeps the old secrets
    p.extra_run["migrate"] = ('echo "migrating db=$DATABASE_PASSWORD token=$API_TOKEN"; '
                              'echo "no db at $DATABASE_PASSWORD" >&2; exit 3')
    use(new)
    outputs = []
    for version, mode in (("3.0.0", "unhealthy"), ("4.0.0", "exit")):
        p.artifact(version, mode)
        for flags in (["--json"], ["--json", "-v"], ["-v"]):
            out = p.bg("deploy", "--version", version, *flags, check=5)
            outputs.append(out)
            if "--json" in flags:
                doc = json.loads(out.stdout)
                assert doc["ok"] is False and "db=******** token=********" in doc["error"]

    def leaks(texts: list[subprocess.CompletedProcess[str]]) -> list[str]:
        return [s for out in texts for text in (out.stdout, out.stderr)
                for s in (*old, *new) if s in text]

    assert not leaks(outputs), [o.stdout + o.stderr for o in outputs]
    migrate = p.bg("migrate", "--color", "green", check=1)
    assert "migrating db=******** token=********" in migrate.stderr
    logs = [p.bg("logs", "--color", c, "-n", "500") for c in ("blue", "green")]
    for out in logs:
        assert "db=******** token=********" in out.stdout
    assert not leaks([migrate, *logs]), [o.stdout + o.stderr for o in (migrate, *logs)]
    assert p.answer().body.startswith("hello from 2.0.0")


def test_relative_key_paths_are_relative_to_the_config_file(ssh_project: Project) -> None:
    """`identity_file` and `known_hosts` given relative are read next to the config file,
    also when bluegreen runs from another directory (`-c deploy/bluegreen.toml`)."""
    p = ssh_project
    assert p.sshd is not None
    keys = p.dir / "deploy" / "keys"
    keys.mkdir(parents=True)
    for src in (p.sshd.client_key, p.sshd.known_hosts):
        (keys / src.name).write_bytes(src.read_bytes())
    (keys / p.sshd.client_key.name).chmod(0o600)
    p.host_override = {"identity_file": f"keys/{p.sshd.client_key.name}",
                       "known_hosts": f"keys/{p.sshd.known_hosts.name}"}
    config = p.write_config()
    # The project root holds other files of the same names that would not work.
    (p.dir / "keys").mkdir()
    (p.dir / "keys" / p.sshd.known_hosts.name).write_text("")
    (p.dir / "deploy" / "bluegreen.toml").write_text(
        config.read_text().replace('"artifacts/', '"../artifacts/'))
    config.unlink()
    p.bg("setup", "-c", "deploy/bluegreen.toml")
    status = json.loads(p.bg("status", "--json", "-c", "deploy/bluegreen.toml").stdout)
    assert status["hosts"][0]["reachable"] is True and status["hosts"][0]["live"] == "blue"


def test_default_known_hosts_is_the_users_and_never_written(ssh_project: Project) -> None:
    """No `known_hosts` in the config: ~/.ssh/known_hosts is used. Missing, or without this
    host's key: exit 3 and nothing added; with the key: it connects."""
    p = ssh_project
    assert p.sshd is not None
    p.host_override = {"known_hosts": None}
    p.write_config()
    out = p.bg("setup", check=3)
    assert "no known_hosts file" in out.stderr and not p.deploy_to.exists()
    ssh_dir = p.home / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "known_hosts").write_text("")
    out = p.bg("setup", check=3)
    assert "not accepted" in out.stderr or "host key" in out.stderr
    assert (ssh_dir / "known_hosts").read_text() == ""  # never added
    (ssh_dir / "known_hosts").write_text(p.sshd.known_hosts.read_text())
    p.bg("setup")
    assert p.status()["live"] == "blue"


def test_a_command_that_exits_before_reading_its_input_is_not_a_lost_connection(
        ssh_project: Project) -> None:
    """Over a real sshd: a remote command that exits without reading its stdin (as the
    lock command does when the lock is held: exit 73 at once) gives its exit status; the
    input that could not be sent is not a lost connection (exit 3). Seen in CI as a held
    lock reported as exit 3 on a loaded machine; a large input makes the race certain."""
    import asyncio

    from bluegreen.config import HostConfig
    from bluegreen.hosts import connect
    from bluegreen.hosts.base import ran, run_op

    assert ssh_project.sshd is not None
    cfg = HostConfig(address="root@127.0.0.1", port=ssh_project.sshd.port,
                     identity_file=str(ssh_project.sshd.client_key),
                     known_hosts=str(ssh_project.sshd.known_hosts))

    async def go() -> int:
        host = await connect(cfg)
        try:
            argv = ["sh", "-c", "exit 73"]
            [answer] = await host.batch([run_op(argv, "x" * 20_000_000)])
            return ran(host.name, argv, answer, 60).exit_status
        finally:
            await host.close()

    assert asyncio.run(go()) == 73


def test_secrets_from_the_environment_and_a_command_reach_only_the_env_file(
        project: Project) -> None:
    """`[run.secrets]` from bluegreen's environment and from a local command (as a
    password manager CLI): in the slot's env, never printed (masked even when the app
    logs them), never written locally, on the host only in 0600 files."""
    from_env, from_command = "env-Secret-8d1f", "cmd-Secret-77ab"
    project.extra_run = {
        "command": 'echo "token $API_TOKEN pass $DB_PASS"; exec python3 app.py',
        "secrets": {"API_TOKEN": {"env": "CI_API_TOKEN"},
                    "DB_PASS": {"command": "printf 'cmd-Secret-%s\\n' 77ab"}}}
    project.write_config()
    project.bg("setup")
    project.artifact("1.0.0")
    env = {"CI_API_TOKEN": from_env}
    out = run_cli(project.dir, project.home, ["deploy", "--version", "1.0.0", "-v"], env=env)
    logs = project.bg("logs", "-n", "50")
    assert "token ******** pass ********" in logs.stdout
    shown = project.bg("exec", "--", "sh", "-c", 'echo "$API_TOKEN $DB_PASS"')
    assert shown.stdout.split() == [from_env, from_command]  # the slot has them
    for text in (out.stdout, out.stderr, logs.stdout, project.bg("status", "--json").stdout,
                 project.bg("history", "--json").stdout):
        assert from_env not in text and from_command not in text
    for path in [*project.dir.rglob("*"), *project.home.rglob("*")]:
        if path.is_file() and not path.is_relative_to(project.deploy_to):
            data = path.read_bytes()
            assert from_env.encode() not in data and from_command.encode() not in data, path
    holders = {p.relative_to(project.deploy_to) for p in project.deploy_to.rglob("*")
               if p.is_file() and from_command.encode() in p.read_bytes()}
    # the env files, and the log the app itself wrote them to (on purpose, above)
    assert holders == {Path("shared/.env"), Path("slots/blue/env"), Path("slots/blue/log")}
    for held in ("shared/.env", "slots/blue/env"):
        assert oct((project.deploy_to / held).stat().st_mode & 0o777) == "0o600"
    # A secret that cannot be resolved stops the deploy before anything changes.
    failed = project.bg("deploy", "--version", "1.0.0", check=2)
    assert "run.secrets.API_TOKEN: $CI_API_TOKEN is not set" in failed.stderr


def test_closed_port_is_reported_as_such_and_the_port_can_come_from_ssh_config(
        ssh_project: Project) -> None:
    """A closed SSH port with no known_hosts file is "connection refused", not a known_hosts
    problem; a host without `port` in the config uses ~/.ssh/config's Port (and HostName,
    User), as ssh does."""
    p = ssh_project
    assert p.sshd is not None
    closed = free_port()
    p.host_override = {"known_hosts": None, "port": closed}
    p.write_config()
    out = p.bg("status", check=3)
    assert f"port {closed}" in out.stdout and "no known_hosts" not in out.stdout, out.stdout
    assert "refused" in out.stdout.lower() or "connect" in out.stdout.lower()
    ssh_dir = p.home / ".ssh"
    ssh_dir.mkdir()
    (ssh_dir / "known_hosts").write_text(p.sshd.known_hosts.read_text())
    (ssh_dir / "config").write_text(
        f"Host web-alias\n    HostName 127.0.0.1\n    Port {p.sshd.port}\n    User root\n"
        f"    IdentityFile {p.sshd.client_key}\n")
    p.host_override = {"known_hosts": None, "port": None, "identity_file": None,
                       "address": "web-alias"}
    p.write_config()
    p.bg("setup")
    assert p.status()["reachable"] is True


def test_a_host_without_python3_is_told_so_and_nothing_changes(ssh_project: Project) -> None:
    """bluegreen's agent runs with the host's python3: a login whose PATH has none (its
    .bashrc here) is exit 3 with what to install, before anything is locked or written."""
    p = ssh_project
    assert p.sshd is not None
    p.bg("setup")
    before = p.history()
    rc = p.sshd.dir / "root-home" / ".bashrc"
    rc.write_text("PATH=/nonexistent\n")
    try:
        out = p.bg("promote", "blue", check=3)
    finally:
        rc.unlink()
    assert "has no python3" in out.stderr and "apt install python3-minimal" in out.stderr
    assert not (p.deploy_to / "lock").exists()
    assert p.history() == before


def test_a_login_that_prints_a_banner_does_not_disturb_the_agent(ssh_project: Project) -> None:
    """Many servers' rc files print something (a banner, a version manager's notice) before
    the agent starts: those lines are skipped."""
    p = ssh_project
    assert p.sshd is not None
    p.bg("setup")
    rc = p.sshd.dir / "root-home" / ".bashrc"
    rc.write_text('echo "Welcome to web1"\necho "{not json"\n')
    try:
        p.deploy("1.0.0")
    finally:
        rc.unlink()
    assert p.answer().version == "1.0.0"


def test_the_agent_shows_a_short_command_line_on_the_server(ssh_project: Project) -> None:
    """`ps` on a server showed the agent's whole source as one `python3 -c "..."` line: it
    is a short bootstrap that reads the source from stdin, and works as before."""
    import asyncio

    from bluegreen.config import HostConfig
    from bluegreen.hosts import connect
    from bluegreen.hosts.base import ran, run_op

    assert ssh_project.sshd is not None
    cfg = HostConfig(address="root@127.0.0.1", port=ssh_project.sshd.port,
                     identity_file=str(ssh_project.sshd.client_key),
                     known_hosts=str(ssh_project.sshd.known_hosts))

    async def go() -> tuple[str, list[str]]:
        host = await connect(cfg)
        try:
            argv = ["sh", "-c", "cat; echo $PPID"]
            [answer] = await host.batch([run_op(argv, "from stdin ")])
            out = ran(host.name, argv, answer, 60).stdout
            # The agent runs while the host is open: its whole command line (ps shows it).
            agent = out.split()[-1]
            args = Path(f"/proc/{agent}/cmdline").read_bytes().replace(b"\0", b" ")
            return out, [args.decode()]
        finally:
            await host.close()

    out, [args] = asyncio.run(go())
    assert out.startswith("from stdin ")
    assert args.startswith("python3 -I -S -c ") and len(args) < 200, args[:300]
