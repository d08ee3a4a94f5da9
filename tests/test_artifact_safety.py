"""Artifacts unpacked as root (issue 28): no setuid, setgid or world-writable mode reaches a
release dir, and the local check reads every member the host's tar would unpack."""

from __future__ import annotations

import gzip
import io
import os
import stat
import subprocess
import tarfile
import time
from pathlib import Path, PurePosixPath

import pytest

from bluegreen.plan import release
from bluegreen.plan.layout import Layout

from conftest import Project

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="unpacks as root, as a root SSH "
                                "user's deploy does")


def _member(name: str, mode: int, kind: bytes = tarfile.REGTYPE,
            data: bytes = b"#!/bin/sh\necho hi\n") -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode, 0, 0
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def sample_with(p: Project, version: str,
                extra: list[tuple[tarfile.TarInfo, bytes | None]]) -> tuple[Path, bytes]:
    """The sample app at ``version`` with ``extra`` members appended; its artifact path and
    the uncompressed tar (for a test to damage)."""
    art = p.artifact(version)
    with tarfile.open(art, "r:gz") as src:
        members = [(m, src.extractfile(m).read() if m.isfile() else None)  # type: ignore[union-attr]
                   for m in src]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in [*members, *extra]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    art.write_bytes(gzip.compress(buf.getvalue(), mtime=0))
    return art, buf.getvalue()


def release_dir(p: Project, version: str) -> Path:
    [found] = [d for d in (p.deploy_to / "releases").iterdir() if d.name.startswith(version)]
    return found


def modes(root: Path) -> dict[str, int]:
    out = {".": root.lstat().st_mode}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = path.lstat().st_mode
    return out


def test_world_writable_members_are_unpacked_without_it_and_warned(
        local_project: Project) -> None:
    p = local_project
    p.bg("setup")
    p.deploy("1.0.0")
    sample_with(p, "2.0.0", [_member("pub/", 0o777, tarfile.DIRTYPE),
                             _member("pub/upload.sh", 0o777), _member("data.txt", 0o666)])
    out = p.bg("deploy", "--version", "2.0.0")
    assert "world-writable member(s)" in out.stderr and "pub/upload.sh" in out.stderr, out.stderr
    assert p.answer().version == "2.0.0"
    found = modes(release_dir(p, "2.0.0"))
    # (the host's commands run under umask 027: nothing of a release is open to others)
    assert stat.S_IMODE(found["pub/upload.sh"]) == 0o750, oct(found["pub/upload.sh"])
    assert stat.S_IMODE(found["data.txt"]) == 0o640
    assert stat.S_IMODE(found["."]) == 0o750
    assert not [n for n, m in found.items() if not stat.S_ISLNK(m) and m & 0o7022], found


def test_setuid_and_setgid_members_are_refused_before_upload(local_project: Project) -> None:
    p = local_project
    p.bg("setup")
    p.deploy("1.0.0")
    for version, member in (("2.0.0", _member("bin/su-me", 0o4755)),
                            ("3.0.0", _member("shared/", 0o2775, tarfile.DIRTYPE))):
        sample_with(p, version, [_member(str(PurePosixPath(member[0].name).parent) + "/", 0o755,
                                         tarfile.DIRTYPE), member])
        out = p.bg("deploy", "--version", version, check=1)
        assert "unsafe artifact" in out.stderr and "setuid or setgid" in out.stderr, out.stderr
        assert member[0].name.rstrip("/") in out.stderr
        assert "uploading" not in out.stderr
    assert not any(d.name.startswith(("2.0.0", "3.0.0", ".2.0.0", ".3.0.0"))
                   for d in (p.deploy_to / "releases").iterdir())
    assert p.answer().version == "1.0.0"


