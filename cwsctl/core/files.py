"""Reading input files and writing output files safely: exact bytes, atomic replacement.

Every file cwsctl writes for the user (``--output``, ``--raw-out``, reports, exported keys) and
every file it keeps (config, tokens, keys) is written the same way: a temporary file made with
``O_CREAT|O_EXCL|O_NOFOLLOW`` under a random name in the target's own directory (so a planted
symlink is never followed and another user cannot pre-create it), filled, synced, then renamed
over the target. The temporary file's mode is ``0600`` unless the caller asks otherwise, always
reduced by the umask and never widened afterwards. An existing target that is a symlink, not a
regular file, or owned by someone else is refused before anything is written, and every OS failure
(a directory named, a missing directory, permission denied, a full disk) becomes a one-line error
naming the path; a failed write leaves the old file as it was and no temporary file behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from cwsctl.core.errors import CwsError, InputError, LocalKeyError, NetworkError

#: Private files: owner read/write. The umask may narrow it; nothing ever widens it.
PRIVATE_MODE = 0o600
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


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
    """Create ``path`` (and parents) 0700 if it is missing; an existing directory is left as it is.

    An existing directory's mode is the user's choice (a group-shared ``CWSCTL_HOME`` of mode
    2775 keeps its group access; ``cwsctl doctor`` warns when it is group- or world-writable).
    """
    missing = []
    for directory in (path, *path.parents):
        if os.path.lexists(directory):
            break
        missing.append(directory)
    try:
        for directory in reversed(missing):  # each one cwsctl makes is private, not just the last
            with contextlib.suppress(FileExistsError):
                directory.mkdir(mode=0o700)
        if not path.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "Not a directory")
    except OSError as exc:  # e.g. a regular file is in the way, or the parent is not writable
        raise LocalKeyError(
            f"cannot use {path} as a directory: {exc.strerror}",
            hint="point it at a directory, or move what is in the way",
        ) from None


@contextlib.contextmanager
def exclusive_lock(
    path: Path,
    *,
    error: type[CwsError] = InputError,
    wait: float | None = None,
    what: str = "lock",
) -> Iterator[None]:
    """Hold an exclusive advisory lock (``flock``) on ``path``, made 0600 if missing; the kernel
    drops it when the holder dies. A no-op where there is no ``flock``.

    Waits for the lock as long as it takes, or — with ``wait`` — at most ``wait`` seconds, then
    NetworkError "timed out waiting for the <what> …" (polling, so a stopped holder cannot keep
    a job past its deadline). A lock file that cannot be opened raises ``error``: "cannot write
    in <its directory>".
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, 0o600)
    except OSError as exc:
        raise error(f"cannot write in {path.parent}: {exc.strerror}") from None
    try:
        if wait is None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        else:
            give_up = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= give_up:
                        raise NetworkError(
                            f"timed out waiting for the {what} {path}",
                            hint="another cwsctl holds it: is one stopped or hung?",
                        ) from None
                    time.sleep(0.05)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def loose_dir_warning(path: Path) -> str | None:
    """A warning when ``path`` is a directory others may write in (None when it is fine)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if os.name == "posix" and stat.S_ISDIR(mode) and mode & 0o022:
        return (
            f"{path} is writable by {'others' if mode & 0o002 else 'its group'} "
            f"(mode {stat.S_IMODE(mode):o}): they can replace cwsctl's config and keys"
        )
    return None


def check_private_file(path: Path, *, what: str) -> None:
    """Refuse a secret file that group or others may read or write (exit 3, with the fix)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # the read that follows reports it
    if os.name == "posix" and mode & 0o077:
        raise LocalKeyError(
            f"{what} {path} is accessible by others (mode {stat.S_IMODE(mode):o})",
            hint=f"chmod 600 {path}",
        )


def no_core_dumps() -> None:
    """Stop this process from ever writing a core dump: a secret is now in its memory."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX
        return
    with contextlib.suppress(ValueError, OSError):
        # The soft limit decides whether a crash writes a core file: 0 means none. The hard
        # limit is left alone, so a test runner (or a parent) that calls this in-process does
        # not lose the right to raise it again for its other children.
        _, hard = resource.getrlimit(resource.RLIMIT_CORE)
        resource.setrlimit(resource.RLIMIT_CORE, (0, hard))


def describe_os_error(exc: OSError) -> str:
    """Why a write failed, in words: a full disk, quota or size limit is said as one."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return "no space left (disk full, quota or file size limit)"
    return exc.strerror or str(exc)


