"""Config validation: every bad file is exit 2 with the key path named; nothing touched."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from bluegreen.config import presets
from bluegreen.config import Colour, load_config, parse_config, parse_listen
from bluegreen.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent

GOOD = {
    "app": "myapp",
    "release": {"version": "0.1.0", "artifact": "dist/myapp-{version}.tar.gz"},
    "run": {"command": "python3 app.py --port {port}", "env": {"NODE": "{app}_{color}"}},
    "hosts": [{"address": "local"}],
}


def with_(path: str, value: object) -> dict[str, object]:
    import copy

    data = copy.deepcopy(GOOD)
    node: dict[str, object] = data
    keys = path.split(".")
    for key in keys[:-1]:
        if key.isdigit():
            node = node[int(key)]  # type: ignore[index]
        else:
            node = node.setdefault(key, {})  # type: ignore[assignment]
    node[keys[-1]] = value
    return data


def error_of(data: dict[str, object]) -> str:
    with pytest.raises(ConfigError) as exc:
        parse_config(data, Path("/tmp"))
    assert exc.value.exit_code == 2
    return exc.value.message


def test_good_config_loads_with_defaults() -> None:
    cfg = parse_config(GOOD, Path("/tmp"))
    assert cfg.slots.port(Colour.BLUE) == 4000 and cfg.slots.port(Colour.GREEN) == 5000
    assert cfg.proxy.reload == "nginx -s reload" and cfg.run.health_path == "/health"
    assert cfg.hosts[0].label == "local" and cfg.hosts[0].port is None
    assert Colour.BLUE.other is Colour.GREEN and Colour.GREEN.other is Colour.BLUE


@pytest.mark.parametrize("path,value,expected", [
    ("hosts", [{"address": "local"}, {"address": "web2", "port": 70000}],
     "hosts[1].port: Input should be less than or equal to 65535"),
    ("hosts", [{"address": "local", "colour": "x"}], "hosts[0].colour: unknown key"),
    ("proxy.bogus", 1, "proxy.bogus: unknown key"),
    ("slots.green", 4000, "slots: blue and green must use different ports"),
    ("app", "MyApp", "app: String should match pattern"),
    ("run.health_timeout", "soon", "run.health_timeout: 'soon' is not a duration"),
    ("release.version", "1.0; rm -rf /", "release.version: version '1.0; rm -rf /' must match"),
    ("hosts", [{"address": "a b"}], "hosts[0].address: must be 'local' or '[user@]host'"),
    ("hosts", [], "hosts: List should have at least 1 item"),
    ("proxy.listen", "nowhere", "proxy.listen: 'nowhere' has no port"),
    ("run.env", {"BAD-NAME": "x"}, "run.env: 'BAD-NAME' is not a valid environment variable"),
])
def test_bad_values_name_the_key_path(path: str, value: object, expected: str) -> None:
    assert expected in error_of(with_(path, value))



TLS = {"certificate": "/etc/ssl/{app}.pem"}


@pytest.mark.parametrize("path,value", [
    ("proxy.listen", "80 reuseport; location / { return 200 x; }"),
    ("proxy.listen", "80 default_server\n"),
    ("proxy.tls", {**TLS, "listen": "443 ssl; } server { listen 81"}),
    ("proxy.server_name", "example.com }"),
    ("proxy.server_name", "example.com\n"),
    ("proxy.test", "nginx -t\ntouch /tmp/pwned"),
    ("proxy.reload", "nginx -s reload\rtouch /tmp/pwned"),
    ("hosts", [{"address": "local", "name": "web1\nchmod 4755 /bin/sh"}]),
    ("hosts", [{"address": "web1", "private_address": "10.0.0.1:80 down; server 10.6.6.6"}]),
    ("slots.bind", "127.0.0.1:1; server 10.6.6.6"),
    ("hosts", [{"address": "local", "deploy_to": "/srv/x\nExecStartPre=/bin/touch /pwned"}]),
])
def test_values_written_into_proxy_config_or_root_script_are_checked(path: str,
                                                                     value: object) -> None:
    """A value bluegreen writes as it is into the nginx site, the HAProxy config, the unit
    or root's install script (`setup --print-root-files`) may hold no line break, and no
    `;`, `{`, `}` where nginx would read them as syntax: exit 2 naming the key."""
    key = {"hosts": "hosts[0].", "proxy.tls": "proxy.tls.listen"}.get(path, path)
    message = error_of(with_(path, value))
    assert message.startswith(f"invalid config: {key}"), message
    assert "not allowed" in message or "no line breaks" in message, message


def test_print_root_files_refuses_a_listen_with_nginx_syntax(tmp_path: Path) -> None:
    (tmp_path / "bluegreen.toml").write_text(
        'app = "x"\n[run]\ncommand = "a"\n[proxy]\nlisten = "80 reuseport; include /etc/shadow"\n'
        '[[hosts]]\naddress = "local"\n')
    proc = run_cli("setup", "--print-root-files", cwd=tmp_path)
    assert proc.returncode == 2 and "proxy.listen" in proc.stderr, proc.stderr
    assert "include" not in proc.stdout


def test_missing_required_keys() -> None:
    assert "app: required key is missing" in error_of({k: v for k, v in GOOD.items() if k != "app"})
    assert "run: required key is missing" in error_of({k: v for k, v in GOOD.items() if k != "run"})


def test_unknown_and_malformed_placeholders() -> None:
    assert ("run.command: unknown placeholder {colour}" in
            error_of(with_("run.command", "app --colour {colour}")))
    assert ("release.artifact: unknown placeholder {port}" in
            error_of(with_("release.artifact", "x-{port}.tar.gz")))
    assert "run.env.X: unknown placeholder {nope}" in error_of(with_("run.env", {"X": "{nope}"}))
    assert "malformed placeholder" in error_of(with_("run.command", "echo {app.__class__}"))
    # Doubled braces are literal.
    cfg = parse_config(with_("run.command", "echo {{not a placeholder}} {port}"), Path("/tmp"))
    assert cfg.run.command == "echo {{not a placeholder}} {port}"


def test_start_or_command_exactly_one() -> None:
    assert "exactly one of run.start" in error_of(with_("run", {"start": "a", "command": "b"}))
    assert "exactly one of run.start" in error_of(with_("run", {"stop": "a"}))


def test_parse_listen() -> None:
    assert parse_listen("80") == ("127.0.0.1", 80)
    assert parse_listen("127.0.0.2:8080 reuseport") == ("127.0.0.2", 8080)
    assert parse_listen("[::1]:8443 ssl") == ("::1", 8443)
    assert parse_listen("*:80") == ("127.0.0.1", 80)


@pytest.mark.parametrize("preset", presets.NAMES)
def test_presets_are_valid_configs(preset: str, tmp_path: Path) -> None:
    text = presets.render(preset, "shop-api")
    cfg = parse_config(tomllib.loads(text), tmp_path)
    assert cfg.app == "shop-api"
    if preset == "elixir":
        assert cfg.run.command == "exec bin/shop-api start" and cfg.run.start is None
        assert cfg.run.env["RELEASE_NODE"] == "{app}_{color}"
        assert cfg.run.env["RELEASE_TMP"] == "{slot_dir}/tmp"
        assert cfg.run.migrate == "bin/shop-api eval 'ShopApi.Release.migrate()'"
    if preset in ("python", "django", "fastapi"):  # a package name, not the app's dashes
        assert "shop_api." in (cfg.run.command or "") and cfg.release.prepare
    # Every environment key as written in the preset (the Elixir MODULE token once replaced
    # the end of DJANGO_SETTINGS_MODULE); gunicorn's control socket in each slot's dir.
    expected = {"generic": {"ENVIRONMENT"}, "fastapi": {"PYTHONUNBUFFERED"},
                "elixir": {"RELEASE_NODE", "RELEASE_TMP", "PHX_SERVER"},
                "python": {"PYTHONUNBUFFERED", "XDG_RUNTIME_DIR"},
                "django": {"DJANGO_SETTINGS_MODULE", "PYTHONUNBUFFERED", "XDG_RUNTIME_DIR"}}
    assert set(cfg.run.env) == expected[preset]
    if preset == "django":
        assert cfg.run.env["DJANGO_SETTINGS_MODULE"] == "shop_api.settings"
    if "XDG_RUNTIME_DIR" in cfg.run.env:
        assert cfg.run.env["XDG_RUNTIME_DIR"] == "{slot_dir}"
    assert not re.search(r"@[A-Z]+@", text)  # every token replaced


@pytest.mark.parametrize("name", ["My App", "9lives", "a" * 41, "shop.api", "Shop"])
def test_init_refuses_an_app_name_check_would_refuse(name: str, tmp_path: Path) -> None:
    """`init --app "My App"` wrote a file `check` then refused (and invalid TOML)."""
    proc = subprocess.run([sys.executable, "-m", "bluegreen", "init", "--app", name],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith(f"error: --app {name!r}")
    assert not (tmp_path / "bluegreen.toml").exists()


def test_documented_example_config_loads() -> None:
    """docs/bluegreen.example.toml is the reference; it must stay valid."""
    cfg = load_config(ROOT / "docs" / "bluegreen.example.toml")
    assert cfg.app == "myapp" and cfg.run.start == "bin/myapp daemon"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bluegreen", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_cli_bad_config_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bluegreen.toml").write_text(
        'app = "x"\n[run]\ncommand = "a"\n[[hosts]]\naddress = "local"\nport = "ssh"\n')
    proc = run_cli("status", cwd=tmp_path)
    assert proc.returncode == 2
    assert "hosts[0].port" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("deploy", cwd=tmp_path / "..")
    assert proc.returncode == 2 and "bluegreen.toml not found" in proc.stderr
    (tmp_path / "bad.toml").write_text("app = \n")
    proc = run_cli("check", "-c", str(tmp_path / "bad.toml"), cwd=tmp_path)
    assert proc.returncode == 2 and "not valid TOML" in proc.stderr


def test_cli_bad_version_exit_2(tmp_path: Path) -> None:
    (tmp_path / "bluegreen.toml").write_text(
        'app = "x"\n[release]\nartifact = "a.tar.gz"\n[run]\ncommand = "a"\n'
        '[[hosts]]\naddress = "local"\n')
    proc = run_cli("deploy", "--version", "1.0$(touch pwned)", cwd=tmp_path)
    assert proc.returncode == 2 and "must match" in proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_init_writes_a_config_that_loads(tmp_path: Path) -> None:
    proc = run_cli("init", "--preset", "python", "--app", "web", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    cfg = load_config(tmp_path / "bluegreen.toml")
    assert cfg.app == "web" and "gunicorn" in (cfg.run.command or "")
    proc = run_cli("init", cwd=tmp_path)
    assert proc.returncode == 2 and "--force" in proc.stderr


def test_haproxy_kind_defaults_and_keys() -> None:
    cfg = parse_config(with_("proxy", {"kind": "haproxy"}), Path("/tmp"))
    assert cfg.proxy.kind == "haproxy"
    assert cfg.proxy.reload == "systemctl reload haproxy"
    assert cfg.proxy.test.startswith("haproxy -c")
    assert cfg.proxy.config_file == "/etc/haproxy/conf.d/{app}.cfg"
    assert cfg.proxy.socket == "/run/haproxy/admin.sock"
    own = parse_config(with_("proxy", {"kind": "haproxy", "test": "true", "reload": "true",
                                       "socket": "127.0.0.1:9999"}), Path("/tmp"))
    assert (own.proxy.test, own.proxy.reload, own.proxy.socket) == ("true", "true",
                                                                    "127.0.0.1:9999")


@pytest.mark.parametrize("proxy,expected", [
    ({"kind": "haproxy", "site": "x"}, "proxy: site is not used by kind = 'haproxy'"),
    ({"kind": "nginx", "map_file": "/x.map"}, "proxy: map_file is not used by kind = 'nginx'"),
    ({"socket": "/x.sock"}, "proxy: socket is not used by kind = 'nginx'"),
    ({"kind": "haproxy", "listen": "80 default_server"}, "use [address:]port only"),
    ({"kind": "haproxy", "map_file": "conf.d/x.map"}, "map_file: must be an absolute path"),
    ({"kind": "haproxy", "config_file": "/a b.cfg"}, "config_file: must be an absolute path"),
    ({"kind": "haproxy", "socket": "admin sock"}, "socket: must be a unix socket path"),
    ({"kind": "traefik"}, "proxy.kind: must be 'nginx' or 'haproxy'"),
])
def test_bad_haproxy_settings(proxy: dict[str, object], expected: str) -> None:
    assert expected in error_of(with_("proxy", proxy))


@pytest.mark.parametrize("change,expected", [
    # behind balancers the slots must listen where the balancers reach them
    ({"load_balancers": [{"address": "root@lb1"}], "hosts": [{"address": "root@web1"}]},
     "slots.bind: behind load_balancers"),
    ({"load_balancers": [{"address": "root@lb1"}], "hosts": [{"address": "local"}],
      "slots": {"bind": "{private_address}"}}, "not \"local\""),
    ({"load_balancers": [{"address": "root@lb1", "name": "web1"}],
      "hosts": [{"address": "root@10.0.0.2", "name": "web1"}],
      "slots": {"bind": "{private_address}"}}, "two hosts are named 'web1'"),
    ({"load_balancers": [{"address": "lb 1"}], "hosts": [{"address": "root@10.0.0.2"}],
      "slots": {"bind": "{private_address}"}}, "load_balancers[0].address"),
])
def test_load_balancer_config_errors(change: dict[str, object], expected: str) -> None:
    import copy

    data = copy.deepcopy(GOOD)
    data.update(change)
    assert expected in error_of(data)


@pytest.mark.parametrize("change,expected", [
    ({"run": {"command": "a", "helth_path": "/h"}},
     "run.helth_path: unknown key (did you mean 'health_path'?)"),
    ({"hosts": [{"address": "local", "deploy_too": "/x"}]},
     "hosts[0].deploy_too: unknown key (did you mean 'deploy_to'?)"),
    ({"proxy": {"kind": "haproxy", "map_fle": "/x.map"}}, "(did you mean 'map_file'?)"),
    ({"relase": {}}, "relase: unknown key (did you mean 'release'?)"),
    ({"hosts": "web1.example.com"}, "hosts: must be a list of tables"),
])
def test_unknown_keys_get_a_suggestion(change: dict[str, object], expected: str) -> None:
    import copy

    data = copy.deepcopy(GOOD)
    data.update(change)
    assert expected in error_of(data)


def test_config_is_found_from_a_subdirectory(tmp_path: Path) -> None:
    """Run in a project's subdirectory, bluegreen uses the bluegreen.toml above it (as git
    does), its relative paths from its own directory; with none above, it says so."""
    from bluegreen.config.load import find_config

    (tmp_path / "bluegreen.toml").write_text(
        'app = "shop"\n[release]\nartifact = "dist/x.tar.gz"\n[run]\ncommand = "x {port}"\n'
        '[slots]\nblue = 4000\ngreen = 5000\n[[hosts]]\nname = "web1"\naddress = "local"\n'
        f'deploy_to = "{tmp_path}/srv"\n')
    deeper = tmp_path / "src" / "deeper"
    deeper.mkdir(parents=True)
    assert find_config(deeper) == tmp_path / "bluegreen.toml"
    proc = subprocess.run([sys.executable, "-m", "bluegreen", "status", "--json"], cwd=deeper,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert [h["name"] for h in json.loads(proc.stdout)["hosts"]] == ["web1"]
    # Another user's file above is never picked up (its build and hooks would run as this
    # user): the search stops at a directory this user does not own.
    shared = Path(tempfile.mkdtemp(prefix="bluegreen-shared-"))
    try:
        (shared / "bluegreen.toml").write_text((tmp_path / "bluegreen.toml").read_text())
        os.chown(shared, 65534, 65534)
        os.chown(shared / "bluegreen.toml", 65534, 65534)
        work = shared / "work"
        work.mkdir()
        assert find_config(work) is None
        os.chown(shared, os.getuid(), os.getgid())  # this user's dir, another user's file
        assert find_config(work) is None
        os.chown(shared / "bluegreen.toml", os.getuid(), os.getgid())
        shared.chmod(0o777)  # a directory others may write to
        assert find_config(work) is None
        shared.chmod(0o755)
        assert find_config(work) == shared / "bluegreen.toml"
    finally:
        shutil.rmtree(shared)
    nowhere = Path(tempfile.mkdtemp(prefix="bluegreen-none-"))
    try:
        proc = subprocess.run([sys.executable, "-m", "bluegreen", "status"], cwd=nowhere,
                              capture_output=True, text=True)
        assert proc.returncode == 2 and "here or in any directory above" in proc.stderr
    finally:
        nowhere.rmdir()


def test_one_duration_syntax_everywhere_and_ports_as_integers() -> None:
    """`health_timeout = "30s"` was refused while `canary.step = "30s"` worked, and
    `proxy.listen = 18080` (a TOML integer) was refused."""
    base = tomllib.loads(presets.render("generic", "shop"))
    base["run"].update(health_timeout="30s", stop_timeout="2m", drain_timeout="500ms",
                       health_interval="0.2s")
    base["proxy"].update(listen=18080)
    cfg = parse_config(base, Path("/"))
    assert (cfg.run.health_timeout, cfg.run.stop_timeout, cfg.run.drain_timeout,
            cfg.run.health_interval) == (30, 120, 0.5, 0.2)
    assert cfg.proxy.listen == "18080"
    base["run"]["health_timeout"] = "5parsecs"
    with pytest.raises(ConfigError, match=r"run\.health_timeout.*not a duration"):
        parse_config(base, Path("/"))
