"""A read-only view of a manual-download folder that looks inside zip archives too.

Datasets arrive as archives (`ISBI2016_ISIC_Part1_Training_Data.zip`) or already extracted.
Both give the same relative member paths, so builders search one index and never care which;
files in extracted folders win over the same path inside an archive. Nothing is extracted to disk.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

from jdiffseg.data.images import DataError


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file: `rel` is its posix path relative to the root (or to its archive)."""

    rel: str
    path: Path
    member: str | None = None  # member name inside the zip at `path`

    @property
    def name(self) -> str:
        """Where the file is, for messages: a path, or `archive.zip:member`."""
        return f"{self.path}:{self.member}" if self.member else str(self.path)

    @property
    def stem(self) -> str:
        return PurePosixPath(self.rel).stem

    @property
    def suffix(self) -> str:
        return PurePosixPath(self.rel).suffix.lower()

    @property
    def parent_name(self) -> str:
        return PurePosixPath(self.rel).parent.name

    def read_bytes(self) -> bytes:
        try:
            if self.member is None:
                return self.path.read_bytes()
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(self.member)
        except (OSError, zipfile.BadZipFile, KeyError) as e:
            raise DataError(f"cannot read {self.name}: {e}") from e


def require_dir(root: str | os.PathLike, what: str, instructions: str) -> Path:
    """Returns `root` as a Path, or stops with the path expected and how to fill it."""
    path = Path(root).expanduser()
    if not str(root) or not path.is_dir():
        raise DataError(f"{what}: manual_dir {path} does not exist. {instructions}")
    return path


def index(root: Path) -> dict[str, Entry]:
    """Maps every file under `root` (recursively, and inside `*.zip` there) by relative path."""
    entries: dict[str, Entry] = {}
    archives: list[Path] = []
    for dirpath, _, filenames in os.walk(root):
        for fn in sorted(filenames):
            path = Path(dirpath) / fn
            if fn.startswith("."):
                continue
            if fn.lower().endswith(".zip"):
                archives.append(path)
                continue
            rel = path.relative_to(root).as_posix()
            entries[rel] = Entry(rel, path)
    for arc in sorted(archives):
        try:
            with zipfile.ZipFile(arc) as zf:
                members = [m for m in zf.namelist() if not m.endswith("/")]
        except (OSError, zipfile.BadZipFile) as e:
            raise DataError(f"cannot open archive {arc}: {e}") from e
        prefix = arc.parent.relative_to(root).as_posix()
        for m in members:
            if m.startswith("__MACOSX/") or PurePosixPath(m).name.startswith("."):
                continue
            rel = m if prefix == "." else f"{prefix}/{m}"
            entries.setdefault(rel, Entry(rel, arc, m))
    return entries


def in_folder(entries: Iterable[Entry], folder: str, suffixes: tuple[str, ...]) -> list[Entry]:
    """Entries whose parent folder is named `folder` (at any depth) and whose suffix matches."""
    found = [e for e in entries if e.parent_name == folder and e.suffix in suffixes]
    return sorted(found, key=lambda e: e.rel)