def test_the_hosts_unpack_strips_setuid_setgid_and_world_write(tmp_path: Path) -> None:
    """The unpack command itself, run by root with a real tar, on an archive the local check
    would refuse (a host may be sent one by an older bluegreen, or by hand), and a umask
    of 0 (as some services run with)."""
    cfg_root = tmp_path / "srv"
    (cfg_root / "releases").mkdir(parents=True)
    layout = Layout(root=PurePosixPath(cfg_root))
    rid = "1.0.0-abcdef012345"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in (_member("./", 0o777, tarfile.DIRTYPE),
                           _member("bin/", 0o2777, tarfile.DIRTYPE),
                           _member("bin/root-shell", 0o6755), _member("bin/open", 0o4777),
                           _member("log.txt", 0o666), _member("sticky/", 0o1777, tarfile.DIRTYPE)):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    Path(str(release.upload_path(layout, rid))).write_bytes(buf.getvalue())
    subprocess.run(release.unpack(layout, rid), check=True, timeout=60,
                   preexec_fn=lambda: os.umask(0))
    found = modes(Path(str(layout.release(rid))))
    assert not [n for n, m in found.items() if m & 0o6022], {n: oct(m) for n, m in found.items()}
    assert (Path(str(layout.release(rid))) / "bin" / "root-shell").read_bytes().startswith(b"#!")
    assert not Path(str(release.upload_path(layout, rid))).exists()


def test_a_corrupt_header_in_the_middle_is_refused_before_upload(local_project: Project) -> None:
    """Python's tarfile stops at a header with a bad checksum; GNU tar on the host skips it
    and unpacks what follows (here a setuid file): the check must read to the end."""
    p = local_project
    p.bg("setup")
    p.deploy("1.0.0")
    art, raw = sample_with(p, "2.0.0", [_member("hidden/", 0o755, tarfile.DIRTYPE),
                                        _member("hidden/ok", 0o644),
                                        _member("hidden/root-shell", 0o4755)])
    damaged = bytearray(raw)
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        middle = next(m for m in tar if m.name == "hidden/ok")
    damaged[middle.offset + 148] ^= 0x55  # its checksum field
    art.write_bytes(gzip.compress(bytes(damaged), mtime=0))
    # GNU tar reads past it and still finds the setuid member.
    listed = subprocess.run(["tar", "-tzf", str(art)], capture_output=True, text=True)
    assert "hidden/root-shell" in listed.stdout and "Skipping to next header" in listed.stderr

    out = p.bg("deploy", "--version", "2.0.0", check=1)
    assert "corrupt tar header at byte" in out.stderr, out.stderr
    assert "uploading" not in out.stderr
    assert not any(d.name.startswith(("2.0.0", ".2.0.0"))
                   for d in (p.deploy_to / "releases").iterdir())
    assert p.answer().version == "1.0.0"


def layout_release_exists(layout: Layout, rid: str) -> bool:
    return Path(str(layout.release(rid))).exists()


def test_the_unpack_dir_is_private_until_it_is_whole(tmp_path: Path) -> None:
    """While tar runs, the temp dir is mode 700 (no other user can reach the half-unpacked
    tree); the release dir then gets the usual mode. The archive comes through a fifo, so
    tar is caught mid-way for real."""
    root = tmp_path / "srv"
    (root / "releases").mkdir(parents=True)
    layout = Layout(root=PurePosixPath(root))
    rid = "1.0.0-abcdef012345"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in (_member("./", 0o755, tarfile.DIRTYPE), _member("a", 0o644),
                           _member("b", 0o644, data=os.urandom(1 << 20))):
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    upload = Path(str(release.upload_path(layout, rid)))
    os.mkfifo(upload)
    tmp = root / "releases" / f".{rid}.unpack"
    proc = subprocess.Popen(release.unpack(layout, rid), preexec_fn=lambda: os.umask(0o022))
    try:
        with upload.open("wb") as fifo:
            half = len(buf.getvalue()) // 2
            fifo.write(buf.getvalue()[:half])  # "./" and "a", and half of "b"
            fifo.flush()
            deadline = time.monotonic() + 10
            while not (tmp / "a").exists() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert (tmp / "a").exists() and not layout_release_exists(layout, rid)
            assert stat.S_IMODE(tmp.stat().st_mode) == 0o700, oct(tmp.stat().st_mode)
            fifo.write(buf.getvalue()[half:])
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert stat.S_IMODE(Path(str(layout.release(rid))).stat().st_mode) == 0o755
