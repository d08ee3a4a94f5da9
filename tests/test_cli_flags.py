"""Commands and flags a user relies on, each through the CLI on a real nginx and real app
processes: what they print and what they change."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import tomllib
from dataclasses import replace
from pathlib import Path

from bluegreen.config import presets
from conftest import BLUEGREEN, Project, live_slot, plain_result, to_toml


def test_json_results_of_setup_rollback_stop_prune_and_history_fields(
        local_project: Project) -> None:
    p = local_project
    # Every result: `schema`, `ok`, and `hosts` as a list of objects with `name`.
    assert plain_result(p.bg("setup", "--json").stdout) == {
        "schema": 2, "ok": True, "hosts": [{"name": "web1"}]}
    p.deploy("1.0.0")
    p.deploy("2.0.0")
    p.deploy("3.0.0")
    assert plain_result(p.bg("rollback", "--json").stdout) == {
        "schema": 2, "ok": True, "live": {"web1": "green"},
        "hosts": [{"name": "web1", "live": "green"}]}
    assert plain_result(p.bg("stop", "blue", "--json").stdout) == {
        "schema": 2, "ok": True, "stopped": "blue", "hosts": [{"name": "web1"}]}
    removed = plain_result(p.bg("prune", "--keep", "1", "--json").stdout)
    assert removed["ok"] is True and [r.split("-")[0] for r in removed["removed"]["web1"]] == [
        "1.0.0"] and removed["hosts"] == [{"name": "web1", "removed": removed["removed"]["web1"]}]
    assert not any(d.name.startswith("1.0.0") for d in (p.deploy_to / "releases").iterdir())
    result = json.loads(p.bg("history", "--json", "-n", "3").stdout)
    assert (result["schema"], result["ok"], result["hosts"]) == (2, True, [{"name": "web1"}])
    events = result["events"]
    assert len(events) == 3 and [e["event"] for e in events] == ["prune", "stop", "rollback"]
    for e in events:
        assert set(e) == {"time", "event", "host", "color", "release", "version", "user",
                          "detail"}
        assert e["host"] == "web1" and e["time"][:4].isdigit()
    assert events[2]["color"] == "green" and events[2]["version"] == "2.0.0"
    text = p.bg("history", "-n", "1").stdout
    assert "prune" in text and "1.0.0" in text
    status = json.loads(p.bg("status", "--json").stdout)
    assert (status["schema"], status["ok"], status["hosts"][0]["name"]) == (2, True, "web1")
    check = json.loads(p.bg("check", "--json").stdout)
    assert check["schema"] == 2 and check["hosts"][0]["name"] == "web1"
    assert {"item": "connect", "ok": True, "detail": "connected"} in check["hosts"][0]["items"]
    assert json.loads(p.bg("unlock", "--json").stdout)["hosts"] == [
        {"name": "web1", "lock": "no lock"}]
    lines = [json.loads(line) for line in p.bg("logs", "--json", "-n", "2").stdout.splitlines()]
    assert len(lines) == 2 and all(set(x) == {"host", "color", "release", "line"} for x in lines)
    assert lines[0]["host"] == "web1" and lines[0]["color"] == "green"


def test_skip_build_and_verbose(local_project: Project) -> None:
    p = local_project
    p.write_config(release={"version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz",
                            "build": "exit 7"})
    p.bg("setup")
    p.artifact("1.0.0")
    out = p.bg("deploy", "--version", "1.0.0", check=1)
    assert "build" in out.stderr  # the failing build stopped it
    out = p.bg("deploy", "--version", "1.0.0", "--skip-build", "-v")
    assert "$ " in out.stderr and "tar" in out.stderr  # -v shows every remote command
    assert p.answer().version == "1.0.0"


def test_failing_post_hook_is_a_warning(local_project: Project) -> None:
    p = local_project
    p.write_config(hooks={"post_deploy": "echo 'chat is down' >&2; exit 9"})
    p.bg("setup")
    out = p.deploy("1.0.0")  # exit 0
    assert "chat is down" in out.stderr and "warning" in out.stderr
    assert p.answer().version == "1.0.0"


def test_verify_failure_switches_back(local_project: Project) -> None:
    """Phase 3 fails: the link is switched but the proxy keeps answering the old colour
    (here: a reload that first gives the green site file blue's content: nginx applies
    it, and answers blue). The link is put back; exit 1 names the step."""
    p = local_project
    p.bg("setup")
    p.deploy("1.0.0")
    p.deploy("2.0.0", "--no-promote")
    sites = p.nginx.sites_available  # type: ignore[union-attr]
    p.extra_proxy = {"reload": shlex.join(["sh", "-c", shlex.join(
        ["cp", str(sites / "testapp-blue"), str(sites / "testapp-green")]) + " && " +
        p.nginx.reload_command])}  # type: ignore[union-attr]
    p.write_config()
    before = live_slot(p)
    out = p.bg("promote", check=1)
    assert "step 'verify through the proxy'" in out.stderr and "switched back" in out.stderr
    # The link is back on blue (nginx reloaded with it: new workers), the slot untouched.
    assert replace(live_slot(p), proxy_workers=()) == replace(before, proxy_workers=())
    assert p.answer().version == "1.0.0"
    # The history line and the lock's release that go with a verify ran only after it
    # was done: the lock is released (as always, at the end), no promote was recorded.
    events = [json.loads(line)["event"]
              for line in (p.deploy_to / "history.jsonl").read_text().splitlines()]
    assert events[-2:] == ["deploy", "failed"], events
    assert not (p.deploy_to / "lock").exists()


def test_init_presets_through_the_cli(tmp_path: Path) -> None:
    import subprocess

    for preset in presets.NAMES:
        d = tmp_path / preset
        d.mkdir()
        out = subprocess.run([*BLUEGREEN, "init", "--preset", preset, "--app", "shop"], cwd=d,
                             capture_output=True, text=True, check=True)
        assert "wrote bluegreen.toml" in out.stdout
        cfg = tomllib.loads((d / "bluegreen.toml").read_text())
        assert cfg["app"] == "shop"
        again = subprocess.run([*BLUEGREEN, "init", "--preset", preset], cwd=d,
                               capture_output=True, text=True)
        assert again.returncode == 2 and "--force" in again.stderr


def test_check_exit_3_when_a_host_cannot_be_reached(local_project: Project) -> None:
    from conftest import free_port

    p = local_project
    p.host_override = {"address": "root@127.0.0.1", "port": free_port(),
                       "known_hosts": str(p.dir / "known_hosts")}
    (p.dir / "known_hosts").write_text("")
    p.write_config()
    out = p.bg("check", check=3)
    assert "FAIL" in out.stdout and "connect" in out.stdout


HOST_CHECKING_APP = r'''
import os, http.server
ALLOWED = "myapp.example.com"
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.headers.get("Host", "").split(":")[0] != ALLOWED:
            code, body = 400, b"Bad Request (Invalid HTTP_HOST header)"  # as Django answers
        elif self.path == "/health" and os.path.exists("REDIRECT"):
            code, body = 301, b"to https"
        else:
            code, body = 200, f"hello from {open('VERSION').read().strip()}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-App-Version", open("VERSION").read().strip())
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), H).serve_forever()
'''


def host_checking_artifact(p: Project, version: str, redirect: bool = False) -> None:
    import tarfile

    src = p.dir / "build" / f"hostapp-{version}"
    src.mkdir(parents=True, exist_ok=True)
    (src / "app.py").write_text(HOST_CHECKING_APP)
    (src / "VERSION").write_text(version + "\n")
    if redirect:
        (src / "REDIRECT").write_text("")
    (p.dir / "artifacts").mkdir(exist_ok=True)
    with tarfile.open(p.dir / "artifacts" / f"sample-{version}.tar.gz", "w:gz") as tar:
        for f in sorted(src.iterdir()):
            tar.add(f, arcname=f.name)


def test_health_host_and_health_status_for_real_frameworks(local_project: Project) -> None:
    """An app that checks the Host header (Django's ALLOWED_HOSTS answers 400 otherwise) and
    one whose health path redirects (301): `run.health_host`, `run.health_status`."""
    p = local_project
    p.bg("setup")
    host_checking_artifact(p, "1.0.0")
    out = p.bg("deploy", "--version", "1.0.0", check=5)  # Host: testapp.test (server_name)
    assert "answered HTTP 400, not one of health_status=200-299" in out.stderr
    p.extra_run = {"health_host": "myapp.example.com", "health_interval": 0.05}
    p.write_config()
    p.bg("deploy", "--version", "1.0.0")
    host_checking_artifact(p, "2.0.0", redirect=True)
    out = p.bg("deploy", "--version", "2.0.0", check=5)
    assert "answered HTTP 301" in out.stderr
    p.extra_run = {**p.extra_run, "health_status": "200-299,301"}
    p.write_config()
    p.bg("deploy", "--version", "2.0.0")
    assert p.status()["slots"]["green"]["version"] == "2.0.0"


def test_release_prepare_runs_once_per_release_and_its_failure_changes_nothing(
        local_project: Project) -> None:
    p = local_project
    p.write_config(release={
        "version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz",
        "prepare": "echo \"preparing for $BLUEGREEN_COLOR on $PORT\"; mkdir -p venv && "
                   "echo {version} > venv/ready"})
    p.bg("setup")
    out = p.deploy("1.0.0")
    assert "preparing for blue on" in out.stderr or "prepared in" in out.stderr
    rid = p.status()["slots"]["blue"]["release"]
    assert (p.deploy_to / "releases" / rid / "venv" / "ready").read_text() == "1.0.0\n"
    assert not list((p.deploy_to / "slots").rglob("prepare.env"))  # its secrets are gone
    p.deploy("2.0.0")
    p.bg("stop", "blue")
    out = p.bg("deploy", "--version", "1.0.0", "--no-promote")  # the same artifact again
    assert "was prepared before; prepare skipped" in out.stderr

    p.write_config(release={"version": "1.0.0", "artifact": "artifacts/sample-{version}.tar.gz",
                            "prepare": "echo 'no wheel for this platform'; exit 3"})
    before = live_slot(p)
    out = p.deploy("3.0.0", check=1)
    assert "prepare failed (exit 3)" in out.stderr and "no wheel for this platform" in out.stderr
    assert live_slot(p) == before
    assert p.status()["slots"]["blue"]["healthy"]  # the idle slot was not stopped
    # (blue's 1.0.0 was staged after the live 2.0.0: `rollback` would go forward and
    # refuses; the operator names the colour)
    p.bg("rollback", check=1)
    p.bg("promote", "blue")
    assert p.answer().version == "1.0.0"


def test_tables_off_a_terminal_are_not_cut(local_project: Project) -> None:
    """`bluegreen history | cat`: every value whole, also with no COLUMNS set, and no row
    padded with the widest row's spaces (`check` ended each line with ~300)."""
    import os
    import subprocess

    p = local_project
    p.bg("setup")
    p.deploy("1.0.0")
    rid = p.status()["slots"]["blue"]["release"]
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    for command in ("history", "status", "check"):
        out = subprocess.run([*BLUEGREEN, command], cwd=p.dir, capture_output=True, text=True,
                             env={**env, "HOME": str(p.home)})
        assert "…" not in out.stdout, out.stdout
        assert not [line for line in out.stdout.splitlines() if line.endswith(" ")], command
        if command != "check":
            assert rid in out.stdout, out.stdout
    history = subprocess.run([*BLUEGREEN, "history"], cwd=p.dir, capture_output=True,
                             text=True, env={**env, "HOME": str(p.home)}).stdout
    # The time is whole too: a row starts with the full ISO date.
    assert any(line.strip().startswith("20") and "web1" in line for line in history.splitlines())


def test_completion_script_completes_commands_colours_and_hosts(tmp_path: Path) -> None:
    """`eval "$(bluegreen completion bash)"` in a real bash, then what a Tab offers."""
    (tmp_path / "bluegreen.toml").write_text(
        'app = "shop"\n[release]\nartifact = "x.tar.gz"\n[run]\ncommand = "x {port}"\n'
        '[[hosts]]\nname = "web-a"\naddress = "root@10.0.0.1"\n'
        '[[hosts]]\nname = "web-b"\naddress = "root@10.0.0.2"\n')
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "bluegreen").write_text(f"#!/bin/sh\nexec {' '.join(BLUEGREEN)} \"$@\"\n")
    (bindir / "bluegreen").chmod(0o755)

    def tab(*words: str) -> list[str]:
        script = ('eval "$(bluegreen completion bash)"; COMPREPLY=(); '
                  f'COMP_WORDS=({" ".join(repr(w) for w in words)}); '
                  f'COMP_CWORD={len(words) - 1}; _bluegreen_completion bluegreen; '
                  'printf "%s\\n" "${COMPREPLY[@]}"')
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}"}
        proc = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True,
                              text=True, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert tab("bluegreen", "prom") == ["promote"]
    assert tab("bluegreen", "promote", "") == ["blue", "green"]
    assert tab("bluegreen", "status", "--host", "") == ["web-a", "web-b"]
    assert tab("bluegreen", "status", "--host", "web-b") == ["web-b"]
    for shell in ("zsh", "fish"):
        out = subprocess.run([*BLUEGREEN, "completion", shell], capture_output=True, text=True)
        assert out.returncode == 0 and "_BLUEGREEN_COMPLETE" in out.stdout


