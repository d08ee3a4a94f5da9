"""What a deploy needs on this machine, as `bluegreen check` reports it before the first
deploy: a build command that exists and the sources it reads (a `git archive` build
needs a repository with a commit), or the artifact; and the env_file."""

from __future__ import annotations

import shlex
import shutil
from dataclasses import dataclass

from bluegreen.config import ENV_KEY_RE, Config, render
from bluegreen.errors import ConfigError
from bluegreen.rollout import source

# The host column of `check`'s rows about this machine (the build, the artifact); not a
# possible host label (`address = "local"` is labelled "local").
LOCAL = "(this machine)"


@dataclass
class CheckItem:
    host: str
    item: str
    ok: bool | None  # None: a note (advice), which does not fail the check
    detail: str


def load_env_file(cfg: Config) -> dict[str, str]:
    """The env_file's variables ({} without one); ConfigError when it is missing or names
    a variable badly."""
    if not cfg.run.env_file:
        return {}
    from dotenv import dotenv_values  # ~15 ms to import: only with an env_file

    path = cfg.local_path(cfg.run.env_file)
    if not path.is_file():
        raise ConfigError(f"run.env_file: {path} does not exist")
    parsed = dotenv_values(path, interpolate=False)
    bad = [k for k in parsed if not ENV_KEY_RE.match(k)]
    if bad:
        raise ConfigError(f"run.env_file: {bad[0]!r} is not a valid variable name")
    return {k: v or "" for k, v in parsed.items()}


def check_local(cfg: Config) -> list[CheckItem]:
    """The rows about this machine: the release (build or artifact) and the env_file."""
    return [*_release_rows(cfg), *_env_file_rows(cfg)]


def _release_rows(cfg: Config) -> list[CheckItem]:
    rel = cfg.release
    if rel.build:
        try:
            words = shlex.split(render(rel.build, app=cfg.app, version="0"))
        except ValueError as exc:  # unbalanced quotes: the shell would refuse it too
            return [CheckItem(LOCAL, "release.build", False, f"not a shell command: {exc}")]
        # The command a shell would run first (after VAR=value assignments).
        command = next((w for w in words if "=" not in w.split("/")[0]), "")
        found = bool(command) and (shutil.which(command) is not None or
                                   cfg.local_path(command).exists())
        return [CheckItem(LOCAL, "release.build", found, f"`{command}` found" if found else
                          f"`{command}` not found on this machine (release.build)"),
                *_sources_rows(cfg)]
    # Without a build, the artifact may come from `deploy --artifact` (a CI that builds it
    # elsewhere): check cannot know, so a missing one is a note, never a failure.
    if not rel.artifact:
        return [CheckItem(LOCAL, "release.artifact", None,
                          "no release.build nor release.artifact: deploy needs --artifact")]
    if rel.version is None:
        return [CheckItem(LOCAL, "release.artifact", None,
                          "the artifact's name depends on the version: checked at deploy")]
    path = cfg.local_path(render(rel.artifact, app=cfg.app, version=rel.version))
    if path.is_file():
        return [CheckItem(LOCAL, "release.artifact", True, f"{path} exists")]
    return [CheckItem(LOCAL, "release.artifact", None,
                      f"{path} does not exist and there is no release.build to make it: "
                      "`deploy` will need `--artifact PATH` (or put the artifact there)")]


def _sources_rows(cfg: Config) -> list[CheckItem]:
    """A `git archive` build needs a git repository with a commit; what it would leave out
    (uncommitted changes) is a note."""
    if not source.uses_git_archive(cfg.release.build):
        return []
    item, where = "release.build sources", cfg.base_dir
    state, _ = source.git_state(where)
    if state == "no-git":
        return [CheckItem(LOCAL, item, False, "release.build runs `git archive` and git is "
                          "not installed on this machine")]
    if state == "no-repo":
        return [CheckItem(LOCAL, item, False, f"release.build runs `git archive`, but {where} "
                          "is not in a git repository: `git init`, commit your code, or "
                          "change release.build")]
    if state == "no-commit":
        return [CheckItem(LOCAL, item, False, f"release.build runs `git archive HEAD`, but the "
                          f"git repository of {where} has no commit yet: commit your code")]
    rel = cfg.release
    made = (cfg.local_path(render(rel.artifact, app=cfg.app, version=rel.version))
            if rel.artifact and rel.version else None)  # the build's output: not counted
    left_out = source.left_out(rel.build, where, made)
    return [CheckItem(LOCAL, item, None if left_out else True,
                      left_out or "git archive: everything is committed")]


def _env_file_rows(cfg: Config) -> list[CheckItem]:
    if not cfg.run.env_file:
        return []
    item = f"run.env_file {cfg.run.env_file}"
    try:
        count = len(load_env_file(cfg))
    except ConfigError as exc:
        fix = ("create it (KEY=VALUE lines; deploy uploads it, mode 0600) or remove "
               "run.env_file" if "does not exist" in exc.message else "fix that line")
        return [CheckItem(LOCAL, item, False, f"{exc.message}: {fix}")]
    return [CheckItem(LOCAL, item, True, f"{count} variable(s)")]
