"""Reading input files and writing output files safely: exact bytes, atomic replacement."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from cwsctl.core.errors import CwsError, InputError, LocalKeyError


def read_bytes(path: Path, *, what: str = "file", error: type[CwsError] = InputError) -> bytes:
    """Read a whole file as bytes; turn every OS failure into a one-line ``error``."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise error(f"{what} is a directory: {path}") from None
    except PermissionError:
        raise error(f"{what} is not readable (permission denied): {path}") from None
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def ensure_private_dir(path: Path) -> None:
    """Create ``path`` (and parents) if needed and make sure only the owner can enter it."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:  # e.g. a regular file is in the way
        raise LocalKeyError(
            f"cannot use {path} as a directory: {exc.strerror}",
            hint="point it at a directory, or move what is in the way",
        ) from None
    if os.name == "posix" and (path.stat().st_mode & 0o077):
        path.chmod(0o700)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix.

    The temporary file is created with ``mode`` from the start (O_CREAT|O_EXCL), so a private
    key is never briefly readable by others. With ``overwrite=False`` the final step is a hard
    link, which fails if ``path`` appeared meanwhile, instead of a rename that would replace it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            if os.name == "posix":
                os.fchmod(handle.fileno(), mode)  # the umask may have removed bits we want
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise InputError(f"refusing to overwrite existing file: {path}") from None
            finally:
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
