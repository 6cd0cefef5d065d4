"""One writer at a time: an advisory lock (flock) on a hidden lock file beside an output.

Two labeling runs with the same --out, or two `index` appends to one folder, would interleave their logs
or lose one run's rows. The second one fails at once with one line instead. The lock goes with the
process (a kill releases it; the empty lock file it leaves is taken over by the next run).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from rsz_infer.errors import RszError


def lock_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.lock")


def is_locked(target: Path | str) -> bool:
    """True while an OutputLock on `target` is held (by any process)."""
    path = lock_path(Path(target))
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file: nobody holds it
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the shared lock taken just to look
    return False


class OutputLock:
    """Held from construction to release() (or the end of a `with` block); the lock file goes with it.

    Removing the file at release is safe because a taker checks, once it holds the lock, that the file it
    locked is still the one at the path (a file unlinked meanwhile is not a lock any more): then it retries.
    """

    def __init__(self, target: Path | str, what: str = "run") -> None:
        target = Path(target)
        self.path = lock_path(target)
        # the folders made here for the lock (deepest first): release() removes them again while empty, so
        # a run that fails before writing (say, --backend trt without a GPU) leaves no new empty folder
        self._made = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        while True:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # another run's release() removed the new folder meanwhile: again
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RszError(
                    f"{target}: another rsz-infer {what} is writing it right now (lock {self.path.name}); "
                    "wait for it to finish or choose another --out"
                ) from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                self._fd: int | None = fd
                return
            os.close(fd)  # the holder released and removed it between our open and flock: take the new one

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
            for folder in self._made:
                try:
                    folder.rmdir()
                except OSError:  # not empty: it holds this run's output (or another run's lock)
                    break

    def __enter__(self) -> OutputLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
