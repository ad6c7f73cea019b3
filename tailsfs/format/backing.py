"""The byte-addressed file the format layer reads and writes through."""
from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import threading
import time
from typing import Protocol

log = logging.getLogger(__name__)

_SYNC_FILE_RANGE_WRITE = 2
WRITEBACK_KICK = 8 << 20  # start the disk on each 8 MiB written, so fsync finds little left
FLUSH_AHEAD = 64 << 20  # make each 64 MiB written durable in the background (FdBacking._flush_ahead)


def _load_sync_file_range():  # type: ignore[no-untyped-def]
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range()


class Backing(Protocol):
    def pread(self, size: int, offset: int) -> bytes: ...
    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int: ...
    def preadinto(self, buf: memoryview, offset: int) -> int: ...
    def truncate(self, size: int) -> None: ...
    def size(self) -> int: ...
    def sync(self, data_only: bool = False) -> None: ...
    def close(self) -> None: ...


class FaultPlan:
    """Test-only failures of backing-file operations, to prove they surface as errors.

    Armed only by a daemon started with TAILSFS_TEST_FAULTS=1 (through the xattr
    ``user.tails.test.fault``) or by tests in-process; a disarmed plan costs one
    attribute read per operation.
    """

    OPS = ("read", "write", "sync", "truncate")

    def __init__(self) -> None:
        self.armed = False
        self._left: dict[str, tuple[int, int]] = {}

    def arm(self, op: str, err: int, count: int) -> None:
        """Make the next ``count`` operations of kind ``op`` fail with ``err``."""
        if op not in self.OPS or err <= 0 or count <= 0:
            raise ValueError(f"a fault is one of {self.OPS}, a positive errno and a positive count")
        self._left[op] = (err, count)
        self.armed = True

    def disarm(self) -> None:
        self._left.clear()
        self.armed = False

    def check(self, op: str) -> None:
        rule = self._left.get(op)
        if rule is None:
            return
        err, count = rule
        if count <= 1:
            del self._left[op]
            self.armed = bool(self._left)
        else:
            self._left[op] = (err, count - 1)
        raise OSError(err, f"injected {op} fault: {os.strerror(err)}")


FAULTS = FaultPlan()


def read_spinning(fd: int, buf: memoryview, offset: int, spin: float) -> int:
    """``preadv`` into ``buf`` that waits for the disk busily, for up to ``spin`` seconds, before sleeping.

    A blocking read that misses the page cache puts the thread to sleep until the disk
    answers. On a VM whose idle vCPUs halt, waking up again costs more than a small
    file's disk read, and the caches come back cold (docs/PERFORMANCE.md, seventeenth
    round). So the read asks with RWF_NOWAIT, which starts the kernel's readahead on a
    miss and returns EAGAIN instead of sleeping, and asks again (yielding the CPU in
    between) until the bytes are there or ``spin`` has passed; then it blocks as usual.
    Returns what a blocking read returns: all of ``buf``, or less only at end of file.
    """
    done, deadline = 0, 0.0
    while done < len(buf):
        try:
            n = os.preadv(fd, [buf[done:]], offset + done, os.RWF_NOWAIT)
        except BlockingIOError:
            now = time.perf_counter()
            if not deadline:
                deadline = now + spin
            elif now >= deadline:
                break
            os.sched_yield()
            continue
        except OSError as exc:
            if exc.errno != errno.EOPNOTSUPP:  # a filesystem without non-blocking reads: just block
                raise
            break
        if n == 0:
            return done  # end of file
        done += n  # a part was cached: ask again for the rest
    if done < len(buf):
        done += os.preadv(fd, [buf[done:]], offset + done)
    return done