def test_destination_merges_its_file_over_the_config(local_project: Project) -> None:
    """`-d staging`: bluegreen.staging.toml over bluegreen.toml, tables key by key and
    [[hosts]] replaced; a bad key names the file it is in; a missing file is exit 2."""
    p = local_project
    base = tomllib.loads(p.write_config().read_text())
    real_host = base["hosts"]
    base["hosts"] = [{"name": "prod1", "address": "root@192.0.2.1"}]  # never contacted
    base["run"]["env"] = {"STAGE": "production", "KEEP": "from-base"}
    (p.dir / "bluegreen.toml").write_text(to_toml(base))
    (p.dir / "bluegreen.staging.toml").write_text(to_toml(
        {"run": {"env": {"STAGE": "staging"}}, "hosts": real_host}))
    p.bg("setup", "-d", "staging")
    p.artifact("1.0.0")
    p.bg("deploy", "--version", "1.0.0", "--destination", "staging")
    out = p.bg("exec", "-d", "staging", "--", "sh", "-c", 'echo "$STAGE $KEEP"')
    assert out.stdout.split() == ["staging", "from-base"]
    assert [h["host"] for h in json.loads(p.bg("status", "-d", "staging", "--json").stdout)
            ["hosts"]] == ["web1"]
    (p.dir / "bluegreen.staging.toml").write_text(to_toml(
        {"run": {"helth_path": "/up"}, "hosts": real_host}))
    bad = p.bg("status", "-d", "staging", check=2)
    assert "bluegreen.staging.toml: run.helth_path" in bad.stderr, bad.stderr
    missing = p.bg("status", "-d", "qa", check=2)
    assert "bluegreen.qa.toml not found" in missing.stderr


