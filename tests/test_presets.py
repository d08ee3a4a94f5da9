"""The presets as `bluegreen init --preset NAME` writes them, building and deploying real
apps made from real packages (Django, gunicorn, FastAPI, uvicorn from PyPI) to a server
whose Python has none of them: the build ships a wheelhouse, `prepare` makes the venv
from it offline. Only the server-specific keys (slots, proxy, host) are replaced."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import time
import sys
import tempfile
import tomllib
import zipfile
from pathlib import Path

import pytest

from conftest import SERVER_NAME, Project, get, run_cli, to_toml

ROOT = Path(__file__).resolve().parent.parent
# The packages the test apps need, fetched from PyPI once into a cache the builds read
# (as a user's pip config with find-links would); later runs are offline.
PACKAGES = ["django", "gunicorn", "fastapi", "uvicorn", "pip"]


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    cache = ROOT / ".cache" / "wheelhouse"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache.parent / "wheelhouse.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # xdist workers share it
        names = {w.name.split("-")[0].lower() for w in cache.glob("*.whl")}
        if not all(pkg in names for pkg in PACKAGES):
            subprocess.run(["python3", "-m", "pip", "wheel", "--quiet", "--wheel-dir",
                            str(cache), *PACKAGES], check=True, timeout=600)
    return cache


def server_python_lacks(*modules: str) -> None:
    """The server's python3 (this machine's, on PATH) has none of the app's packages: the
    release can only run from the venv `prepare` builds."""
    for module in modules:
        found = subprocess.run(["python3", "-c", f"import {module}"], capture_output=True)
        assert found.returncode != 0, f"python3 on this machine has {module}"


def init(p: Project, preset: str) -> dict[str, object]:
    """`init --preset` in the project; the server-specific keys from the test's config."""
    reference = tomllib.loads(p.write_config().read_text())
    run_cli(p.dir, p.home, ["init", "--preset", preset, "--app", "testapp", "--force"])
    data = tomllib.loads((p.dir / "bluegreen.toml").read_text())
    data["slots"], data["proxy"], data["hosts"] = (reference["slots"], reference["proxy"],
                                                   reference["hosts"])
    (p.dir / "bluegreen.toml").write_text(to_toml(data))
    return data


def git(p: Project, *args: str) -> None:
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
                   cwd=p.dir, check=True, capture_output=True)


def commit(p: Project, version: str) -> None:
    (p.dir / ".gitignore").write_text("/build/\n/dist/\n/srv/\n")  # srv: deploy_to
    if not (p.dir / ".git").exists():
        git(p, "init", "-q")
    git(p, "add", "-A")
    git(p, "commit", "-q", "-m", version)
    git(p, "tag", version)


def bg(p: Project, wheels: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """bluegreen with pip resolving the build's requirements from the wheel cache."""
    return run_cli(p.dir, p.home, args, timeout=300,
                   env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheels)})


DJANGO_VIEWS = '''
from pathlib import Path

from django.contrib.auth.models import User
from django.http import HttpResponse

VERSION = (Path(__file__).resolve().parent.parent / "VERSION").read_text().strip()


def health(request):
    return HttpResponse("ok")


def home(request):
    # a query on a table only `manage.py migrate` creates
    response = HttpResponse(f"hello from {VERSION}, {User.objects.count()} users")
    response["X-App-Version"] = VERSION
    return response
'''