class FdBacking:
    """A backing file reached through an OS file descriptor.

    ``spin``: how long a read that misses the page cache waits for the disk busily
    before it sleeps (:func:`read_spinning`); 0 sleeps at once.
    """

    __slots__ = ("fd", "spin", "_unkicked", "_unflushed", "_flusher", "_flush_error")

    def __init__(self, fd: int, spin: float = 0.0) -> None:
        self.fd = fd
        self.spin = spin
        self._unkicked = 0
        self._unflushed = 0
        self._flusher: threading.Thread | None = None
        self._flush_error: OSError | None = None

    def _kick_writeback(self) -> None:
        """Ask the kernel to start writing this file's dirty pages now, without waiting.

        Left alone, the kernel holds gigabytes dirty and the whole checkpoint
        goes to disk inside the final fsync; started early, the disk works
        while the next chunks are encrypted. Not while a background flush
        runs: its ``fdatasync`` is writing the file out already, and a kick
        would wait for it on the request thread (docs/PERFORMANCE.md,
        twenty-ninth round). The first write after the flush kicks.
        """
        self._unkicked = 0
        if _sync_file_range is not None:
            _sync_file_range(self.fd, 0, 0, _SYNC_FILE_RANGE_WRITE)

    def pread(self, size: int, offset: int) -> bytes:
        if FAULTS.armed:
            FAULTS.check("read")
        if self.spin <= 0:
            return os.pread(self.fd, size, offset)
        buf = bytearray(size)
        n = read_spinning(self.fd, memoryview(buf), offset, self.spin)
        return bytes(buf) if n == size else bytes(buf[:n])

    def preadinto(self, buf: memoryview, offset: int) -> int:
        if FAULTS.armed:
            FAULTS.check("read")
        if self.spin <= 0:
            return os.preadv(self.fd, [buf], offset)
        return read_spinning(self.fd, buf, offset, self.spin)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> int:
        if FAULTS.armed:
            FAULTS.check("write")
        view = memoryview(data)
        done = 0
        while done < len(view):  # short writes happen near ENOSPC and on signals
            done += os.pwrite(self.fd, view[done:], offset + done)
        self._unkicked += done
        flushing = self._flusher is not None and self._flusher.is_alive()
        if self._unkicked >= WRITEBACK_KICK and not flushing:
            self._kick_writeback()
        self._unflushed += done
        if self._unflushed >= FLUSH_AHEAD and not flushing:
            self._flush_ahead()
        return done

    def _flush_ahead(self) -> None:
        """Make what was written so far durable on a thread of its own, while the writer goes on.

        A disk with a volatile write cache (a VM's virtual disk, many SSDs) is told to empty it
        only by a flush, and a flush takes as long as what it has to write: on the benchmark's
        VM an fsync after 1 GiB waited about 1.1 s for it, even with every byte already sent to
        the disk (docs/PERFORMANCE.md, twenty-eighth round). Flushed 64 MiB at a time in the
        background, the disk empties its cache while the next chunks are encrypted, and the
        caller's fsync waits only for the last stretch. The cost is one more device flush per
        64 MiB written. ``fdatasync`` releases the GIL. An error is kept for the next
        :meth:`sync`, which raises it: the kernel reports a writeback error once per open file,
        so this thread must not swallow it.
        """
        self._unflushed = 0
        # On a descriptor of its own (same open file, same write-back errors): code that closes
        # the caller's descriptor without close() cannot pull the file from under the flush, nor
        # hand its number to another file. Best effort: without a descriptor or a thread to spare,
        # the write stands and the caller's fsync does the work.
        try:
            fd = os.dup(self.fd)
        except OSError:
            return
        flusher = threading.Thread(target=self._background_flush, args=(fd,), name="tailsfs-flush", daemon=True)
        try:
            flusher.start()
        except RuntimeError:
            os.close(fd)
            return
        self._flusher = flusher

    def _background_flush(self, fd: int) -> None:
        try:
            if FAULTS.armed:
                FAULTS.check("sync")
            os.fdatasync(fd)
        except OSError as exc:
            self._flush_error = exc
        finally:
            os.close(fd)

    def _wait_for_flusher(self) -> None:
        if self._flusher is not None:
            self._flusher.join()
            self._flusher = None

    def truncate(self, size: int) -> None:
        if FAULTS.armed:
            FAULTS.check("truncate")
        os.ftruncate(self.fd, size)

    def size(self) -> int:
        return os.fstat(self.fd).st_size

    def sync(self, data_only: bool = False) -> None:
        """fsync (or fdatasync), raising first the error of a background flush since the last sync."""
        self._wait_for_flusher()
        self._unflushed = 0
        if self._flush_error is not None:
            exc, self._flush_error = self._flush_error, None
            raise exc
        if FAULTS.armed:
            FAULTS.check("sync")
        (os.fdatasync if data_only else os.fsync)(self.fd)

    def close(self) -> None:
        """Close the descriptor once a background flush has returned, so that its error is not lost."""
        if self.fd >= 0:
            self._wait_for_flusher()
            if self._flush_error is not None:  # no sync came after it to report it: the log is all there is
                log.warning("a background flush of a closed file failed: %s", os.strerror(self._flush_error.errno or 0))
                self._flush_error = None
            os.close(self.fd)
            self.fd = -1
