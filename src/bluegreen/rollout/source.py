"""The project's sources as a build sees them: a `release.build` that runs `git archive`
ships what is committed, so what is not (changed, added, untracked) is left out."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

GIT_ARCHIVE = re.compile(r"\bgit\s+(?:-\S+\s+)*archive\b")


def uses_git_archive(build: str | None) -> bool:
    """Whether ``build`` runs `git archive` (the python, django and fastapi presets)."""
    return bool(build and GIT_ARCHIVE.search(build))


def git_state(directory: Path) -> tuple[str, list[Path]]:
    """What `git archive HEAD` would find in ``directory``: ("ok", the paths `git status
    --porcelain` lists there, i.e. what it leaves out), ("no-repo", []) outside a work
    tree, ("no-commit", []) in a repository without a commit, ("no-git", []) without git."""
    def git(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["git", "-C", str(directory), *args], capture_output=True,
                              text=True, timeout=60)

    try:
        top = git("rev-parse", "--show-toplevel")
        if top.returncode != 0:
            return "no-repo", []
        if git("rev-parse", "--verify", "-q", "HEAD").returncode != 0:
            return "no-commit", []
        status = git("status", "--porcelain", "--", ".")
    except FileNotFoundError:
        return "no-git", []
    except subprocess.TimeoutExpired:
        return "ok", []  # a slow repository: the build itself will say what is wrong
    root = Path(top.stdout.strip())
    return "ok", [root / line[3:] for line in status.stdout.splitlines() if line[3:]]


def left_out(build: str | None, directory: Path, artifact: Path | None = None) -> str | None:
    """A warning naming the uncommitted changes a `git archive` build leaves out, or
    None (no `git archive`, or nothing uncommitted). The artifact and the directories
    holding it (what the build writes, e.g. an untracked dist/) are not counted."""
    if not uses_git_archive(build):
        return None
    state, paths = git_state(directory)
    if artifact is not None:
        made = {artifact, *artifact.parents}
        paths = [p for p in paths if p.resolve() not in made]
    if state != "ok" or not paths:
        return None
    shown = [_relative(p, directory) for p in paths[:10]]
    names = ", ".join(shown) + (f" and {len(paths) - 10} more" if paths[10:] else "")
    return (f"release.build runs `git archive`, which ships committed files only: "
            f"{len(paths)} uncommitted change(s) are left out of this release ({names}); "
            "commit them to ship them")


def _relative(path: Path, directory: Path) -> str:
    try:
        return str(path.relative_to(directory.resolve()))
    except ValueError:
        return str(path)
