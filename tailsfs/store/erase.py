"""Erasing: crypto-erase first, overwrite passes after.

Destroying a header (its wrapped data key) or a session key file makes the
data unreadable at once, on any medium. The overwrite passes that follow are
best effort: on SSDs, journaling and copy-on-write filesystems the old blocks
may survive them (NIST SP 800-88; docs/FORMAT.md says more).
"""
from __future__ import annotations

import logging
import os
import queue
import threading
import time
from pathlib import Path
from typing import Callable

from ..format.header import HEADER_SIZE

log = logging.getLogger(__name__)

_BLOCK = 1 << 20
_ZERO_HEADER = bytes(HEADER_SIZE)


def destroy_header(fd: int, sync: bool = True) -> None:
    """Overwrite a memory's header, the only copy of its data key.

    With zeros: the key is gone either way, and 4 KiB from the kernel's random
    generator cost more than the rest of the write on every unlink. Overwrite
    passes, when configured, write random bytes over the whole file later.
    """
    os.pwrite(fd, _ZERO_HEADER, 0)
    if sync:
        os.fdatasync(fd)


def overwrite(path: Path, passes: int, keep: Callable[[Path], bool] | None = None) -> None:
    """Overwrite a regular file ``passes`` times with random bytes, then unlink it.

    A file that still has other hard links is only unlinked: its data belongs
    to a live name. ``keep``, when given, may take the overwritten file instead
    of the unlink (it returns True when it did).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if st.st_nlink == 1 and passes > 0 and st.st_size > 0:
        fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW)
        try:
            destroy_header(fd, sync=False)
            for _ in range(passes):
                for offset in range(0, st.st_size, _BLOCK):
                    os.pwrite(fd, os.urandom(min(_BLOCK, st.st_size - offset)), offset)
                os.fdatasync(fd)
        finally:
            os.close(fd)
    if keep is not None and st.st_nlink == 1 and keep(path):
        return
    os.unlink(path)


def overwrite_tree(root: Path, passes: int) -> int:
    """Overwrite and remove every file under ``root``, then the directories. Returns files erased."""
    count = 0
    if not root.exists():
        return 0
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                p.unlink()
            else:
                overwrite(p, passes)
            count += 1
        for name in dirnames:
            d = Path(dirpath, name)
            if d.is_symlink():
                d.unlink()
            else:
                d.rmdir()
    root.rmdir()
    return count


class Eraser:
    """Runs overwrite passes on trashed files in a background thread, when the store is quiet.

    Callers crypto-erase before queueing, so nobody waits for passes, and the
    data is unreadable from that moment. The passes themselves wait until no
    request has arrived for ``quiet`` seconds (see :meth:`note_activity`):
    run alongside a burst of deletes or creates, this thread's GIL hand-offs
    and fdatasyncs made each unlink about a third slower. They do not wait when
    the backlog holds ``max_pending_bytes`` (the trash holds disk space until
    it is erased), nor on :meth:`drain` and :meth:`close`. Entries left in the
    trash by a crash are queued again when the store opens.
    """

    def __init__(self, trash: Path, passes: int, quiet: float = 0.5,
                 max_pending_bytes: int = 256 << 20, keep: Callable[[Path], bool] | None = None) -> None:
        self.trash = trash
        self.passes = passes
        # Offered each overwritten file instead of its unlink (store/spares.py). Not without passes:
        # then the old chunks stay in the inode, as an unlinked file's stay on the medium.
        self.keep = keep if passes > 0 else None
        self.quiet = quiet
        self.max_pending_bytes = max_pending_bytes
        self._last_activity = 0.0
        self._pending_bytes = 0
        self._pending_lock = threading.Lock()
        self._hurry = threading.Event()  # set while a drain or close waits
        self._queue: queue.Queue[tuple[Path, int] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="tailsfs-eraser", daemon=True)
        self._thread.start()
        for entry in sorted(trash.iterdir()):
            self.submit(entry)

    @property
    def pending_bytes(self) -> int:
        """Bytes of deleted files still waiting for their passes (they hold disk space until then)."""
        return self._pending_bytes

    def note_activity(self) -> None:
        """A request is being served: hold the passes back for ``quiet`` seconds."""
        self._last_activity = time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since the last request was noted."""
        return time.monotonic() - self._last_activity

    def last_activity(self) -> float:
        """When the last request was noted (``time.monotonic()``; 0 before any)."""
        return self._last_activity

    def submit(self, path: Path, size: int = 0) -> None:
        """Queue a crypto-erased file (``size`` bytes on disk) for its overwrite passes."""
        with self._pending_lock:
            self._pending_bytes += size
        self._queue.put((path, size))

    def drain(self) -> None:
        """Return once everything queued so far is overwritten and removed."""
        self._hurry.set()
        try:
            self._queue.join()
        finally:
            self._hurry.clear()

    def close(self) -> None:
        self._hurry.set()
        self._queue.put(None)
        self._thread.join()

    def _wait_for_quiet(self) -> None:
        while not self._hurry.is_set() and self._pending_bytes < self.max_pending_bytes:
            idle = time.monotonic() - self._last_activity
            if idle >= self.quiet:
                return
            self._hurry.wait(self.quiet - idle)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                path, size = item
                self._wait_for_quiet()
                if path.is_symlink():  # first: is_dir() would stat its target, an encrypted name
                    path.unlink()
                elif path.is_dir():
                    overwrite_tree(path, self.passes)
                else:
                    overwrite(path, self.passes, self.keep)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("erasing a trashed file failed: %s", exc.strerror)
            finally:
                if item is not None:
                    with self._pending_lock:
                        self._pending_bytes -= item[1]
                self._queue.task_done()
