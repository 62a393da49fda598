"""Writing a file so that nothing is ever lost: the one writer every output goes through.

The content goes to a hidden temporary file in the target folder; only when it is complete and
checked is it renamed to the target. So:

* a failed write (a full disk: ITK's NIfTI and NRRD writers do not report it) leaves the target as
  it was: the caller's ``check`` reads the temporary file back before the rename;
* an interruption (Ctrl-C, or SIGTERM/SIGHUP, which the command turns into an exception) removes
  the temporary file and leaves the target untouched;
* without ``overwrite`` the rename never replaces a file, not even one another process created
  after the run started (a hard link, which fails on an existing name, instead of a rename);
* the file gets the mode a newly created file gets under the user's umask (not mkstemp's 0600).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from pathlib import Path
from typing import Callable, Iterator, Optional

from .errors import OutputError
from .file_types import PathLike, full_suffix
from .itk_paths import itk_can_open

# Errors of os.link that say "no hard links here", not "the name is taken".
_NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EACCES,
                  getattr(errno, "ENOTSUP", errno.EPERM), getattr(errno, "EOPNOTSUPP", errno.EPERM)}


def creation_mode() -> int:
    """0o666 without the bits of the process's umask: what open() would have created."""
    try:
        with open("/proc/self/status") as status:  # Linux: read it without changing it
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it (briefly)
    os.umask(mask)
    return 0o666 & ~mask


def output_problem(path: Path) -> Optional[str]:
    """Why ``path`` cannot be an output file, or None: it is a folder, or its folder is missing,
    is a file, or cannot be written."""
    if path.is_dir():
        return f"Output {path!s} is a folder; give a file name."
    parent = path.parent
    if not parent.exists():
        return f"Output folder {parent!s} does not exist; create it first."
    if not parent.is_dir():
        return f"Cannot write {path!s}: {parent!s} is a file, not a folder. Choose another output."
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"Cannot write in {parent!s}: permission denied (or read-only). Choose a writable folder."
    return None


@contextlib.contextmanager
def atomic_write_path(path: PathLike, overwrite: bool = False,
                      check: Optional[Callable[[Path], None]] = None) -> Iterator[Path]:
    """Yield a temporary path beside `path` (same suffix); move it to `path` once the body is done.

    Before the move the file must be non-empty, is flushed to disk, and ``check(temporary)`` runs
    (it raises OutputError saying why the content is incomplete, without naming the file). The temporary file is removed if
    anything fails or interrupts (KeyboardInterrupt included). An existing `path` without
    `overwrite` raises OutputError, before anything is written and again at the rename.
    """
    path = Path(path)
    problem = output_problem(path)
    if problem:
        raise OutputError(problem)
    if os.path.lexists(path) and not overwrite:
        raise _exists(path)
    temporary = None
    try:
        temporary = _create_temporary(path)
        yield temporary
        _finish(temporary, path, overwrite, check)
    except BaseException:
        if temporary is not None:
            with contextlib.suppress(OSError):
                temporary.unlink()
        raise


def _exists(path: Path) -> OutputError:
    return OutputError(f"Output {path!s} exists already; use --overwrite (Python: overwrite=True) to replace "
                       f"it, or choose another name.")


def _create_temporary(path: Path) -> Path:
    # The target's name may not be valid UTF-8, which ITK cannot take; 40 characters keep the
    # temporary name within the 255 bytes file systems allow.
    stem = path.name if itk_can_open(path.name) and path.name.isprintable() else "output"
    try:
        handle, name = tempfile.mkstemp(prefix=f".{stem[:40]}.tmp-", suffix=full_suffix(path), dir=path.parent)
    except OSError as error:
        raise OutputError(f"Cannot write in {path.parent!s}: {error.strerror}. Choose a writable folder.") from None
    os.close(handle)
    return Path(name)


def _finish(temporary: Path, path: Path, overwrite: bool, check: Optional[Callable[[Path], None]]) -> None:
    try:
        if temporary.stat().st_size == 0:
            raise OutputError(f"Cannot write {path!s}: nothing was written (is the disk full?). The previous "
                              f"content, if any, is unchanged.")
        descriptor = os.open(temporary, os.O_RDONLY)
        try:
            os.fsync(descriptor)  # a write the disk could not take shows here at the latest
        finally:
            os.close(descriptor)
        os.chmod(temporary, creation_mode())
    except OSError as error:
        raise OutputError(f"Cannot write {path!s}: {error.strerror}. The previous content, if any, is "
                          f"unchanged.") from None
    if check is not None:
        try:
            check(temporary)
        except OutputError as error:
            raise OutputError(f"Cannot write {path!s}: {error} (the previous content, if any, is unchanged).") from None
    try:
        if overwrite:
            os.replace(temporary, path)
        else:
            _rename_without_replacing(temporary, path)
    except FileExistsError:
        raise _exists(path) from None
    except OSError as error:
        raise OutputError(f"Cannot write {path!s}: {error.strerror}.") from None


def _rename_without_replacing(temporary: Path, path: Path) -> None:
    """Move ``temporary`` to ``path`` unless ``path`` exists (FileExistsError), atomically where the
    file system has hard links."""
    if os.name == "nt":
        os.rename(temporary, path)  # Windows' rename never replaces
        return
    try:
        os.link(temporary, path)
    except FileExistsError:
        raise
    except OSError as error:
        if error.errno not in _NO_HARD_LINKS:
            raise
        if os.path.lexists(path):  # no hard links (some network and FAT file systems): check, then rename
            raise FileExistsError(errno.EEXIST, "File exists", str(path)) from None
        os.rename(temporary, path)
        return
    os.unlink(temporary)


def write_bytes_atomically(path: PathLike, write: Callable[[Path], None], overwrite: bool = False,
                           check: Optional[Callable[[Path], None]] = None) -> Path:
    """``write(temporary)`` then the move of ``atomic_write_path``; OSErrors become OutputError."""
    path = Path(path)
    with atomic_write_path(path, overwrite, check) as temporary:
        try:
            write(temporary)
        except OSError as error:
            raise OutputError(f"Cannot write {path!s}: {error.strerror or error}. The previous content, if any, "
                              f"is unchanged.") from None
    return path


def write_text_atomically(path: PathLike, text: str, overwrite: bool = True) -> Path:
    """A report or table (UTF-8): readers see the old file or the whole new one, never half of it.
    ``overwrite`` defaults to True because reports are rewritten; commands check before they start."""
    return write_bytes_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"), overwrite)