def test_django_preset_deploys_a_startproject_app_offline(local_project: Project,
                                                          wheelhouse: Path) -> None:
    """`django-admin startproject` with a /health view, ALLOWED_HOSTS = [the site's name],
    DEBUG off and STATIC_ROOT set, as the preset's comments ask: two releases, each
    prepared (venv from the wheelhouse, collectstatic) and migrated on the server."""
    p = local_project
    server_python_lacks("django", "gunicorn")
    # A deploy_to as short as a server's: gunicorn's control socket goes in the slot dir,
    # and an AF_UNIX path is at most 107 bytes (pytest's tmp paths come close to that).
    p.host_override = {"deploy_to": tempfile.mkdtemp(prefix="bg-django-") + "/srv"}
    # django-admin from the (pure-Python) wheels, unpacked aside: nothing installed here
    tools = p.dir.parent / "django-admin"
    for name in ("django", "asgiref", "sqlparse"):
        zipfile.ZipFile(next(wheelhouse.glob(f"{name}-*.whl"))).extractall(tools)
    subprocess.run([sys.executable, "-m", "django", "startproject", "testapp", str(p.dir)],
                   env={**os.environ, "PYTHONPATH": str(tools)}, check=True)
    settings = p.dir / "testapp" / "settings.py"
    settings.write_text(settings.read_text().replace("DEBUG = True", "DEBUG = False")
                        .replace("ALLOWED_HOSTS = []", f"ALLOWED_HOSTS = [{SERVER_NAME!r}]")
                        + '\nSTATIC_ROOT = BASE_DIR / "static"\n')
    (p.dir / "testapp" / "views.py").write_text(DJANGO_VIEWS)
    urls = p.dir / "testapp" / "urls.py"
    urls.write_text(urls.read_text().replace(
        "urlpatterns = [", "from testapp import views\n\nurlpatterns = [\n"
        '    path("health", views.health),\n    path("", views.home),'))
    (p.dir / "requirements.txt").write_text("django\ngunicorn\n")
    init(p, "django")
    bg(p, wheelhouse, "setup")
    for version in ("1.0.0", "2.0.0"):
        (p.dir / "VERSION").write_text(version)
        commit(p, version)
        out = bg(p, wheelhouse, "deploy")
        assert "prepared in" in out.stderr and "migrate" in out.stderr, out.stderr
        answer = get(p.nginx.port)
        assert (answer.status, answer.body) == (200, f"hello from {version}, 0 users"), answer
    st = p.status()
    release = p.deploy_to / "releases" / st["slots"][st["live"]]["release"]
    assert (release / ".venv" / "bin" / "python").exists()
    assert (release / "static" / "admin").is_dir()  # collectstatic ran
    assert "gunicorn" in Path(f"/proc/{st['slots'][st['live']]['pid']}/cmdline").read_text()
    environ = Path(f"/proc/{st['slots'][st['live']]['pid']}/environ").read_bytes().split(b"\0")
    assert b"DJANGO_SETTINGS_MODULE=testapp.settings" in environ
    # gunicorn (25.1 and later) keeps a control socket: each colour its own, in its slot dir,
    # so stopping the idle colour leaves the live one's (a shared ~/.gunicorn/gunicorn.ctl
    # was removed by whichever stopped last).
    wheel = next(wheelhouse.glob("gunicorn-*.whl")).name.split("-")[1]
    if tuple(int(n) for n in wheel.split(".")[:2]) >= (25, 1):
        live_socket = p.deploy_to / "slots" / st["live"] / "gunicorn.ctl"
        deadline = time.monotonic() + 20  # (gunicorn opens it once its workers run)
        while not live_socket.is_socket() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert live_socket.is_socket()
        bg(p, wheelhouse, "stop", "blue" if st["live"] == "green" else "green")
        assert live_socket.is_socket()


def test_fastapi_preset_deploys_uvicorn_offline(local_project: Project,
                                                wheelhouse: Path) -> None:
    p = local_project
    server_python_lacks("fastapi", "uvicorn")
    (p.dir / "testapp").mkdir()
    (p.dir / "testapp" / "__init__.py").write_text("")
    (p.dir / "testapp" / "main.py").write_text(
        "from fastapi import FastAPI\nfrom fastapi.responses import PlainTextResponse\n\n"
        "app = FastAPI()\n\n\n@app.get('/health')\ndef health():\n    return {'ok': True}\n\n\n"
        "@app.get('/', response_class=PlainTextResponse)\ndef home():\n"
        "    return 'hello from fastapi'\n")
    (p.dir / "requirements.txt").write_text("fastapi\nuvicorn\n")
    init(p, "fastapi")
    commit(p, "1.0.0")
    bg(p, wheelhouse, "setup")
    bg(p, wheelhouse, "deploy")
    assert get(p.nginx.port).body == "hello from fastapi"
    st = p.status()
    assert st["slots"]["blue"]["version"] == "1.0.0"
    assert "uvicorn" in Path(f"/proc/{st['slots']['blue']['pid']}/cmdline").read_text()


