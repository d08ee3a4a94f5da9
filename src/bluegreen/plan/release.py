"""Builders for uploading, unpacking and pruning releases."""

from __future__ import annotations

from pathlib import PurePosixPath

from bluegreen.plan.files import Argv, reading, sh
from bluegreen.plan.layout import Layout


def release_id(version: str, sha256: str) -> str:
    return f"{version}-{sha256[:12]}"


def upload_path(layout: Layout, rid: str) -> PurePosixPath:
    """Where the tarball lands; a dot name so a half upload is never taken for a release."""
    return layout.releases / f".{rid}.tar.gz.upload"


def manifest(layout: Layout, rid: str) -> PurePosixPath:
    """The path and sha256 of every file of the release (``sha256sum``'s format), written
    at unpack and again after ``release.prepare`` (a dot name: never taken for a release)."""
    return layout.releases / f".{rid}.sha256"


# `exists`' exit status when the release dir is there but its files are not as unpacked.
DAMAGED = 66


@reading
def exists(layout: Layout, rid: str) -> Argv:
    """Exit 0 when the release is fully unpacked on the host and every file is as it was
    unpacked (its manifest checked); 1 when it is not there; DAMAGED, printing the files
    missing or changed, when a file was deleted or altered since (a half-done prune or
    `rm`, an edit). A release unpacked before manifests were written is taken as whole."""
    # A file added since (a .pyc the app wrote) is not in the manifest: only the files
    # unpacked and those `prepare` left are checked.
    return sh('[ -d "$1" ] || exit 1; [ -f "$2" ] || exit 0; cd "$1" || exit 1\n'
              'out="$(LC_ALL=C sha256sum -c --quiet "$2" 2>&1)" && exit 0\n'
              f'printf "%s\\n" "$out" | head -n 20; exit {DAMAGED}',
              layout.release(rid), manifest(layout, rid))


# `verify`'s exit status when the upload's sha256 is not the artifact's.
CORRUPT = 65


def verify(path: PurePosixPath, sha256: str) -> Argv:
    """Exit 0 when ``path``'s sha256 is ``sha256``; else print the one found, delete the
    file and exit CORRUPT."""
    return sh('sha="$(sha256sum < "$1")"; sha="${sha%% *}"; [ "$sha" = "$2" ] && exit 0\n'
              f'echo "$sha"; rm -f -- "$1"; exit {CORRUPT}', path, sha256)


# The path and sha256 of every file under the current dir, in `sha256sum -c`'s format.
_HASH_TREE = "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 -r sha256sum"


def unpack(layout: Layout, rid: str) -> Argv:
    """Unpack into a dot-named temp dir (mode 700 until it is whole) and rename it into
    place, so a release dir is always whole; on failure (a full disk, a bad archive)
    nothing is left behind. No setuid, setgid or world-writable mode survives. The path
    and sha256 of each file go into the release's `manifest`, for `exists` to check."""
    # GNU tar run by root keeps the archive's modes (--same-permissions) and owners: a
    # setuid file would be root's. The chmod also covers a umask of 0.
    return sh(
        'tmp="$(dirname "$1")/.$(basename "$1").unpack"; rm -rf "$tmp"; mkdir -m 700 "$tmp" || exit 1\n'
        'if ! tar -xzf "$2" -C "$tmp" --no-same-owner --no-same-permissions --no-overwrite-dir; then\n'
        '  rm -rf "$tmp" "$2"; exit 1\n'
        'fi\n'
        'chmod -R u-s,g-s,go-w "$tmp" && chmod "$(umask -S)" "$tmp" && chmod go-w "$tmp" && '
        f'(cd "$tmp" && {_HASH_TREE}) > "$3.tmp" && mv -f "$3.tmp" "$3" && '
        'touch "$tmp" && mv -T "$tmp" "$1" && rm -f "$2" && exit 0\n'
        'rm -rf "$tmp" "$3.tmp"; [ -d "$1" ] || rm -f "$3"; exit 1',
        layout.release(rid),
        upload_path(layout, rid),
        manifest(layout, rid),
    )


@reading
def list_releases(layout: Layout) -> Argv:
    """Release dirs, oldest first (unpack time: a release dir is touched when unpacked)."""
    return sh('cd "$1" 2>/dev/null || exit 0; ls -1tr --indicator-style=none', layout.releases)


@reading
def list_with_times(layout: Layout) -> Argv:
    """The host's clock (seconds since the epoch), then a line per release dir: its unpack
    time (the dir is touched when unpacked) and its name."""
    return sh('date +%s; cd "$1" 2>/dev/null || exit 0\n'
              'for d in *; do [ -d "$d" ] && stat -c "%Y %n" -- "$d"; done; true',
              layout.releases)


def remove(layout: Layout, rids: list[str]) -> Argv:
    """Delete releases (and their `prepare` markers and manifests)."""
    return ["rm", "-rf", "--", *[str(layout.release(r)) for r in rids],
            *[str(prepared_marker(layout, r)) for r in rids],
            *[str(manifest(layout, r)) for r in rids]]


def prepared_marker(layout: Layout, rid: str) -> PurePosixPath:
    """Present once ``release.prepare`` succeeded in the release (a dot name: never taken
    for a release)."""
    return layout.releases / f".{rid}.prepared"


def prepare(layout: Layout, rid: str, env_file: PurePosixPath, command: str) -> Argv:
    """Run ``release.prepare`` in the release dir with the slot's env (read from
    ``env_file``, removed afterwards: it holds secrets); on success write the manifest
    anew (what prepare made or changed is part of the release from then on) and mark it
    prepared."""
    return sh('cd "$1" || exit 1; . "$2"; rm -f "$2"; sh -c "$3" 2>&1 < /dev/null '
              f'&& {_HASH_TREE} > "$5.tmp" && mv -f "$5.tmp" "$5" && touch "$4"',
              layout.release(rid), env_file, command, prepared_marker(layout, rid),
              manifest(layout, rid))


def to_prune(releases_oldest_first: list[str], keep: int, protected: set[str]) -> list[str]:
    """The releases to delete: all but the ``keep`` newest and the protected ones."""
    names = [r for r in releases_oldest_first if not r.startswith(".")]
    newest = set(names[-keep:]) if keep > 0 else set()
    return [r for r in names if r not in newest and r not in protected]
