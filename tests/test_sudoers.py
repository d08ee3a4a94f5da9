"""The sudoers drop-in (`setup --print-sudoers`): each line admits exactly one command line,
the one bluegreen runs, as sudo matches it (fnmatch on the arguments joined by spaces, no
arguments = any, `""` = none); sudo's own parser (`visudo`, `cvtsudoers`) reads it so."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import HealthCheck, find, given, settings
from hypothesis.errors import NoSuchExample
from hypothesis import strategies as st

from bluegreen.config import Config, parse_config
from bluegreen.errors import ConfigError
from bluegreen.plan import sudoers

from conftest import run_cli
from systemd_host import APP, Site, SystemdHost, SystemdLab, lab  # noqa: F401 (fixture)

USER = "deploy"


def config(proxy: dict[str, str]) -> Config:
    return parse_config({
        "app": "shop",
        "run": {"command": "python3 app.py"},
        "proxy": proxy,
        "hosts": [{"address": f"{USER}@web1", "sudo": True}],
    }, Path("/tmp"))


def host_paths(commands: list[list[str]]) -> dict[str, str]:
    """Where a host's `command -v` would find each command."""
    return {c[0]: c[0] if c[0].startswith("/") else f"/usr/bin/{c[0]}" for c in commands}


def _fnmatch_regex(pattern: str) -> str:
    """POSIX fnmatch without flags, as sudo calls it for arguments: `*` and `?` match any
    character (spaces and `/` too), `[...]` / `[!...]` / `[^...]` a set, `\\X` is X."""
    out, i = [], 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\" and i + 1 < len(pattern):
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if ch == "*":
            out.append("(?s:.*)")
        elif ch == "?":
            out.append("(?s:.)")
        elif ch == "[" and (end := pattern.find("]", i + 2)) != -1:
            body = pattern[i + 1:end]
            neg = body[:1] in ("!", "^")
            chars = body[1:] if neg else body
            out.append(f"[{'^' if neg else ''}{''.join(re.escape(c) for c in chars)}]")
            i = end
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def parse_line(line: str) -> list[tuple[str, str | None]]:
    """A rule's commands, each with its argument pattern (None: none written), read as
    sudoers' lexer does: an unescaped `#` starts a comment, an unescaped `,` another
    command, words are separated by blanks."""
    spec = line.split(" NOPASSWD: ", 1)[1]
    cut = re.search(r"(?<!\\)#", spec)
    spec = spec[:cut.start()] if cut else spec
    out: list[tuple[str, str | None]] = []
    for part in re.split(r"(?<!\\),", spec):
        command, _, args = part.strip().partition(" ")
        out.append((command, args.strip() or None))
    return out


def arg_regex(args: str | None) -> str:
    """A regex for the user's arguments joined by spaces that the rule admits."""
    if args is None:
        return "(?s:.*)"          # no arguments written: any arguments
    if args == '""':
        return ""                 # `""`: no arguments at all
    if args.startswith("^") and args.endswith("$"):
        return args[1:-1]         # sudo 1.9.10+: a regular expression
    return _fnmatch_regex(re.sub(r"\\([,:=])", r"\1", args))  # the lexer unescapes these


def admits(line: str, paths: dict[str, str], argv: list[str]) -> bool:
    """Would sudo run ``argv`` (as the user typed it after `sudo -n`) under this rule?"""
    path = paths.get(argv[0], argv[0] if argv[0].startswith("/") else None)
    return any(path == command
               and re.fullmatch(arg_regex(args), " ".join(argv[1:])) is not None
               for command, args in parse_line(line))