def test_build_says_it_runs_how_long_it_took_and_its_output_with_v(
        local_project: Project) -> None:
    p = local_project
    p.artifact("1.0.0")
    p.write_config(release={
        "version": "1.0.0", "artifact": "dist/x-{version}.tar.gz",
        "build": "echo compiling-step-1 && mkdir -p dist && "
                 "cp artifacts/sample-{version}.tar.gz dist/x-{version}.tar.gz"})
    out = p.bg("build")
    assert "building: echo compiling-step-1" in out.stderr and "built in" in out.stderr
    assert "build| compiling-step-1" not in out.stderr
    assert "build| compiling-step-1" in p.bg("build", "-v").stderr
    assert json.loads(p.bg("build", "--json").stdout)["release"].startswith("1.0.0-")
    p.write_config(release={"version": "1.0.0", "artifact": "dist/x-{version}.tar.gz",
                            "build": "echo failing-step-output; exit 3"})
    failed = p.bg("build", check=1)
    assert "failed (exit 3) after" in failed.stderr and "failing-step-output" in failed.stderr


def test_bad_canary_and_duration_options_are_one_line_usage_errors(tmp_path: Path) -> None:
    """`--canary 50,30`, `--canary 5,abc`, `--step 5parsecs`: exit 2 and one `error:` line
    naming the option, before any config is read (they printed a traceback and exited 1)."""
    for args in (["deploy", "--canary", "50,30"], ["deploy", "--canary", "5,abc"],
                 ["promote", "--canary", "--step", "5parsecs"], ["deploy", "--watch", "0"]):
        proc = subprocess.run([*BLUEGREEN, *args], cwd=tmp_path, capture_output=True,
                              text=True, timeout=30)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(
            f"error: {args[-2] if args[-1] != '--canary' else args[-1]} "), proc.stderr


