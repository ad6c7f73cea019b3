"""One session's tree in one disk tier, mapped onto a host directory.

Host layout: a directory per directory, a file per memory, a symlink per
symlink; every name encrypted with AES-SIV under the session's name key and
the parent directory's random id (kept in the directory's ``.dir`` file,
which moves with the directory, so renaming a directory re-encrypts one name,
not its subtree). Names whose encoding exceeds the host's 255 bytes are stored
under a hash, with the full ciphertext in a ``~HASH.n`` sidecar.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import stat as st
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from ..crypto.aead import Sealer
from ..crypto.names import LONG_PREFIX, NameCipher, b64d, b64e, is_long, long_name
from ..errors import IntegrityError
from ..format.backing import FdBacking
from ..format.header import CODEC_RAW, FILE_ID_AT, FILE_ID_END, HEADER_SIZE, Header
from ..format.memfile import MAX_FILE_SIZE, EncryptedFile, raw_size_from_host
from ..format.meta import KIND_BYTES, Meta
from ..format.tag import TAG_XATTR, open_tag, seal_tag
from .erase import destroy_header
from .nodes import SYMLINK_MAX, Attr, Path_, attr_from_stat, check_name, clears_setid, oserror, without_setid
from .spares import remove_tag
from .tiers import MemoryTier

if TYPE_CHECKING:
    from .engine import Session, Store

log = logging.getLogger(__name__)

DIR_FILE = ".dir"
TMP_PREFIX = ".tmp-"
SIDECAR_SUFFIX = ".n"


@dataclass
class DirInfo:
    dir_id: bytes
    default_ttl: float | None = None
    xattrs: dict[bytes, bytes] = field(default_factory=dict)


class OpenFile:
    """A memory open through one or more handles; shares one EncryptedFile."""

    def __init__(self, tree: "DiskTree", ef: EncryptedFile, ino: int, path: Path_, mode: int) -> None:
        self.tree = tree
        self.ef = ef
        self.ino = ino
        self.path = path
        self.refs = 0
        self.trash: Path | None = None  # set when unlinked or expired while open
        self.bytes_written = 0
        self.kept_times: tuple[int, int] | None = None  # (atime, mtime) while a face keeps them: keep_times
        self.times_moved = False  # a chunk write has moved the host file's times off kept_times
        self._stat: os.stat_result | None = None  # the host file's last stat, while times are kept
        # The read count changed and nothing else in the header: a release leaves the count to
        # DiskTree.flush_counts instead of rewriting the header (every other write takes it along).
        self.count_dirty = False
        self.setid = clears_setid(mode)  # the next write or truncate clears set-ID bits

    def drop_setid(self) -> None:
        """Clear the set-ID bits a write or truncate must not leave (nodes.without_setid)."""
        fd = self.ef.backing.fd  # type: ignore[attr-defined]
        mode = st.S_IMODE(os.fstat(fd).st_mode)
        if clears_setid(mode):
            os.fchmod(fd, without_setid(mode))
            if self._stat is not None:  # set_times answers from it
                self._stat = os.fstat(fd)
        self.setid = False

    def keep_times(self, s: os.stat_result) -> None:
        """From now on only :meth:`set_times` changes the memory's times; writes leave them.

        The mount's kernel keeps an open file's times itself while it caches
        its writes, and sends them (SETATTR) only when a write moved them,
        which a write within the clock tick they already show does not. The
        times our chunk writes give the host file would then be times the
        kernel never showed, so the close puts the kept ones back (see
        sync_header). ``s`` is a stat of the host file as it is now.
        """
        if self.kept_times is None:
            self.kept_times = (s.st_atime_ns, s.st_mtime_ns)
            self._stat = s

    @property
    def file_id(self) -> str:
        return self.ef.header.file_id.hex()

    def sync_header(self, put_back_times: bool = True) -> None:
        """Write a changed header; put back the times that were set, unless that is left to the close.

        The host file's times are the memory's times: the kept ones while a
        face keeps them (the mount: see keep_times), else those its chunk
        writes gave it. The header is rewritten later, at close and at fsync,
        and a plain write would stamp the file with that moment instead (after
        ``cp -p`` has set the times through its descriptor, for one).

        ``put_back_times=False`` (fsync) leaves kept times that chunk writes
        moved for the release to put back: changing the host file's times
        changes its inode, and on ext4 that made every fsync wait for a
        journal commit (about 60 µs of a 4 KiB write+fsync's 0.3 ms here).
        Times set through set_times are written at once either way.
        """
        if self.count_dirty:
            self.ef.meta_dirty = True
            self.count_dirty = False
        fd = self.ef.backing.fd  # type: ignore[attr-defined]
        if self.kept_times is not None:
            # No stat: with multigrain timestamps (ext4 on Linux 6.13+), a change within a tick of a stat
            # of the same file gets a fine-grained time, which advances the clock the kernel reads for
            # every file's times. The next write through the mount would then always move its file's
            # times, and cost a SETATTR round trip.
            if self.ef.meta_dirty:
                self.ef.sync_meta()
                self.times_moved = True
            if put_back_times and self.times_moved:
                os.utime(fd, ns=self.kept_times)
                self.times_moved = False
            return
        if not self.ef.meta_dirty:
            return
        s = os.fstat(fd)
        self.ef.sync_meta()
        os.utime(fd, ns=(s.st_atime_ns, s.st_mtime_ns))

    def set_times(self, atime_ns: int | None, mtime_ns: int | None) -> Attr:
        """Set the times (None keeps one); the new attributes."""
        fd = self.ef.backing.fd  # type: ignore[attr-defined]
        if self.kept_times is None:
            _set_times(fd, atime_ns, mtime_ns)
            return self.attr()
        atime, mtime = self.kept_times
        self.kept_times = (atime if atime_ns is None else atime_ns, mtime if mtime_ns is None else mtime_ns)
        os.utime(fd, ns=self.kept_times)
        self.times_moved = False
        assert self._stat is not None  # set with kept_times
        return self._attr_from(self._stat, time.time_ns())  # no stat, as in sync_header

    def attr(self) -> Attr:
        s = os.fstat(self.ef.backing.fd)  # type: ignore[attr-defined]
        self.setid = clears_setid(s.st_mode)  # a chmod through the path changes it
        if self.kept_times is not None:
            self._stat = s
        return self._attr_from(s, s.st_ctime_ns)

    def _attr_from(self, s: os.stat_result, ctime_ns: int) -> Attr:
        a = attr_from_stat(s, self.ef.size, self.ef.meta.expires_at)
        a.ctime_ns = ctime_ns
        if self.kept_times is not None:
            a.atime_ns, a.mtime_ns = self.kept_times
        if self.trash is not None:
            a.nlink = 0
        return a


class DiskHandle:
    """What a face holds between open and release."""

    def __init__(self, of: OpenFile, writable: bool) -> None:
        self.of = of
        self.writable = writable
        self.closed = False
        of.refs += 1

    @property
    def tier(self) -> MemoryTier:
        return self.of.tree.tier

    def read(self, offset: int, size: int) -> bytes:
        return self.of.ef.read(offset, size)

    def read_view(self, offset: int, size: int) -> memoryview:
        """As read, without a copy; valid until the next read on this thread."""
        return self.of.ef.read_view(offset, size)

    @property
    def setid(self) -> bool:
        """True while the next write or truncate will clear set-ID bits (a face's caches then change)."""
        return self.of.setid

    def write(self, offset: int, data: bytes | memoryview) -> int:
        self._reserve(offset + len(data))
        if self.of.setid:
            self.of.drop_setid()
        n = self.of.ef.write(offset, data)
        self.of.bytes_written += n
        self.of.times_moved = True
        return n

    def truncate(self, size: int) -> None:
        self._reserve(size)
        if self.of.setid:
            self.of.drop_setid()
        self.of.ef.truncate(size)
        self.of.times_moved = True
        self.of.bytes_written += 1 if size == 0 and not self.of.bytes_written else 0

    def fsync(self, data_only: bool = False) -> None:
        self.of.sync_header(put_back_times=False)
        self.of.ef.fsync(data_only)

    def _reserve(self, new_end: int) -> None:
        """EFBIG past the size limit, ENOSPC when the disk cannot hold the growth: before any byte is written."""
        if new_end > MAX_FILE_SIZE:
            raise oserror(errno.EFBIG, "file would exceed the 1 TiB limit")
        grow = new_end - self.of.ef.size
        if grow > 0:
            self.of.tree.store.ensure_space(grow)

    def getattr(self) -> Attr:
        return self.of.attr()

    def set_times(self, atime_ns: int | None, mtime_ns: int | None) -> Attr:
        """Set the times through the open file, without walking its path; the new attributes.

        The kernel's writeback cache sends a file's times after the writes it
        flushes when they changed them, so this is on the path of many files written.
        """
        return self.of.set_times(atime_ns, mtime_ns)

    def release(self) -> int:
        """Drop this handle; returns bytes written through the file since its last writer closed."""
        if self.closed:
            return 0
        self.closed = True
        return self.of.tree._release(self.of)


def _start_reading(fd: int, length: int) -> None:
    """Ask the kernel to read a host file's first ``length`` bytes into the page cache; no wait, no error."""
    try:
        os.posix_fadvise(fd, 0, length, os.POSIX_FADV_WILLNEED)
    except OSError:
        pass


def _set_times(target: int | Path, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set the access and modification times of a descriptor or a path (never followed); None keeps one."""
    if atime_ns is None and mtime_ns is None:
        return
    follow = isinstance(target, int)  # a descriptor has no link to follow; a path's symlink keeps its own times
    if atime_ns is None or mtime_ns is None:
        s = os.stat(target, follow_symlinks=follow)
        atime_ns = s.st_atime_ns if atime_ns is None else atime_ns
        mtime_ns = s.st_mtime_ns if mtime_ns is None else mtime_ns
    os.utime(target, ns=(atime_ns, mtime_ns), follow_symlinks=follow)


_EUID, _EGID = os.geteuid(), os.getegid()
DIR_CACHE_MAX = 65536  # entries per tree in each directory cache; cleared whole when full
# Read counts per tree held back from their headers (about 4 MB); past it, each release writes
# the oldest one, which costs what writing its own did.
COUNTS_MAX = 16384
PREFETCH_BYTES = 128 * 1024  # after the header: a small memory whole, a large one's first reads


class DiskTree:
    """A session's directory tree in one disk tier."""

    def __init__(self, store: "Store", session: "Session", tier: MemoryTier, root: Path) -> None:
        self.store = store
        self.session = session
        self.tier = tier
        self.root = root
        self._names = NameCipher(session.names_key)
        # a tier's chunk size when its memories' plaintext size follows from the host size, else 0
        self._raw_chunk = tier.chunk_size if tier.codec == CODEC_RAW else 0
        self._wrap = Sealer(session.file_wrap_key)  # unwraps every file key of the session: keyed once
        self._dirmeta = Sealer(session.dir_meta_key)
        self._dirs: dict[str, DirInfo] = {}
        self._dir_hosts: dict[Path_, Path] = {}
        self._base_prefix = len(str(store.base)) + 1
        self._open: dict[int, OpenFile] = {}
        self._unsynced: set[int] = set()  # host inodes whose last header write failed
        # Read counts that releases held back from their headers, by host inode: (file id, count,
        # path). A read-only open then writes nothing; flush_counts writes them when the store is
        # quiet, when there are too many, and at close. The next open of the file takes its count.
        self._counts: dict[int, tuple[bytes, int, Path_]] = {}

    # -- host paths and names ---------------------------------------------------
    def exists(self) -> bool:
        return (self.root / DIR_FILE).exists()

    def ensure(self) -> None:
        if not self.exists():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self._make_dir(self.root, 0o755)

    def _make_dir(self, host: Path, mode: int) -> None:
        """Create a host directory with its ``.dir`` atomically (build aside, rename in)."""
        tmp = host.parent / (TMP_PREFIX + os.urandom(6).hex())
        os.mkdir(tmp, 0o700)
        self._write_dirinfo(tmp, DirInfo(os.urandom(16)))
        os.chmod(tmp, mode & 0o7777)
        try:
            if os.path.lexists(host):  # rename would replace an empty directory or fail oddly
                raise oserror(errno.EEXIST)
            os.rename(tmp, host)
        except OSError:
            (tmp / DIR_FILE).unlink()
            tmp.rmdir()
            raise

    def _write_dirinfo(self, host: Path, info: DirInfo) -> None:
        doc = {"t": info.default_ttl, "x": {b64e(k): b64e(v) for k, v in info.xattrs.items()}}
        blob = info.dir_id + self._dirmeta.seal(json.dumps(doc).encode(), info.dir_id)
        tmp = host / ".dir.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, blob)
        finally:
            os.close(fd)
        os.replace(tmp, host / DIR_FILE)
        self._dirs[str(host)] = info

    def _dirinfo(self, host: Path) -> DirInfo:
        key = str(host)
        info = self._dirs.get(key)
        if info is None:
            try:
                blob = (host / DIR_FILE).read_bytes()
            except FileNotFoundError:
                if host.is_dir():
                    raise IntegrityError("a directory", "its .dir record is missing") from None
                raise
            except NotADirectoryError:
                raise oserror(errno.ENOTDIR) from None
            if len(blob) < 16 + 28:
                raise IntegrityError("a directory", ".dir record truncated")
            dir_id = blob[:16]
            doc = json.loads(self._dirmeta.open(blob[16:], dir_id, "a directory record"))
            info = DirInfo(dir_id, doc.get("t"), {b64d(k): b64d(v) for k, v in doc.get("x", {}).items()})
            if len(self._dirs) > DIR_CACHE_MAX:
                self._dirs.clear()
            self._dirs[key] = info
        return info

    def _host_name(self, parent: Path, name: bytes) -> str:
        enc = self._names.encrypt(name, self._dirinfo(parent).dir_id)
        return long_name(enc) if is_long(enc) else enc

    def _host(self, path: Path_) -> Path:
        if not path:
            return self.root
        parent = self._dir_host(path[:-1])
        return parent / self._host_name(parent, path[-1])

    def _dir_host(self, path: Path_) -> Path:
        """A directory's host path, remembered: every request walks its parent's path.

        The walk encrypts one name per level under each ancestor's id. Those ids change only
        when a directory is removed or renamed, and both forget every remembered path.
        """
        host = self._dir_hosts.get(path)
        if host is None:
            host = self._host(path)
            if len(self._dir_hosts) > DIR_CACHE_MAX:
                self._dir_hosts.clear()
            self._dir_hosts[path] = host
        return host

    def _split(self, path: Path_) -> tuple[Path, str, Path]:
        """(host parent, host name, host path) for a path that may not exist yet."""
        if not path:
            raise oserror(errno.EPERM, "the session root")
        check_name(path[-1])
        parent = self._dir_host(path[:-1])
        name = self._host_name(parent, path[-1])
        return parent, name, parent / name

    def _decode_entry(self, parent: Path, host_name: str, dir_id: bytes) -> bytes | None:
        if host_name.startswith(".") or host_name.endswith(SIDECAR_SUFFIX):
            return None
        enc = host_name
        if host_name.startswith(LONG_PREFIX):
            try:
                enc = (parent / (host_name + SIDECAR_SUFFIX)).read_text()
            except OSError:
                return None
        try:
            return self._names.decrypt(enc, dir_id)
        except IntegrityError:
            log.warning("skipping a directory entry whose name does not authenticate")
            return None

    def relpath(self, host: Path | str) -> str:
        """The host path below the store's base (every host path of this tree lies there)."""
        return str(host)[self._base_prefix:]

    def memory_id(self, path: Path_, created: float) -> str:
        key = "/".join(p.decode("utf-8", "backslashreplace") for p in path)
        return f"{self.session.name}:{key}:{created:.3f}"

    def _backing(self, fd: int) -> FdBacking:
        """The format layer's view of a host file, reading as the store is configured to."""
        return FdBacking(fd, self.store.config.read_spin)

    def _new_memory(self, fd: int, meta: Meta) -> EncryptedFile:
        """A new memory's header on an empty host file, and its tag (format/tag.py) for the unlink."""
        ef = EncryptedFile.create(self._backing(fd), self._wrap, self.tier.code, self.tier.codec,
                                  self.tier.chunk_size, meta, "a memory")
        try:
            os.setxattr(fd, TAG_XATTR, seal_tag(self._dirmeta, self.tier.code, ef.header.file_id, meta.created))
        except OSError as exc:  # no user xattrs on this host filesystem, or no room: unlinks read the header
            log.debug("memory tag not set (%s)", errno.errorcode.get(exc.errno or 0, "no errno"))
            remove_tag(fd)  # a spare's old tag must not name the new memory
        return ef

    def _read_tag(self, fd: int) -> tuple[bytes, float] | None:
        try:
            value = os.getxattr(fd, TAG_XATTR)
        except OSError:
            return None
        return open_tag(self._dirmeta, self.tier.code, value)

    def _what(self, path: Path_) -> str:
        """How integrity errors name a memory: its session, key and tier."""
        key = "/".join(p.decode("utf-8", "backslashreplace") for p in path)
        return f"memory '{self.session.name}:{key}' in the {self.tier.value} tier"

    # -- attributes ---------------------------------------------------------------
    def _attr_of(self, host: Path | str, s: os.stat_result) -> Attr:
        if st.S_ISREG(s.st_mode):
            of = self._open.get(s.st_ino)
            if of is not None:
                return of.attr()
            if self._raw_chunk:
                # Without reading the header: a host file whose length was altered outside
                # tailsfs is refused at open (_check_size), so no byte of it is ever served.
                expires = self.store.ttl.expires_for(self.relpath(host))
                if expires is not None and expires <= self.store.clock.now():
                    raise oserror(errno.ENOENT, "expired")
                return attr_from_stat(s, raw_size_from_host(s.st_size, self._raw_chunk), expires)
            meta = self._peek_meta(host)
            return attr_from_stat(s, meta.size, meta.expires_at)
        if st.S_ISLNK(s.st_mode):
            return attr_from_stat(s, len(self._read_symlink(host)))
        return attr_from_stat(s)

    def _peek_meta(self, host: Path | str) -> Meta:
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            ef = EncryptedFile.open(self._backing(fd), self._wrap, self.tier.code, "a memory")
        finally:
            os.close(fd)
        meta = ef.meta
        if meta.expires_at is not None and meta.expires_at <= self.store.clock.now():
            raise oserror(errno.ENOENT, "expired")
        return meta

    def getattr(self, path: Path_, prefetch: bool = False) -> Attr:
        """A memory's or directory's attributes.

        ``prefetch``: the caller expects the memory to be opened or removed next, so the
        disk starts reading its header and first bytes now (:meth:`_prefetch`).
        """
        host = self._host(path)
        attr = self._attr_at(path, host)
        if prefetch and st.S_ISREG(attr.mode):
            self._prefetch(host)
        return attr

    def _prefetch(self, host: Path) -> None:
        """Ask the kernel to read a memory's first bytes into the page cache, without waiting.

        Every open and every unlink reads the header; on a cold cache that read waits for the
        disk on the request's time. Started here, the disk works while the answer travels to
        the client and its next request travels back (docs/PERFORMANCE.md, eighteenth round).
        Best effort: a file that went away or cannot be opened is simply not prefetched.
        """
        try:
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return
        try:
            _start_reading(fd, HEADER_SIZE + PREFETCH_BYTES)
        finally:
            os.close(fd)

    def _attr_at(self, path: Path_, host: Path) -> Attr:
        try:
            return self._attr_of(host, os.lstat(host))
        except IntegrityError as exc:
            raise IntegrityError(self._what(path), exc.detail) from None

    def listdir(self, path: Path_) -> Iterator[tuple[bytes, Attr]]:
        host = self._host(path)
        dir_id = self._dirinfo(host).dir_id
        with os.scandir(host) as it:
            for entry in it:
                name = self._decode_entry(host, entry.name, dir_id)
                if name is None:
                    continue
                try:
                    yield name, self._attr_of(entry.path, entry.stat(follow_symlinks=False))
                except (FileNotFoundError, IntegrityError):
                    continue
                except OSError as exc:
                    if exc.errno != errno.ENOENT:
                        raise

    # -- directories ----------------------------------------------------------------
    def mkdir(self, path: Path_, mode: int, uid: int | None = None, gid: int | None = None) -> Attr:
        parent, name, host = self._split(path)
        if not parent.is_dir():
            raise oserror(errno.ENOTDIR)
        self._write_sidecar(parent, name, path[-1])  # a folder with a long name is listed through it
        self._make_dir(host, mode)
        self._chown(host, uid, gid)
        return self._attr_of(host, os.lstat(host))

    def rmdir(self, path: Path_) -> None:
        parent, name, host = self._split(path)
        s = os.lstat(host)
        if not st.S_ISDIR(s.st_mode):
            raise oserror(errno.ENOTDIR)
        self._remove_empty_dir(host)
        self._drop_sidecar(parent, name)
        self.store.audit.record("directory_delete", session=self.session.name, tier=self.tier.value,
                             path="/".join(p.decode("utf-8", "replace") for p in path))

    def _trash(self, host: Path) -> None:
        """Erase a leftover temporary file (a write that never completed)."""
        s = os.lstat(host)
        trash = self.store.trash_path()
        os.rename(host, trash)
        self._erase_trashed(trash, s)

    def _remove_empty_dir(self, host: Path) -> None:
        with os.scandir(host) as it:
            for entry in it:
                if entry.name == DIR_FILE:
                    continue
                if entry.name.startswith(TMP_PREFIX):
                    self._trash(Path(entry.path))
                    continue
                raise oserror(errno.ENOTEMPTY)
        (host / DIR_FILE).unlink()
        os.rmdir(host)
        # It was empty, so every folder below it went before it and took its record along:
        # only its own is dropped. Walking all remembered records made rm -rf quadratic.
        self._dir_hosts.clear()
        self._dirs.pop(str(host), None)

    def _forget_dirs(self, host: Path) -> None:
        """A folder moved: forget it and everything remembered below it."""
        self._dir_hosts.clear()
        prefix = str(host)
        for key in [k for k in self._dirs if k == prefix or k.startswith(prefix + "/")]:
            del self._dirs[key]

    def get_dir_ttl(self, path: Path_) -> float | None:
        return self._dirinfo(self._host(path)).default_ttl

    def set_dir_ttl(self, path: Path_, seconds: float | None) -> None:
        host = self._host(path)
        info = self._dirinfo(host)
        self._write_dirinfo(host, DirInfo(info.dir_id, seconds, info.xattrs))

    def default_ttl(self, parent: Path_) -> float | None:
        """TTL for a new file: nearest directory default, else the tier's."""
        for depth in range(len(parent), -1, -1):
            try:  # folders a write is about to create have no default yet
                ttl = self._dirinfo(self._dir_host(parent[:depth])).default_ttl
            except (FileNotFoundError, NotADirectoryError):
                continue
            if ttl is not None:
                return ttl
        return self.store.tier_default_ttl(self.tier)

    # -- files ------------------------------------------------------------------------
    def create(self, path: Path_, mode: int = 0o644, uid: int | None = None, gid: int | None = None,
               ttl: float | None = None, kind: int = KIND_BYTES, keep_times: bool = False) -> DiskHandle:
        """A new, empty memory, open for writing; ``keep_times``: see :meth:`OpenFile.keep_times`."""
        parent, name, host = self._split(path)
        self._write_sidecar(parent, name, path[-1])
        # Header first, under a temporary name: a kill mid-create must not leave a header-less file
        # under the real name (it would answer EIO). link() refuses an existing name, as O_EXCL did.
        spare = self.store.spares.take()
        if spare is None:
            tmp = parent / (TMP_PREFIX + os.urandom(8).hex())
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode & 0o7777)
        else:
            fd, tmp = spare
        try:
            if spare is None:
                self._chown(tmp, uid, gid, fd)
            else:  # an erased file's inode: it still has the old file's owner and times
                os.fchown(fd, _EUID if uid is None else uid, _EGID if gid is None else gid)
                os.utime(fd)
            os.fchmod(fd, mode & 0o7777)  # the mode asked for; the daemon's own umask is not the caller's
            ttl = ttl if ttl is not None else self.default_ttl(path[:-1])
            now = self.store.clock.now()
            meta = Meta(created=now, expires_at=now + ttl if ttl is not None else None, kind=kind)
            ef = self._new_memory(fd, meta)
            if meta.expires_at is not None:
                self.store.ttl.set(ef.header.file_id.hex(), self.relpath(host), meta.expires_at)
            try:
                os.link(tmp, host)
            except BaseException:
                self.store.ttl.remove(ef.header.file_id.hex())
                raise
        except BaseException:
            os.close(fd)
            os.unlink(tmp)
            raise
        os.unlink(tmp)
        # The first stat comes after the last change: see OpenFile.sync_header for why that matters.
        s = os.fstat(fd)
        of = OpenFile(self, ef, s.st_ino, path, s.st_mode)
        self._open[of.ino] = of
        if keep_times:
            of.keep_times(s)
        return DiskHandle(of, True)

    def open(self, path: Path_, writable: bool = True, truncate: bool = False,
             keep_times: bool = False) -> DiskHandle:
        """Open a memory; ``keep_times``: see :meth:`OpenFile.keep_times`."""
        host = self._host(path)
        s = os.lstat(host)
        if st.S_ISDIR(s.st_mode):
            raise oserror(errno.EISDIR)
        if not st.S_ISREG(s.st_mode):
            raise oserror(errno.ELOOP if st.S_ISLNK(s.st_mode) else errno.EACCES)
        of = self._open.get(s.st_ino)
        if of is None:
            fd = os.open(host, os.O_RDWR | os.O_NOFOLLOW)
            # The header, then the first chunks for the kernel's page cache: one disk read for
            # both, where the header's read alone would bring in only the first 16 KiB. A
            # truncating open needs the header only.
            _start_reading(fd, HEADER_SIZE if truncate else min(s.st_size, HEADER_SIZE + PREFETCH_BYTES))
            try:
                ef = EncryptedFile.open(self._backing(fd), self._wrap, self.tier.code, self._what(path))
                self._check_live(ef.meta)
                self._check_size(ef, s.st_ino, path)
            except BaseException:
                os.close(fd)
                raise
            of = OpenFile(self, ef, s.st_ino, path, s.st_mode)
            self._take_count(of)
            self._open[of.ino] = of
        else:
            self._check_live(of.ef.meta)
        if keep_times:
            of.keep_times(s)
        handle = DiskHandle(of, writable)
        if truncate:
            handle.truncate(0)
        return handle

    def _take_count(self, of: OpenFile) -> None:
        """A newly opened memory takes the read count a release held back (flush_counts)."""
        held = self._counts.pop(of.ino, None)
        if held is not None and held[0] == of.ef.header.file_id and held[1] > of.ef.meta.access_count:
            of.ef.meta.access_count = held[1]
            of.count_dirty = True

    def flush_counts(self, limit: int | None = None) -> int:
        """Write held-back read counts into their headers, oldest first; returns how many."""
        done = 0
        while self._counts and (limit is None or done < limit):
            ino = next(iter(self._counts))
            try:
                h = self.open(self._counts[ino][2], writable=True)  # takes the count (_take_count)
                try:
                    if h.of.ino == ino:
                        h.of.sync_header()
                finally:
                    h.release()
                done += 1
            except (OSError, IntegrityError) as exc:  # gone, expired, or no longer ours: nothing to keep
                log.debug("read count not written (%s)", type(exc).__name__)
            finally:
                self._counts.pop(ino, None)  # whatever happened, never tried again
        return done

    def _check_live(self, meta: Meta) -> None:
        if meta.expires_at is not None and meta.expires_at <= self.store.clock.now():
            raise oserror(errno.ENOENT, "expired")

    def _check_size(self, ef: EncryptedFile, ino: int, path: Path_) -> None:
        """Refuse a raw memory whose host length disagrees with its authenticated size.

        stat derives the size from the host length (no header read), and the kernel keeps
        that size for the inode's life: serving such a file would mean zeros nobody wrote.
        After a kill the store trims every file at open (heal_sizes); a header write that
        failed while mounted is remembered and healed here; anything else was done outside.
        """
        if ef.host_matches_size():
            return
        if ino in self._unsynced:
            self._unsynced.discard(ino)
            ef.trim_host()
            return
        raise IntegrityError(self._what(path), "host file length disagrees with the authenticated size "
                                               "(bytes added or cut outside tailsfs)")

    def _heal_size(self, ef: EncryptedFile) -> None:
        """After a crash, chunks past the synced size may remain: cut them so stat agrees."""
        if not ef.host_matches_size():
            ef.trim_host()

    def heal_sizes(self) -> None:
        """After an unclean close: erase half-made temporaries, cut raw memories to their synced size.

        A killed write-aside leaves a ``.tmp-`` file no name reaches (still readable with the
        session key, so erased, not just left); a killed writer leaves chunks past the synced
        size, which stat would count.
        """
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                if name.startswith(TMP_PREFIX):
                    self._trash(Path(dirpath, name))
        for _path, host in self.walk_files():
            try:
                fd = os.open(host, os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                continue
            try:
                self._heal_size(EncryptedFile.open(self._backing(fd), self._wrap, self.tier.code, "a memory"))
            except (IntegrityError, OSError) as exc:  # fsck reports what does not open
                log.warning("could not trim a memory after an unclean close: %s", exc)
            finally:
                os.close(fd)

    def _release(self, of: OpenFile) -> int:
        of.refs -= 1
        if of.refs > 0:
            return 0
        written, of.bytes_written = of.bytes_written, 0
        try:
            if of.trash is None:
                if of.count_dirty and not of.ef.meta_dirty:
                    of.count_dirty = False
                    self._counts[of.ino] = (of.ef.header.file_id, of.ef.meta.access_count, of.path)
                of.sync_header()
        except OSError:
            self._unsynced.add(of.ino)  # its chunks may run past the header's size: heal at next open
            raise
        finally:
            del self._open[of.ino]
            if of.trash is not None:
                self._crypto_erase_open(of)
            of.ef.close()
        if len(self._counts) > COUNTS_MAX:
            self.flush_counts(len(self._counts) - COUNTS_MAX)
        return written

    def note_read(self, handle: DiskHandle) -> int:
        """Count one read access; persisted with the next header write."""
        meta = handle.of.ef.meta
        meta.access_count += 1
        if not handle.of.ef.meta_dirty:
            handle.of.count_dirty = True
        return meta.access_count

    def read_all(self, path: Path_) -> tuple[bytes, Meta]:
        h = self.open(path, writable=False)
        try:
            data = h.read(0, h.of.ef.size)
            self.note_read(h)
            h.of.sync_header()
            return data, h.of.ef.meta
        finally:
            h.release()

    def write_all(self, path: Path_, data: bytes, ttl: float | None, kind: int, mode: int = 0o600) -> Meta:
        """Replace a memory atomically: write aside, fsync, rename over, erase the old one."""
        self._ensure_parent(path)
        split = self._split(path)
        self.store.ensure_space(len(data) + HEADER_SIZE)
        tmp = split[0] / (TMP_PREFIX + os.urandom(8).hex())
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)
        try:
            now = self.store.clock.now()
            meta = Meta(created=now, expires_at=now + ttl if ttl is not None else None, kind=kind)
            ef = self._new_memory(fd, meta)
            ef.write(0, data)
            ef.fsync()
            self._put_in_place(tmp, path, split, ef.header.file_id.hex(), meta.expires_at)
        except BaseException:
            if os.path.lexists(tmp):  # it never got its name
                os.unlink(tmp)
            raise
        finally:
            os.close(fd)
        return meta

    def _put_in_place(self, tmp: Path, path: Path_, split: tuple[Path, str, Path], file_id: str,
                      expires_at: float | None) -> None:
        """Rename a finished memory written aside over ``path`` (erasing the old one), then fsync the folder.

        It is indexed before it has its name, so no crash leaves an expiring memory
        that nothing erases; if it never gets the name, the entry is dropped again.
        """
        parent, name, host = split
        try:
            if expires_at is not None:
                self.store.ttl.set(file_id, self.relpath(host), expires_at)
            self._write_sidecar(parent, name, path[-1])
            self._replace(tmp, host)
        except BaseException:
            if os.path.lexists(tmp):
                self.store.ttl.remove(file_id)
            raise
        _fsync_dir(parent)

    def _ensure_parent(self, path: Path_) -> None:
        try:
            if self._host(path[:-1]).is_dir():
                return
        except FileNotFoundError:  # a missing folder above the parent: its .dir cannot be read
            pass
        self.makedirs(path[:-1])

    def makedirs(self, path: Path_) -> None:
        for depth in range(1, len(path) + 1):
            try:
                self.mkdir(path[:depth], 0o755)
            except FileExistsError:
                pass

    def _replace(self, src: Path, dst: Path) -> None:
        """rename(src, dst), erasing whatever dst held (crypto-erase first)."""
        try:
            s = os.lstat(dst)
        except FileNotFoundError:
            os.rename(src, dst)
            return
        if st.S_ISDIR(s.st_mode):
            raise oserror(errno.EISDIR)
        trash = self.store.trash_path()
        os.link(dst, trash, follow_symlinks=False)
        os.rename(src, dst)
        self._erase_trashed(trash, s)

    def _erase_trashed(self, trash: Path, s: os.stat_result) -> float:
        """Crypto-erase a regular file or symlink now only in the trash, unless still open.

        Returns the memory's creation time (0.0 when unknown), which the audit
        names it by: from its tag (format/tag.py), which spares reading the header,
        else from the header, read in the same open that destroys it.
        """
        created = 0.0
        if st.S_ISREG(s.st_mode):
            self._counts.pop(s.st_ino, None)
            of = self._open.get(s.st_ino)
            if of is not None:
                self.store.ttl.remove(of.file_id)
                of.trash = trash
                return of.ef.meta.created
            fd = os.open(trash, os.O_RDWR | os.O_NOFOLLOW)
            try:
                known = self._read_tag(fd)
                if known is not None:
                    self.store.ttl.remove(known[0].hex())
                    created = known[1]
                else:
                    created = self._forget_header(fd)
                destroy_header(fd, sync=False)
            finally:
                os.close(fd)
        self.store.eraser.submit(trash, s.st_size)
        return created

    def _forget_header(self, fd: int) -> float:
        """Drop a doomed memory's TTL entry; its creation time if its header authenticates."""
        raw = self._backing(fd).pread(HEADER_SIZE, 0)
        if len(raw) >= FILE_ID_END:
            self.store.ttl.remove(raw[FILE_ID_AT:FILE_ID_END].hex())
        try:
            return Header.decode(raw, self._wrap, self.tier.code, "a memory").meta.created
        except (IntegrityError, ValueError):
            return 0.0

    def _crypto_erase_open(self, of: OpenFile) -> None:
        self.store.ttl.remove(of.file_id)
        fd = of.ef.backing.fd  # type: ignore[attr-defined]
        try:
            destroy_header(fd, sync=False)
            size = os.fstat(fd).st_size
        except OSError as exc:
            log.error("crypto-erase of an unlinked memory failed: %s", exc.strerror)
            size = 0
        if of.trash is not None:
            self.store.eraser.submit(of.trash, size)

    def unlink(self, path: Path_) -> float:
        """Remove and crypto-erase a memory or symlink; returns its creation time (for the audit)."""
        parent, name, host = self._split(path)
        s = os.lstat(host)
        if st.S_ISDIR(s.st_mode):
            raise oserror(errno.EISDIR)
        trash = self.store.trash_path()
        os.rename(host, trash)
        self._drop_sidecar(parent, name)
        return self._erase_trashed(trash, s)

    def expire(self, host_rel: str, file_id: str) -> bool:
        """Erase an expired memory found by the TTL index (header re-checked). True if erased."""
        host = self.store.base / host_rel
        try:
            s = os.lstat(host)
            fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError:
            return False
        try:
            ef = EncryptedFile.open(self._backing(fd), self._wrap, self.tier.code, "a memory")
        except IntegrityError:
            os.close(fd)
            return False
        os.close(fd)
        if ef.header.file_id.hex() != file_id or ef.meta.expires_at is None or ef.meta.expires_at > self.store.clock.now():
            return False
        trash = self.store.trash_path()
        os.rename(host, trash)
        if host.name.startswith(LONG_PREFIX):
            self._drop_sidecar(host.parent, host.name)
        self._erase_trashed(trash, s)
        return True

    # -- rename ------------------------------------------------------------------------
    def rename(self, old: Path_, new: Path_, noreplace: bool = False) -> None:
        oparent, oname, ohost = self._split(old)
        nparent, nname, nhost = self._split(new)
        if new[: len(old)] == old and len(new) > len(old):
            raise oserror(errno.EINVAL, "cannot move a directory into itself")
        s = os.lstat(ohost)
        try:
            t = os.lstat(nhost)
        except FileNotFoundError:
            t = None
        if ohost == nhost:
            return
        if t is not None:
            if noreplace:
                raise oserror(errno.EEXIST)
            if st.S_ISDIR(s.st_mode) != st.S_ISDIR(t.st_mode):
                raise oserror(errno.EISDIR if st.S_ISDIR(t.st_mode) else errno.ENOTDIR)
        if st.S_ISDIR(s.st_mode):
            self._dirinfo(ohost)  # it must be one of ours
            self._write_sidecar(nparent, nname, new[-1])
            if t is not None:
                self._remove_empty_dir(nhost)
            os.rename(ohost, nhost)
            self._forget_dirs(ohost)
        else:
            self._write_sidecar(nparent, nname, new[-1])
            self._replace(ohost, nhost)
        self._drop_sidecar(oparent, oname)
        self.store.ttl.moved(self.relpath(ohost), self.relpath(nhost), st.S_ISDIR(s.st_mode))
        for of in self._open.values():
            if of.path[: len(old)] == old:
                of.path = new + of.path[len(old):]
        for ino, (file_id, count, path) in self._counts.items():
            if path[: len(old)] == old:
                self._counts[ino] = (file_id, count, new + path[len(old):])

    # -- symlinks ------------------------------------------------------------------------
    def symlink(self, path: Path_, target: bytes, uid: int | None = None, gid: int | None = None) -> Attr:
        if len(target) > SYMLINK_MAX:
            raise oserror(errno.ENAMETOOLONG, "symlink target too long")
        if not target:
            raise oserror(errno.ENOENT, "empty symlink target")
        parent, name, host = self._split(path)
        self._write_sidecar(parent, name, path[-1])
        os.symlink(self._names.encrypt(target, b"symlink"), host)
        self._chown(host, uid, gid)
        return self._attr_of(host, os.lstat(host))

    def readlink(self, path: Path_) -> bytes:
        return self._read_symlink(self._host(path))

    def _read_symlink(self, host: Path | str) -> bytes:
        try:
            return self._names.decrypt(os.readlink(host), b"symlink")
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                raise oserror(errno.EINVAL, "not a symlink") from None
            raise

    # -- long names ---------------------------------------------------------------------
    def _write_sidecar(self, parent: Path, host_name: str, name: bytes) -> None:
        if host_name.startswith(LONG_PREFIX):
            enc = self._names.encrypt(name, self._dirinfo(parent).dir_id)
            (parent / (host_name + SIDECAR_SUFFIX)).write_text(enc)

    def _drop_sidecar(self, parent: Path, host_name: str) -> None:
        if host_name.startswith(LONG_PREFIX):
            try:
                (parent / (host_name + SIDECAR_SUFFIX)).unlink()
            except FileNotFoundError:
                pass

    # -- attributes that change ------------------------------------------------------------
    def _chown(self, host: Path, uid: int | None, gid: int | None, fd: int | None = None) -> None:
        u = -1 if uid is None or uid == _EUID else uid
        g = -1 if gid is None or gid == _EGID else gid
        if u == -1 and g == -1:  # a new host file already belongs to the daemon
            return
        if fd is not None:
            os.fchown(fd, u, g)
        else:
            os.chown(host, u, g, follow_symlinks=False)

    def setattr(self, path: Path_, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                atime_ns: int | None = None, mtime_ns: int | None = None, size: int | None = None) -> Attr:
        host = self._host(path)
        if size is not None:
            h = self.open(path, writable=True)
            try:
                h.truncate(size)
            finally:
                h.release()
        if mode is not None:
            os.chmod(host, mode & 0o7777, follow_symlinks=False) if not os.path.islink(host) else None
        self._chown(host, uid, gid)
        of = self._open.get(os.lstat(host).st_ino) if atime_ns is not None or mtime_ns is not None else None
        if of is not None and of.kept_times is not None:
            of.set_times(atime_ns, mtime_ns)  # else its next header write would put back the old times
        else:
            _set_times(host, atime_ns, mtime_ns)
        return self._attr_at(path, host)

    # -- per-file metadata: xattrs and TTL ----------------------------------------------------
    def _with_meta(self, path: Path_, change=None) -> Meta:
        """Read (and, with ``change``, rewrite) a file's metadata; directories use their record."""
        h = self.open(path, writable=change is not None)
        try:
            meta = h.of.ef.meta
            if change is not None:
                new = Meta(meta.size, meta.created, meta.expires_at, meta.access_count, meta.kind, dict(meta.xattrs))
                change(new)
                h.of.ef.set_meta(new)
                h.of.sync_header()
                if new.expires_at != meta.expires_at:
                    self.store.ttl.set(h.of.file_id, self.relpath(self._host(h.of.path)), new.expires_at)
                return new
            return meta
        finally:
            h.release()

    def _is_dir(self, path: Path_) -> bool:
        return st.S_ISDIR(os.lstat(self._host(path)).st_mode)

    def _check_xattr_target(self, path: Path_) -> None:
        if os.path.islink(self._host(path)):
            raise oserror(errno.EPERM, "no user attributes on symlinks")

    def getxattrs(self, path: Path_) -> dict[bytes, bytes]:
        self._check_xattr_target(path)
        if self._is_dir(path):
            return dict(self._dirinfo(self._host(path)).xattrs)
        return dict(self._with_meta(path).xattrs)

    def setxattr(self, path: Path_, name: bytes, value: bytes | None) -> None:
        """Set (or with None remove) one attribute; ENODATA removing one that is absent."""
        self._check_xattr_target(path)
        if self._is_dir(path):
            host = self._host(path)
            info = self._dirinfo(host)
            xattrs = dict(info.xattrs)
            _apply_xattr(xattrs, name, value)
            if sum(3 + len(k) + len(v) for k, v in xattrs.items()) > 3900:
                raise oserror(errno.ENOSPC, "no room for more attributes")
            self._write_dirinfo(host, DirInfo(info.dir_id, info.default_ttl, xattrs))
            return
        self._with_meta(path, lambda m: _apply_xattr(m.xattrs, name, value))

    def meta(self, path: Path_) -> Meta:
        return self._with_meta(path)

    def set_ttl(self, path: Path_, seconds: float | None) -> float | None:
        now = self.store.clock.now()
        expires = now + seconds if seconds is not None else None

        def change(m: Meta) -> None:
            m.expires_at = expires

        self._with_meta(path, change)
        return expires

    def open_count(self) -> int:
        return len(self._open)

    def close(self) -> None:
        for of in list(self._open.values()):
            of.refs = 1
            self._release(of)
        self._counts.clear()  # a closing store flushes them first (Store.close); an erase drops them
        self._names.forget()
        self._dirs.clear()
        self._dir_hosts.clear()

    def walk_files(self) -> Iterator[tuple[Path_, Path]]:
        """Every memory file (plaintext path, host path): for stats and fsck."""
        if not self.exists():
            return
        stack: list[tuple[Path_, Path]] = [((), self.root)]
        while stack:
            path, host = stack.pop()
            try:
                dir_id = self._dirinfo(host).dir_id
            except (IntegrityError, OSError):
                continue
            with os.scandir(host) as it:
                for entry in it:
                    name = self._decode_entry(host, entry.name, dir_id)
                    if name is None:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((path + (name,), Path(entry.path)))
                    elif entry.is_file(follow_symlinks=False):
                        yield path + (name,), Path(entry.path)

    def check_file(self, host: Path) -> tuple[str, float | None]:
        """Authenticate one memory completely (fsck); its file id and expiry, for the TTL index."""
        fd = os.open(host, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            ef = EncryptedFile.open(self._backing(fd), self._wrap, self.tier.code, "a memory")
            if not ef.host_matches_size():
                raise IntegrityError("a memory", "host file length disagrees with the authenticated size")
            ef.verify()
            return ef.header.file_id.hex(), ef.meta.expires_at
        finally:
            os.close(fd)


def _apply_xattr(xattrs: dict[bytes, bytes], name: bytes, value: bytes | None) -> None:
    if value is None:
        if name not in xattrs:
            raise oserror(errno.ENODATA)
        del xattrs[name]
    else:
        xattrs[name] = value


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit_aside(tree: "DiskTree", handle: DiskHandle, tmp: Path, path: Path_) -> None:
    """Finish a streamed write: fsync, index its TTL, rename over the target (erasing the old)."""
    handle.fsync()
    tree._put_in_place(tmp, path, tree._split(path), handle.of.file_id, handle.of.ef.meta.expires_at)
    handle.release()


def create_aside(tree: "DiskTree", path: Path_, ttl: float | None, kind: int) -> tuple[DiskHandle, Path]:
    """A new memory written beside ``path``; :func:`_commit_aside` puts it in place atomically."""
    tree._ensure_parent(path)
    parent, _name, _host = tree._split(path)
    tmp = parent / (TMP_PREFIX + os.urandom(8).hex())
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    now = tree.store.clock.now()
    meta = Meta(created=now, expires_at=now + ttl if ttl is not None else None, kind=kind)
    ef = tree._new_memory(fd, meta)
    s = os.fstat(fd)
    of = OpenFile(tree, ef, s.st_ino, path, s.st_mode)
    tree._open[of.ino] = of
    return DiskHandle(of, True), tmp