def check_output_path(
    path: Path, *, what: str = "output file", error: type[CwsError] = InputError
) -> None:
    """Refuse, before anything is sent or replaced, a place ``path`` cannot be written to.

    A directory, a symlink, something that is not a regular file, a file of another user, a
    missing or non-directory parent, or a parent this process cannot write in: one ``error``
    naming the path. (The write itself still checks again: this is the early, friendly check.)
    """
    parent = path.parent
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise error(f"cannot write {what} {path}: {describe_os_error(exc)}") from None
    if info is not None:
        if stat.S_ISLNK(info.st_mode):
            raise error(
                f"refusing to write {what} {path}: it is a symbolic link",
                hint="name the file itself, or remove the link",
            )
        if stat.S_ISDIR(info.st_mode):
            raise error(f"{what} {path} is a directory", hint="name a file in it")
        if not stat.S_ISREG(info.st_mode):
            raise error(f"refusing to write {what} {path}: it is not a regular file")
        if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
            raise error(
                f"refusing to replace {what} {path}: it belongs to another user",
                hint="write to a file of your own",
            )
    try:
        parent_info = os.stat(parent)
    except FileNotFoundError:
        raise error(f"cannot write {what} {path}: directory {parent} does not exist") from None
    except OSError as exc:
        raise error(f"cannot write {what} {path}: {describe_os_error(exc)}") from None
    if not stat.S_ISDIR(parent_info.st_mode):
        raise error(f"cannot write {what} {path}: {parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise error(f"cannot write {what} {path}: permission denied in {parent}")


class AtomicFile:
    """A file written under a temporary name beside ``path`` and renamed over it on commit.

    ``write`` may be called many times (a report is streamed); ``commit`` syncs and renames;
    ``abort`` (or an exception in a ``with`` block) removes the temporary file. With
    ``overwrite=False`` the final step is a hard link, which fails if ``path`` appeared meanwhile.
    """

    def __init__(
        self,
        path: Path,
        *,
        mode: int = PRIVATE_MODE,
        overwrite: bool = True,
        what: str = "output file",
        error: type[CwsError] = InputError,
    ) -> None:
        self.path = path
        self.what = what
        self.error = error
        self.overwrite = overwrite
        check_output_path(path, what=what, error=error)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
        for _ in range(100):
            self.tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
            try:
                # The mode is set at creation (less the umask): never briefly readable by others.
                self._fd = os.open(self.tmp, flags, mode)
                break
            except FileExistsError:
                continue  # someone else's name (or a planted link): draw another
            except OSError as exc:
                raise self._failure(exc) from None
        else:  # pragma: no cover - 100 collisions of 48 random bits
            raise error(f"cannot make a temporary file beside {what} {path}")
        self.closed = False

    def _failure(self, exc: OSError) -> CwsError:
        if exc.errno == errno.ENOENT:
            return self.error(
                f"cannot write {self.what} {self.path}: directory {self.path.parent} does not exist"
            )
        return self.error(f"cannot write {self.what} {self.path}: {describe_os_error(exc)}")

    def write(self, data: bytes) -> None:
        """Append ``data`` to the temporary file (all of it, or an error and nothing kept)."""
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._fd, view) :]
        except OSError as exc:
            self.abort()
            raise self._failure(exc) from None

    def commit(self) -> None:
        """Sync the temporary file and put it in place of ``path``."""
        if self.closed:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            self.abort()
            raise self._failure(exc) from None
        os.close(self._fd)
        self.closed = True
        try:
            if self.overwrite:
                check_output_path(self.path, what=self.what, error=self.error)
                os.replace(self.tmp, self.path)
            else:
                try:
                    os.link(self.tmp, self.path)
                except FileExistsError:
                    raise InputError(f"refusing to overwrite existing file: {self.path}") from None
                finally:
                    os.unlink(self.tmp)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp)
            if isinstance(exc, OSError):
                raise self._failure(exc) from None
            raise
        _fsync_dir(self.path.parent)

    def abort(self) -> None:
        """Forget what was written: the target is left as it was."""
        if not self.closed:
            os.close(self._fd)
            self.closed = True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def atomic_write(
    path: Path,
    data: bytes,
    *,
    mode: int = PRIVATE_MODE,
    overwrite: bool = True,
    what: str = "output file",
    error: type[CwsError] = InputError,
) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a mix.

    See :class:`AtomicFile`: mode ``0600`` (or what the umask leaves of ``mode``), a temporary
    file that follows no link, the target checked before and replaced by a rename. The parent
    directory must exist. Failures are one ``error`` naming the path (exit 2 by default).
    """
    with AtomicFile(path, mode=mode, overwrite=overwrite, what=what, error=error) as handle:
        handle.write(data)


def _fsync_dir(directory: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    if os.name != "posix":
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)