def rules(text: str) -> list[str]:
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def assert_exact_or_refused(proxy: dict[str, str],
                            other: Callable[[str, str], str | None]) -> None:
    """Either the drop-in is refused (a ConfigError naming the key) or each printed line,
    matched the way sudo matches, admits exactly one of bluegreen's command lines.
    ``other(regex, exact)``: a string the regex matches other than ``exact``, if any."""
    cfg = config(proxy)
    commands = sudoers.privileged(cfg, with_systemd=True)
    paths = host_paths(commands)
    words = [w for c in commands for w in c]
    plain = (all(w and not re.search(r'[*?\[\]!^#"\\\s]', w) for w in words)
             and not any(re.search("[,:=]", c[0]) for c in commands))
    try:
        text = sudoers.drop_in(cfg, USER, commands, paths)
    except ConfigError as exc:
        assert not plain, exc
        assert exc.exit_code == 2
        assert re.match(r"^(proxy\.\w+)( / proxy\.\w+)*: ", str(exc)), exc
        return
    lines = rules(text)
    for line in lines:
        exact = [c for c in commands if admits(line, paths, c)]
        hostile: list[list[str]] = []
        for command, pattern in parse_line(line):
            hostile += [[command], [command, "-f", "/etc/shadow"]]
            for argv in exact:
                hostile.append([*argv, "/etc/shadow"])
                found = other(arg_regex(pattern), " ".join(argv[1:]))
                if found is not None:  # another argument string the pattern admits
                    hostile.append([command, *found.split(" ")] if found else [command])
            if pattern not in (None, '""'):  # the command as the line writes it
                hostile.append([command, *re.sub(r"\\(.)", r"\1", pattern).split(" ")])
        for argv in hostile:
            assert not admits(line, paths, argv) or [paths.get(argv[0], argv[0]), *argv[1:]] in [
                [paths[c[0]], *c[1:]] for c in exact], (line, argv)
        assert len(exact) == 1, (line, exact)
    for argv in commands:
        assert any(admits(line, paths, argv) for line in lines), argv
    assert plain, "a word sudoers reads as a pattern was printed"