def test_python_preset_refuses_a_release_whose_prepare_fails(local_project: Project,
                                                             wheelhouse: Path) -> None:
    """The python preset deploys gunicorn from its wheelhouse; then a release whose
    prepare fails (an import the release lacks): exit 1 with the failing command's words,
    nothing started on the idle colour, the live one untouched."""
    p = local_project
    (p.dir / "requirements.txt").write_text("gunicorn\n")
    (p.dir / "testapp").mkdir()
    (p.dir / "testapp" / "__init__.py").write_text("")
    (p.dir / "testapp" / "wsgi.py").write_text(
        (ROOT / "tests" / "apps" / "python" / "wsgi.py").read_text())
    (p.dir / "VERSION").write_text("1.0.0")
    init(p, "python")
    commit(p, "1.0.0")
    bg(p, wheelhouse, "setup")
    bg(p, wheelhouse, "deploy")
    assert get(p.nginx.port).body.startswith("hello from 1.0.0")
    # The next release asks for a package the build could not ship.
    data = tomllib.loads((p.dir / "bluegreen.toml").read_text())
    data["release"]["prepare"] += " && .venv/bin/python -c 'import no_such_module_here'"
    (p.dir / "bluegreen.toml").write_text(to_toml(data))
    (p.dir / "VERSION").write_text("2.0.0")
    commit(p, "2.0.0")
    out = run_cli(p.dir, p.home, ["deploy"], check=1, timeout=300,
                  env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(wheelhouse)})
    assert "prepare failed" in out.stderr and "no_such_module_here" in out.stderr
    assert get(p.nginx.port).body.startswith("hello from 1.0.0")
    assert p.status()["slots"]["green"]["release"] is None


def test_generic_preset_builds_out_of_the_box(local_project: Project) -> None:
    """`init --preset generic` in a directory holding an app: `build` works unchanged and
    the artifact holds the directory (not dist/ or .git/); then it deploys."""
    p = local_project
    server = p.dir / "server"
    server.write_text((ROOT / "src" / "bluegreen" / "demo" / "app.py").read_text())
    (p.dir / "VERSION").write_text("0.1.0")
    data = init(p, "generic")
    out = run_cli(p.dir, p.home, ["build"])
    artifact = p.dir / "dist" / "testapp-0.1.0.tar.gz"
    assert artifact.is_file(), out.stdout + out.stderr
    listing = subprocess.run(["tar", "-tzf", str(artifact)], capture_output=True, text=True,
                             check=True).stdout.split()
    assert "./server" in listing and "./bluegreen.toml" in listing
    assert not any(name.startswith(("./dist", "./.git")) for name in listing)
    data["run"]["command"] = "exec python3 server"  # the sample app reads $PORT
    (p.dir / "bluegreen.toml").write_text(to_toml(data))
    run_cli(p.dir, p.home, ["setup"])
    run_cli(p.dir, p.home, ["deploy"])
    assert get(p.nginx.port).body.startswith("hello from 0.1.0")


def test_a_git_archive_build_names_the_uncommitted_changes_it_leaves_out(
        local_project: Project) -> None:
    """A `release.build` with `git archive HEAD` (as the python, django and fastapi
    presets) ships committed files only: `deploy` warns, naming the changed and untracked
    files (it said nothing, and the release lacked them), but not the build's own output
    (an untracked dist/); committed, no warning."""
    p = local_project
    (p.dir / "app.py").write_text((ROOT / "src" / "bluegreen" / "demo" / "app.py").read_text())
    p.write_config(release={
        "artifact": "dist/testapp-{version}.tar.gz",
        "build": "mkdir -p dist && git archive --format=tar HEAD | gzip -n > "
                 "dist/testapp-{version}.tar.gz"})
    commit(p, "1.0.0")
    (p.dir / "app.py").write_text((p.dir / "app.py").read_text() + "\n# changed\n")
    (p.dir / "notes.txt").write_text("not added\n")

    def deploy(version: str) -> list[str]:
        out = run_cli(p.dir, p.home, ["deploy", "--version", version, "--json"])
        assert json.loads(out.stdout)["ok"] is True
        events = [json.loads(line) for line in out.stderr.splitlines()]
        return [e["message"] for e in events if e["level"] == "warn"]

    run_cli(p.dir, p.home, ["setup"])
    [warning] = deploy("1.0.0")
    assert "git archive" in warning and "2 uncommitted" in warning
    assert "app.py" in warning and "notes.txt" in warning and "dist" not in warning
    listing = subprocess.run(["tar", "-tzf", str(p.dir / "dist" / "testapp-1.0.0.tar.gz")],
                             capture_output=True, text=True, check=True).stdout.split()
    assert "app.py" in listing and "notes.txt" not in listing  # what the warning said
    assert get(p.nginx.port).status == 200
    git(p, "add", "app.py", "notes.txt")
    git(p, "commit", "-q", "-m", "all of it")
    assert deploy("2.0.0") == []
    assert (get(p.nginx.port).status, get(p.nginx.port).colour) == (200, "green")
