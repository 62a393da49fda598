"""The rules every planned output path must pass before anything runs.

An output must not be an input (compared by real path, and by inode for hard links and the
other names a file can have), must stay in the folder it was planned in (class names from a
model file become file names), must not be planned twice (compared case-insensitively where the
file system is), and its folder must be creatable and writable. All are checked at once, before
the network runs, and any problem is an OutputError naming the files.
"""

from __future__ import annotations

import os
import tempfile
import unicodedata
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import OutputError
from .file_types import PathLike
from .image_headers import data_files

_MAX_NAME_PART = 100


def file_name_part(text: str, fallback: str = "class") -> str:
    """``text`` (e.g. a class name from a model file) made safe as part of a file name: letters,
    digits, '-' and '.' are kept, everything else (separators, spaces, control characters) becomes
    '_'; never empty, never starting with '.', at most 100 characters."""
    text = unicodedata.normalize("NFC", str(text))
    safe = "".join(c if (c.isalnum() and c.isprintable()) or c in "-." else "_" for c in text)
    safe = safe.lstrip(".")[:_MAX_NAME_PART]
    try:
        safe.encode("utf-8")
    except UnicodeEncodeError:
        safe = safe.encode("utf-8", "replace").decode("utf-8")
    return safe or fallback


def real_path(path: PathLike) -> str:
    """The absolute path with every symbolic link resolved (the part that exists)."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def input_files(inputs: Iterable[PathLike]) -> List[Path]:
    """Every file the inputs consist of: the files themselves, the data files their headers name
    (.nhdr, .mhd) and, for a DICOM folder, the files directly in it."""
    files: List[Path] = []
    for source in (Path(p) for p in inputs):
        if source.is_dir():
            try:
                files += [entry for entry in source.iterdir() if entry.is_file()]
            except OSError:
                pass  # reading the folder will say why
        else:
            files += [source] + data_files(source)
    return files


def _inode(path: PathLike) -> Optional[Tuple[int, int]]:
    """(device, inode): one file under all its names (hard links, bind mounts, case variants)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


class _FolderProbe:
    """What creating a file in a folder shows, probed once per existing folder with a hidden file:
    whether files can be created there at all (permissions, read-only mounts, /proc), and whether
    the folder compares names case-insensitively (macOS, Windows by default: the upper-case name
    of the probe then exists too)."""

    def __init__(self) -> None:
        self._known: Dict[str, Tuple[Optional[str], bool]] = {}

    def probe(self, folder: Path) -> Tuple[Optional[str], bool]:
        """(why no file can be created in ``folder`` or its nearest existing ancestor, or None;
        whether names there compare case-insensitively)."""
        ancestor = _existing_ancestor(folder)
        if ancestor is None:
            return None, False
        if str(ancestor) not in self._known:
            self._known[str(ancestor)] = _probe(ancestor, folder)
        return self._known[str(ancestor)]

    def key(self, path: str) -> str:
        insensitive = self.probe(Path(path).parent)[1]
        return unicodedata.normalize("NFC", path).casefold() if insensitive else path


def _probe(ancestor: Path, folder: Path) -> Tuple[Optional[str], bool]:
    if not ancestor.is_dir():
        return (f"{ancestor!s} is a file, not a folder, so {folder!s} cannot hold outputs; choose another "
                f"output."), False
    try:
        handle, name = tempfile.mkstemp(prefix=".multitaskseg-probe-", dir=ancestor)
    except OSError as error:
        return (f"Cannot create outputs in {folder!s}: {ancestor!s} does not take new files ({error.strerror}). "
                f"Choose a writable folder."), False
    os.close(handle)
    try:
        probe = Path(name)
        return None, os.path.exists(probe.with_name(probe.name.upper()))
    finally:
        os.unlink(name)


def _existing_ancestor(folder: Path) -> Optional[Path]:
    folder = Path(os.path.abspath(folder))
    for candidate in (folder,) + tuple(folder.parents):
        if os.path.lexists(candidate):
            return candidate
    return None


def check_output_paths(outputs: Sequence[Tuple[Path, Optional[Path]]], inputs: Sequence[PathLike]) -> None:
    """Refuse, before anything runs, a plan whose outputs (path, the folder it must stay in, or
    None) destroy an input, leave their folder, clash with each other or cannot be created."""
    sources = input_files(inputs)
    real_inputs = {real_path(p): p for p in sources}
    inodes = {_inode(p): p for p in sources}
    inodes.pop(None, None)
    folders = _FolderProbe()
    planned: Dict[str, Path] = {}
    for path, folder in outputs:
        real = real_path(path)
        source = real_inputs.get(real) or inodes.get(_inode(path))
        if source is not None:
            raise OutputError(f"The output {path!s} is the input {source!s}: writing it would destroy the input. "
                              f"Choose another output name or folder.")
        if folder is not None and os.path.dirname(real) != real_path(folder):
            raise OutputError(f"The output {path!s} would be written outside its folder {folder!s}; its name "
                              f"comes from the model's class names. Check the model file.")
        if Path(path).is_dir():
            raise OutputError(f"The output {path!s} is a folder; give a file name or remove the folder.")
        problem = folders.probe(Path(path).parent)[0]
        if problem:
            raise OutputError(problem)
        key = folders.key(real)
        if key in planned:
            raise OutputError(f"Two outputs of this run would be the same file: {planned[key]!s} and {path!s} "
                              f"(names differing only in case are one file on this file system). Rename an input, "
                              f"or use separate output folders.")
        planned[key] = Path(path)