# Words a config could hold: plain ones, and ones with each character sudoers reads.
WORD = st.text(alphabet=st.sampled_from("abz09-_./*?[]!^#\"\\ ,:="), min_size=1, max_size=8)
SITE = WORD.filter(lambda w: "/" not in w and not w.startswith("."))
COMMAND = st.lists(WORD, min_size=1, max_size=3).map(shlex.join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(site=SITE, reload=COMMAND, test=COMMAND, data=st.data())
def test_every_printed_line_admits_only_the_exact_command(
        site: str, reload: str, test: str, data: st.DataObject) -> None:
    def other(regex: str, exact: str) -> str | None:
        drawn = data.draw(st.from_regex(regex, fullmatch=True))
        return drawn if drawn != exact else None

    assert_exact_or_refused({"site": site, "reload": reload, "test": test}, other)


@pytest.mark.parametrize("proxy", [
    {"site": "a*b"},
    {"site": "my*app", "reload": "/usr/local/bin/reload-proxy"},
    {"reload": "/usr/local/bin/reload-proxy"},
    {"test": "nginx -t -c '/etc/my nginx.conf'"},
    {"test": "nginx -t #x"},
    {"kind": "haproxy", "map_file": "/etc/haproxy/[a-z].map"},
    {"reload": "/opt/bin/reload,/usr/bin/tee /etc/sudoers"},
], ids=["site-glob", "issue-28", "one-word-reload", "space-in-test", "comment", "map-set",
        "comma-in-command"])
def test_the_issues_cases_admit_only_the_exact_command(proxy: dict[str, str]) -> None:
    """The cases of issue 28, each searched for another admitted command line."""
    def other(regex: str, exact: str) -> str | None:
        try:
            found: str = find(st.from_regex(regex, fullmatch=True), lambda s: s != exact,
                              settings=settings(max_examples=2000, database=None))
            return found
        except NoSuchExample:
            return None

    assert_exact_or_refused(proxy, other)


def test_user_names_sudoers_reads_as_others_are_refused() -> None:
    cfg = config({})
    commands = sudoers.privileged(cfg, with_systemd=True)
    for user in ("ALL", "root", "ADMINS"):
        with pytest.raises(ConfigError, match="hosts: the SSH user"):
            sudoers.drop_in(cfg, user, commands, host_paths(commands))
    assert rules(sudoers.drop_in(cfg, "deploy", commands, host_paths(commands)))


def test_print_sudoers_for_user_all_is_a_config_error(tmp_path: Path) -> None:
    """Refused before connecting (exit 2), naming the host."""
    (tmp_path / "bluegreen.toml").write_text(
        'app = "shop"\n[run]\ncommand = "python3 app.py"\n'
        '[[hosts]]\naddress = "ALL@127.0.0.1"\nsudo = true\n')
    out = run_cli(tmp_path, tmp_path, ["setup", "--print-sudoers"], check=2)
    assert "hosts: ALL@127.0.0.1: the SSH user 'ALL'" in out.stderr, out.stderr
    assert out.stdout == ""


@pytest.mark.skipif(shutil.which("visudo") is None, reason="needs sudo's visudo")
@pytest.mark.parametrize("proxy", [
    {},
    {"reload": "/usr/local/bin/reload-proxy", "test": "/usr/local/bin/test-proxy"},
    {"kind": "haproxy", "map_file": "/etc/haproxy/maps/{app},x=y:z.map"},
    {"sites_available": "/etc/nginx/a,b", "site": "shop=1:2"},
])
def test_visudo_and_sudos_parser_read_the_drop_in_as_printed(
        proxy: dict[str, str], tmp_path: Path) -> None:
    """`visudo -cf` accepts the file; `cvtsudoers` (sudo's parser) reads each rule back as
    the exact command line, and `""` after a command that takes no arguments."""
    cfg = config(proxy)
    commands = sudoers.privileged(cfg, with_systemd=True)
    paths = host_paths(commands)
    path = tmp_path / "bluegreen-shop"
    path.write_text(sudoers.drop_in(cfg, USER, commands, paths))
    subprocess.run(["visudo", "-cf", str(path)], check=True, capture_output=True)
    parsed = json.loads(subprocess.run(["cvtsudoers", "-f", "json", str(path)], check=True,
                                       capture_output=True, text=True).stdout)
    seen = []
    for spec in parsed["User_Specs"]:
        assert spec["User_List"] == [{"username": USER}]
        for cmnd in spec["Cmnd_Specs"]:
            assert cmnd["runasusers"] == [{"username": "root"}]
            seen += [c["command"] for c in cmnd["Commands"]]
    wanted = [" ".join([paths[c[0]], *c[1:]]) if c[1:] else f'{paths[c[0]]} ""'
              for c in commands]
    assert seen == wanted
    assert not any(re.search(r"[*?\[\]\\]", s.partition(" ")[2]) for s in seen)


# A deploy user on a real server (as docs/servers.md prepares one).
PREPARE_DEPLOY_USER = f"""
useradd --create-home --shell /bin/bash deploy
install -d -m 0700 -o deploy -g deploy /home/deploy/.ssh
install -m 0600 -o deploy -g deploy /root/.ssh/authorized_keys /home/deploy/.ssh/
install -d -o deploy -g deploy /srv/{APP}
printf '#!/bin/sh\\nexec nginx -s reload\\n' > /usr/local/bin/reload-proxy
chmod 0755 /usr/local/bin/reload-proxy
"""


@pytest.fixture(scope="module")
def server(lab: SystemdLab) -> SystemdHost:
    host = lab.add()
    host.boot()
    return host


def test_real_sudo_runs_only_the_printed_command_lines(
        lab: SystemdLab, server: SystemdHost, tmp_path: Path) -> None:
    """On a real server: the drop-in `setup --print-sudoers` prints for a one-word
    `proxy.reload` passes `visudo -cf`, and sudo then allows each printed command line and
    refuses the same commands with other arguments; `site = "my*app"` is refused (exit 2,
    naming proxy.site) before anything is printed."""
    server.shell(PREPARE_DEPLOY_USER)
    try:
        site = Site(lab, server, tmp_path / "project", user="deploy")
        site.proxy = {**site.proxy, "reload": "/usr/local/bin/reload-proxy"}
        site.write_config()
        drop_in = site.bg("setup", "--print-sudoers").stdout
        server.exec("sh", "-c", f"cat > /etc/sudoers.d/bluegreen-{APP} && chmod 0440 "
                    f"/etc/sudoers.d/bluegreen-{APP} && visudo -cf /etc/sudoers.d/bluegreen-{APP}",
                    input=drop_in)

        def sudo_allows(command: str) -> bool:
            """`sudo -n -l COMMAND` as deploy: exit 0 when sudo would run it."""
            return server.exec("runuser", "-u", "deploy", "--", "sh", "-c",
                               f"sudo -n -l {command}", check=False).returncode == 0

        printed = [line.split(" NOPASSWD: ", 1)[1].removesuffix(' ""')
                   for line in rules(drop_in)]
        assert "/usr/local/bin/reload-proxy" in printed, drop_in
        for command in printed:
            assert sudo_allows(command), command
        for command in ("/usr/local/bin/reload-proxy -f /etc/shadow",
                        "/usr/local/bin/reload-proxy /etc/shadow",
                        f"/usr/bin/ln -sfn /etc/shadow /etc/nginx/sites-enabled/.{APP}.bluegreen-tmp",
                        f"/usr/bin/rm -f /etc/nginx/sites-enabled/{APP} /etc/passwd",
                        "/usr/bin/rm -f /etc/passwd"):
            assert not sudo_allows(command), command

        site.proxy = {**site.proxy, "site": "my*app"}
        site.write_config()
        out = site.bg("setup", "--print-sudoers", check=2)
        assert out.stderr.startswith("error: proxy.site: "), out.stderr
        assert out.stdout == ""
    finally:
        server.shell(f"rm -rf /srv/{APP} /etc/sudoers.d/bluegreen-{APP} "
                     "/usr/local/bin/reload-proxy; userdel -r deploy", check=False)


def _sudo_dirs_row(project: Path, map_file: str, deploy_to: Path) -> dict[str, object]:
    """`check --json` on this machine (a local host with sudo = true): its row for the
    directories sudo writes in."""
    (project / "bluegreen.toml").write_text(
        'app = "shop"\n[run]\ncommand = "python3 app.py"\n'
        f'[proxy]\nkind = "haproxy"\nmap_file = "{map_file}"\n'
        f'[[hosts]]\naddress = "local"\nsudo = true\ndeploy_to = "{deploy_to}"\n')
    out = run_cli(project, project, ["check", "--json"], check=False)
    rows = json.loads(out.stdout)["hosts"][0]["items"]
    row: dict[str, object] = next(r for r in rows if r["item"].startswith("sudo writes"))
    return row


def test_check_fails_when_sudo_writes_in_a_directory_the_deploy_user_may_change(
        tmp_path: Path) -> None:
    """`proxy.map_file` under deploy_to (the deploy user's): root's `tee` there would follow
    a symlink the deploy user planted; `check` says so (FAIL, naming the key and the
    directory); under root's own directories up to / the row passes."""
    deploy_to = tmp_path / "srv" / "shop"
    deploy_to.mkdir(parents=True)
    shutil.chown(deploy_to, 65534, 65534)  # the deploy user's, as setup leaves it
    row = _sudo_dirs_row(tmp_path, f"{deploy_to}/shop.map", deploy_to)
    assert row["ok"] is False, row
    assert "proxy.map_file" in str(row["detail"]) and f"{deploy_to} (owned by uid 65534" in str(
        row["detail"]), row
    row = _sudo_dirs_row(tmp_path, "/var/lib/bluegreen-test-none/shop.map", deploy_to)
    assert row["ok"] is True, row


def test_print_sudoers_refuses_a_map_file_in_a_directory_the_deploy_user_owns(
        lab: SystemdLab, server: SystemdHost, tmp_path: Path) -> None:
    """On a real server: `proxy.map_file` under deploy_to (/srv/APP, the deploy user's) is
    refused (exit 2, naming proxy.map_file and the directory, nothing printed); in root's
    /etc/haproxy the drop-in is printed."""
    server.shell(PREPARE_DEPLOY_USER)
    try:
        site = Site(lab, server, tmp_path / "project", user="deploy")
        site.proxy = {"kind": "haproxy", "map_file": f"/srv/{APP}/{APP}.map"}
        site.write_config()
        out = site.bg("setup", "--print-sudoers", check=2)
        assert out.stderr.startswith("error: proxy.map_file: "), out.stderr
        assert f"/srv/{APP} (owned by uid" in out.stderr, out.stderr
        assert out.stdout == ""
        site.proxy = {"kind": "haproxy", "map_file": f"/etc/haproxy/{APP}.map"}
        site.write_config()
        printed = site.bg("setup", "--print-sudoers").stdout
        assert f"/etc/haproxy/.{APP}.map.bluegreen-tmp" in printed, printed
    finally:
        server.shell(f"rm -rf /srv/{APP} /usr/local/bin/reload-proxy; userdel -r deploy",
                     check=False)