def test_help_lists_commands_in_workflow_order_with_whole_first_sentences() -> None:
    """`bluegreen --help` listed commands alphabetically, cut at the first period
    ("An interactive run.console (e.g.")."""
    import re

    out = subprocess.run([*BLUEGREEN, "--help"], capture_output=True, text=True,
                         check=True).stdout.split("Commands:")[1]
    names = re.findall(r"(?m)^  ([a-z]+) ", out)
    assert names[:8] == ["init", "check", "setup", "build", "deploy", "promote", "rollback",
                         "status"]
    assert names[-1] == "warm" and len(names) == len(set(names))
    assert "console An interactive run.console (e.g. `bin/app remote`) in a pty, in a " \
           "slot's env (default: the live slot) exec" in " ".join(out.split())


def test_check_fails_a_build_command_with_unbalanced_quotes(local_project: Project) -> None:
    """`release.build = "echo 'x"` made `check` end in a traceback: a FAIL row now."""
    p = local_project
    p.write_config(release={"version": "1.0.0", "build": "echo 'unbalanced",
                            "artifact": "artifacts/sample-{version}.tar.gz"})
    out = p.bg("check", "--json", check=1)
    assert "Traceback" not in out.stderr
    rows = [i for h in json.loads(out.stdout)["hosts"] for i in h["items"]] + \
        json.loads(out.stdout)["local"]
    assert any(r["item"] == "release.build" and r["ok"] is False for r in rows), out.stdout
