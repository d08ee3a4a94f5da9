"""The local side of a release: version, build command, and a checked artifact."""

from __future__ import annotations

import collections
import hashlib
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from bluegreen.config import Config, check_version, render
from bluegreen.errors import ArtifactError, BlueGreenError, ConfigError
from bluegreen.plan.release import release_id
from bluegreen.rollout import source


@dataclass(frozen=True)
class Artifact:
    path: Path
    version: str
    sha256: str
    # A release already kept on the hosts (`rollback --to`): nothing local to upload.
    kept: bool = False

    @classmethod
    def of_kept(cls, rid: str) -> Artifact:
        """A release kept on the hosts, by its id (``VERSION-SHA12``)."""
        version, _, sha = rid.rpartition("-")
        return cls(Path(rid), version, sha, kept=True)

    @property
    def release_id(self) -> str:
        return release_id(self.version, self.sha256)


def resolve_version(cfg: Config, override: str | None) -> str:
    """The version to deploy: --version, else release.version, else release.version_command."""
    if override is not None:
        version = override
    elif cfg.release.version is not None:
        version = cfg.release.version
    elif cfg.release.version_command is not None:
        command = render(cfg.release.version_command, app=cfg.app)
        proc = subprocess.run(command, shell=True, cwd=cfg.base_dir, capture_output=True,
                              text=True, timeout=120)
        if proc.returncode != 0:
            raise ConfigError(
                f"release.version_command `{command}` failed (exit {proc.returncode}): "
                f"{proc.stderr.strip()[-500:]}"
            )
        version = proc.stdout.strip()
    else:
        raise ConfigError("no version: set release.version or release.version_command, "
                          "or pass --version")
    try:
        return check_version(version)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def artifact_path(cfg: Config, version: str, override: str | None) -> Path:
    if override is not None:
        return Path(override).expanduser().resolve()
    if cfg.release.artifact is None:
        raise ConfigError("release.artifact is not set; set it or pass --artifact PATH")
    return cfg.local_path(render(cfg.release.artifact, app=cfg.app, version=version))


def build(cfg: Config, version: str, echo: Callable[[str], None] | None = None,
          output: Callable[[str], None] | None = None) -> None:
    """Run ``release.build`` locally, in the config file's directory: ``echo`` gets a line
    when it starts and one with its duration; ``output`` each line of its output as it
    comes (`-v`); its tail is in the error when it fails."""
    if not cfg.release.build:
        return
    command = render(cfg.release.build, app=cfg.app, version=version)
    if echo:
        echo(f"building: {command}")
    started = time.monotonic()
    tail: collections.deque[str] = collections.deque(maxlen=60)
    with subprocess.Popen(command, shell=True, cwd=cfg.base_dir, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line)
            if output:
                output("build| " + line.rstrip("\n"))
    if proc.returncode != 0:
        text = "".join(tail).strip()[-3000:]
        raise BlueGreenError(f"build command `{command}` failed (exit {proc.returncode}) after "
                             f"{time.monotonic() - started:.1f}s:\n{text}", detail=text)
    if echo:
        echo(f"built in {time.monotonic() - started:.1f}s")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_members(path: Path) -> list[str]:
    """Refuse a tarball that is not gzip'd tar, that tar on a host would read further than
    this check (a corrupt header), or whose members could land outside the release dir
    (absolute paths, ``..``, links pointing out, devices) or run as their owner (setuid,
    setgid). Returns warnings (world-writable members: unpacked without it)."""
    writable: list[str] = []
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                _check_member(member)
                if member.mode & 0o002 and not member.issym():
                    writable.append(member.name)
            _check_end(tar, path)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError(f"{path} is not a readable .tar.gz: {exc}") from None
    if not writable:
        return []
    names = ", ".join(writable[:5]) + (f" and {len(writable) - 5} more" if writable[5:] else "")
    return [f"artifact {path.name}: {len(writable)} world-writable member(s) ({names}); "
            "unpacked without write access for group and others (chmod go-w); build the "
            "artifact without them to silence this"]


def _check_end(tar: tarfile.TarFile, path: Path) -> None:
    """Refuse unless the members read reach the end of the archive, as GNU tar sees it:
    Python's tarfile stops at a header with a bad checksum, GNU tar skips it and unpacks
    the members after it, so those would reach the host unchecked. Both stop at a zero
    block (the end-of-archive marker, or a lone one) and at the end of the data."""
    fileobj = tar.fileobj
    assert fileobj is not None
    fileobj.seek(tar.offset)
    if fileobj.read(tarfile.BLOCKSIZE).strip(b"\0"):
        raise ArtifactError(
            f"unsafe artifact: {path} has a corrupt tar header at byte {tar.offset} of the "
            "unpacked archive; tar on the host would skip it and unpack the members after "
            "it unchecked; rebuild the artifact")


def _check_member(member: tarfile.TarInfo) -> None:
    name = PurePosixPath(member.name)
    if name.is_absolute() or ".." in name.parts:
        raise ArtifactError(f"unsafe artifact: member {member.name!r} escapes the release dir")
    if member.isdev() or member.isfifo():
        raise ArtifactError(f"unsafe artifact: member {member.name!r} is a device or fifo")
    if member.mode & 0o6000 and not member.issym():
        raise ArtifactError(
            f"unsafe artifact: member {member.name!r} is setuid or setgid (mode "
            f"{member.mode:04o}); it would run as its owner; build the artifact without "
            "it (chmod u-s,g-s)")
    if member.issym() or member.islnk():
        target = PurePosixPath(member.linkname)
        base = name.parent if member.issym() else PurePosixPath()
        if target.is_absolute() or _escapes(base / target):
            raise ArtifactError(
                f"unsafe artifact: link {member.name!r} -> {member.linkname!r} points outside "
                "the release dir"
            )


def _escapes(path: PurePosixPath) -> bool:
    depth = 0
    for part in path.parts:
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in (".", ""):
            depth += 1
    return False


def prepare(cfg: Config, *, version: str | None, artifact: str | None,
            skip_build: bool, echo: Callable[[str], None] | None = None,
            output: Callable[[str], None] | None = None,
            warn: Callable[[str], None] | None = None) -> Artifact:
    """Build (unless skipped or an artifact is given) and check the artifact to deploy;
    ``echo`` and ``output``: see `build`; ``warn`` gets what the check lets through."""
    ver = resolve_version(cfg, version)
    if artifact is None and not skip_build:
        made = artifact_path(cfg, ver, None) if cfg.release.artifact else None
        ignored = source.left_out(cfg.release.build, cfg.base_dir, made)
        if ignored and warn:
            warn(ignored)
        build(cfg, ver, echo, output)
    path = artifact_path(cfg, ver, artifact)
    if not path.is_file():
        raise ArtifactError(f"artifact {path} does not exist"
                            + ("" if cfg.release.build else " (release.build is not set)"))
    for warning in check_members(path):
        if warn:
            warn(warning)
    return Artifact(path, ver, sha256_of(path))
