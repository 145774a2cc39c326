"""A spec as it is in another revision: a file, or ``REV:path`` read from git."""

from __future__ import annotations

import dataclasses
import posixpath
import subprocess
import tempfile
from pathlib import Path

from drivetrain.errors import UsageError
from drivetrain.spec import Spec, load_spec

__all__ = ["load_revision"]


def _git(directory: Path, *args: str) -> bytes:
    try:
        done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, check=False, timeout=60)
    except FileNotFoundError:
        raise UsageError("`--against REV:path` needs git on the PATH, got none: pass a file instead") from None
    if done.returncode != 0:
        raise UsageError(f"`--against` must name a revision and path git knows, got `git {' '.join(args)}` failing with: "
                         f"{done.stderr.decode(errors='replace').strip()}")
    return done.stdout


def _blob(directory: Path, rev: str, path: str) -> bytes:
    """The content of ``path`` at ``rev`` (relative to the repository's root), following symbolic links."""
    for _ in range(8):
        listing = _git(directory, "ls-tree", "-z", "--full-tree", rev, "--", path).decode(errors="replace").strip("\0")
        if not listing:
            raise UsageError(f"`--against` must name a file of revision {rev!r}, got {path!r}, which it does not hold")
        mode = listing.split(" ", 1)[0]
        content = _git(directory, "cat-file", "blob", f"{rev}:{path}")
        if mode != "120000":
            return content
        path = posixpath.normpath(posixpath.join(posixpath.dirname(path), content.decode()))
    raise UsageError(f"`--against` must not name a chain of more than 8 symbolic links, got {rev}:{path}")


def load_revision(ref: str, *, repository: Path | None = None) -> Spec:
    """The spec at ``ref``: an existing file, or ``REV:path`` with ``path`` relative to the root of the
    git repository that holds ``repository`` (default: the current directory)."""
    if Path(ref).is_file():
        return load_spec(ref)
    rev, sep, path = ref.partition(":")
    if not sep or not rev or not path:
        raise UsageError(f"`--against` must be a spec file or REV:path (say HEAD~1:drivetrain.yaml), got {ref!r}")
    directory = (repository or Path.cwd()).resolve()
    if directory.is_file():
        directory = directory.parent
    content = _blob(directory, rev, path.lstrip("/"))
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "drivetrain.yaml"
        target.write_bytes(content)
        spec = load_spec(target)
    return dataclasses.replace(spec, source=ref)
