"""Atomic file output: nothing gets its final name until its bytes are complete and on disk.

Every writer in bertprep (token store, shards, manifests, checkpoints) goes through here: write to
a hidden temporary name in the destination directory, flush, fsync, then `os.replace`. A crash or
an exception leaves only a `.tmp` file that never matches a final-name pattern.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
from pathlib import Path
from typing import IO, Iterator

from bertprep.shards.errors import BertprepError, InputError, OutputError, ShardFormatError

TMP_SUFFIX = ".tmp"
LOCK_NAME = ".bertprep.lock"  # in an output directory: held by the run writing there
_PID_RE = re.compile(rf"\.(\d+){re.escape(TMP_SUFFIX)}$")  # the writer's PID in a `temp_name`


def temp_name(final: Path) -> Path:
    """The temporary sibling a file is written under before it is renamed to `final`."""
    return final.with_name(f".{final.name}.{os.getpid()}{TMP_SUFFIX}")


def fsync_dir(directory: Path) -> None:
    """Make a rename durable: fsync the directory entry (a no-op where the OS refuses)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(final: Path | str, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file that becomes `final` only if the block exits without an exception."""
    final = Path(final)
    tmp = temp_name(final)
    f = open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8"}))
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes, which fails again on a full disk
            f.close()
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


# What the machine, not bertprep, got wrong when writing: a one-line error instead of a traceback.
ENVIRONMENT_ERRNOS = {
    errno.ENOSPC: "no space left on the device; free space and re-run",
    errno.EDQUOT: "disk quota exceeded; free space and re-run",
    errno.EROFS: "read-only file system; choose another output directory",
    errno.EACCES: "permission denied; choose another output directory",
    errno.EPERM: "operation not permitted; choose another output directory",
}


# An OSError about a path the user gave (a name too long, a file where a directory must be, ...):
# one line naming the path, not a traceback. Any other OSError is a bug and keeps its traceback.
PATH_ERRNOS = {
    errno.ENAMETOOLONG: "file name too long; choose a shorter path",
    errno.ENOTDIR: "a part of this path is a file, not a directory; choose another path",
    errno.EISDIR: "is a directory; name a file",
    errno.EEXIST: "exists and is not a directory; choose another path",
    errno.ELOOP: "too many levels of symbolic links",
    errno.ENOENT: "no such file or directory",
    **ENVIRONMENT_ERRNOS,
}


def path_error(e: OSError) -> BertprepError | None:
    """The one-line error for an OSError about a named path (see PATH_ERRNOS), else None."""
    if e.filename is None or e.errno not in PATH_ERRNOS:
        return None
    return InputError(f"{e.filename}: {PATH_ERRNOS[e.errno]}")


@contextlib.contextmanager
def environment_errors(where: Path | str) -> Iterator[None]:
    """Turn a full disk or an unwritable output (`OSError` with one of ENVIRONMENT_ERRNOS) into an
    `OutputError` naming `where`. pyarrow reports errno only inside its message ("[errno 28]")."""
    try:
        yield
    except OSError as e:
        code = e.errno
        if code is None and (m := re.search(r"\[errno (\d+)\]", str(e))):
            code = int(m.group(1))
        if code not in ENVIRONMENT_ERRNOS:
            raise
        name = f" ({Path(e.filename).name})" if e.filename else ""
        raise OutputError(f"{where}: cannot write{name}: {ENVIRONMENT_ERRNOS[code]}") from None


def publish(tmp: Path, final: Path) -> None:
    """Give a complete temporary file its final name (for writers that stream into `tmp`)."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def write_json(final: Path | str, obj) -> None:
    """Write `obj` as pretty, key-sorted JSON atomically (sorted so re-runs are byte-identical)."""
    with atomic_write(final, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def read_format_json(path: Path | str, format_name: str, version: int, what: str, advice: str = "") -> dict:
    """Read one of our JSON files and check its `format` and `format_version`; every problem is a
    one-line ShardFormatError naming the file (`advice` is appended to a version mismatch)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShardFormatError(f"{path}: no such {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ShardFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(obj, dict) or obj.get("format") != format_name:
        raise ShardFormatError(f"{path}: not a bertprep {what}")
    if obj.get("format_version") != version:
        raise ShardFormatError(f"{path}: {what} version {obj.get('format_version')}, this bertprep reads "
                               f"{version}{advice}")
    return obj


def sha256_file(path: Path | str, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks so memory stays flat."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temps(directory: Path) -> int:
    """Delete temporary files an interrupted run left in `directory`; returns how many. A file
    whose `temp_name` carries the PID of a live process (this one included) is kept: it may be
    being written right now. Callers hold `output_lock`, so a temporary without a PID (a cluster
    task's piece) belongs to a run that is over."""
    n = 0
    for p in directory.glob(f".*{TMP_SUFFIX}"):
        m = _PID_RE.search(p.name)
        if m and _alive(int(m.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):  # another user's process; a number no PID can be
        return pid < 1 << 31
    return True


@contextlib.contextmanager
def output_lock(directory: Path, command: str) -> Iterator[None]:
    """One bertprep run writing into `directory` at a time (the kernel drops the lock if we die).

    A POSIX record lock (`lockf`), not `flock`: forked pool workers share an flock'd file
    description, so a worker outliving a killed parent would keep the next run out. The holder
    writes its command's name into the lock file, so a refused run can say whose lock it met."""
    fd = os.open(Path(directory) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 16, 0).decode("ascii", "replace")
        os.close(fd)
        if e.errno not in (errno.EACCES, errno.EAGAIN):
            raise
        holder = f"{holder} " if re.fullmatch(r"[a-z]+", holder) else ""  # empty while the holder starts
        raise InputError(f"{directory}: another bertprep {holder}run is writing here; wait for it or use another "
                         "--out") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, command.encode("ascii"), 0)
        yield
    finally:
        fcntl.lockf(fd, fcntl.LOCK_UN)
        os.close(fd)
