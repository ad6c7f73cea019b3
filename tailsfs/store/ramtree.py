"""The volatile tier: one session's tree held in the process's memory only.

Nothing here touches the disk. File contents live in :class:`RamBytes` (store/rambytes.py) so they
can be zeroed when a file is deleted or the store closes; ``lock_memory``
(mlockall, set by the daemon) keeps them out of swap.
"""
from __future__ import annotations

import errno
import heapq
import stat as st
import time
from typing import TYPE_CHECKING, Iterator

from .rambytes import RamBytes
from ..format.meta import KIND_BYTES, Meta
from .nodes import SYMLINK_MAX, Attr, Path_, check_name, clears_setid, oserror, without_setid
from .tiers import MemoryTier

if TYPE_CHECKING:
    from .engine import Store

_NODE_OVERHEAD = 256  # bytes charged to the cap per node, so empty files cannot exhaust RAM unbounded


class RamNode:
    def __init__(self, mode: int, uid: int, gid: int) -> None:
        now = time.time_ns()
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.atime_ns = self.mtime_ns = self.ctime_ns = now
        self.xattrs: dict[bytes, bytes] = {}
        self.parent: RamDir | None = None
        self.name = b""
        self.nlink = 1


class RamFile(RamNode):
    def __init__(self, mode: int, uid: int, gid: int, meta: Meta) -> None:
        super().__init__(st.S_IFREG | (mode & 0o7777), uid, gid)
        self.data = RamBytes()
        self.meta = meta
        self.xattrs = meta.xattrs  # one dict: read through an open handle's metadata or the node alike
        self.refs = 0


class RamDir(RamNode):
    def __init__(self, mode: int, uid: int, gid: int) -> None:
        super().__init__(st.S_IFDIR | (mode & 0o7777), uid, gid)
        self.children: dict[bytes, RamNode] = {}
        self.subdirs = 0  # kept up to date so getattr need not count the children
        self.default_ttl: float | None = None
        self.nlink = 2


class RamLink(RamNode):
    def __init__(self, target: bytes, uid: int, gid: int) -> None:
        super().__init__(st.S_IFLNK | 0o777, uid, gid)
        self.target = target


class RamHandle:
    def __init__(self, tree: "RamTree", node: RamFile, writable: bool, keep_times: bool = False) -> None:
        self.tree = tree
        self.node = node
        self.writable = writable
        self.keep_times = keep_times  # writes leave the times to set_times (DiskTree.OpenFile.keep_times)
        self.closed = False
        self.bytes_written = 0
        node.refs += 1

    tier = MemoryTier.VOLATILE

    @property
    def setid(self) -> bool:
        """True while the next write or truncate will clear set-ID bits (DiskHandle.setid)."""
        return clears_setid(self.node.mode)

    def read(self, offset: int, size: int) -> bytes:
        return self.node.data.read(offset, size)

    read_view = read  # the disk tiers' read_view saves a copy; here read makes only one

    def write(self, offset: int, data: bytes | memoryview) -> int:
        if not data:  # a zero-byte write changes nothing, even past the end (POSIX)
            return 0
        node = self.node
        end = offset + len(data)
        grow = max(end - len(node.data), 0)
        if grow:
            self.tree.store.charge_volatile(grow)
        try:
            node.data.write(offset, data)
        except BaseException:  # no memory for it (ENOMEM from mmap): the charge goes back
            self.tree.store.charge_volatile(-grow)
            raise
        node.meta.size = len(node.data)
        node.mode = without_setid(node.mode)
        if not self.keep_times:
            node.mtime_ns = node.ctime_ns = time.time_ns()
        self.bytes_written += len(data)
        return len(data)

    def truncate(self, size: int) -> None:
        self.tree.truncate_node(self.node, size, stamp=not self.keep_times)

    def fsync(self, data_only: bool = False) -> None:
        pass

    def getattr(self) -> Attr:
        return self.tree.attr(self.node)

    def set_times(self, atime_ns: int | None, mtime_ns: int | None) -> Attr:
        return self.tree.set_times(self.node, atime_ns, mtime_ns)

    def release(self) -> int:
        if self.closed:
            return 0
        self.closed = True
        node = self.node
        node.refs -= 1
        if node.refs == 0 and node.nlink == 0:
            self.tree.destroy(node)
        return self.bytes_written


class RamTree:
    """Same operations as DiskTree, on nodes in memory."""

    tier = MemoryTier.VOLATILE

    def __init__(self, store: "Store", session_name: str) -> None:
        self.store = store
        self.session_name = session_name
        self.root = RamDir(0o755, 0, 0)
        self._expiring: list[tuple[float, int, RamFile]] = []

    # -- lookup -----------------------------------------------------------------
    def _live(self, node: RamNode) -> bool:
        if isinstance(node, RamFile) and node.meta.expires_at is not None:
            return node.meta.expires_at > self.store.clock.now()
        return True

    def _node(self, path: Path_) -> RamNode:
        node: RamNode = self.root
        for name in path:
            if not isinstance(node, RamDir):
                raise oserror(errno.ENOTDIR)
            child = node.children.get(name)
            if child is None or not self._live(child):
                raise oserror(errno.ENOENT)
            node = child
        return node

    def _parent(self, path: Path_) -> tuple[RamDir, bytes]:
        if not path:
            raise oserror(errno.EPERM, "the session root")
        check_name(path[-1])
        parent = self._node(path[:-1])
        if not isinstance(parent, RamDir):
            raise oserror(errno.ENOTDIR)
        return parent, path[-1]

    def attr(self, node: RamNode) -> Attr:
        if isinstance(node, RamFile):
            size, expires = len(node.data), node.meta.expires_at
        elif isinstance(node, RamLink):
            size, expires = len(node.target), None
        else:
            size, expires = 4096, None
        nlink = node.nlink
        if isinstance(node, RamDir):
            nlink = 2 + node.subdirs
        return Attr(node.mode, nlink, node.uid, node.gid, size, (size + 511) // 512,
                    node.atime_ns, node.mtime_ns, node.ctime_ns, expires)

    def exists(self) -> bool:
        return True

    def getattr(self, path: Path_, prefetch: bool = False) -> Attr:
        """A node's attributes; ``prefetch`` is for disk trees (everything here is in RAM)."""
        return self.attr(self._node(path))

    def listdir(self, path: Path_) -> Iterator[tuple[bytes, Attr]]:
        node = self._node(path)
        if not isinstance(node, RamDir):
            raise oserror(errno.ENOTDIR)
        for name, child in list(node.children.items()):
            if self._live(child):
                yield name, self.attr(child)

    def _link(self, parent: RamDir, name: bytes, node: RamNode) -> None:
        if name in parent.children and self._live(parent.children[name]):
            raise oserror(errno.EEXIST)
        if name in parent.children:
            self._unlink_node(parent, name)
        self.store.charge_volatile(_NODE_OVERHEAD + len(name))
        node.parent, node.name = parent, name
        parent.children[name] = node
        parent.subdirs += isinstance(node, RamDir)
        parent.mtime_ns = parent.ctime_ns = time.time_ns()

    # -- directories --------------------------------------------------------------
    def mkdir(self, path: Path_, mode: int, uid: int | None = None, gid: int | None = None) -> Attr:
        parent, name = self._parent(path)
        node = RamDir(mode, uid or 0, gid or 0)
        self._link(parent, name, node)
        return self.attr(node)

    def rmdir(self, path: Path_) -> None:
        parent, name = self._parent(path)
        node = self._node(path)
        if not isinstance(node, RamDir):
            raise oserror(errno.ENOTDIR)
        if any(self._live(c) for c in node.children.values()):
            raise oserror(errno.ENOTEMPTY)
        self._unlink_node(parent, name)

    def makedirs(self, path: Path_) -> None:
        for depth in range(1, len(path) + 1):
            try:
                self.mkdir(path[:depth], 0o755)
            except FileExistsError:
                pass

    def get_dir_ttl(self, path: Path_) -> float | None:
        node = self._node(path)
        return node.default_ttl if isinstance(node, RamDir) else None

    def set_dir_ttl(self, path: Path_, seconds: float | None) -> None:
        node = self._node(path)
        if isinstance(node, RamDir):
            node.default_ttl = seconds

    def default_ttl(self, parent: Path_) -> float | None:
        for depth in range(len(parent), -1, -1):
            try:  # folders a write is about to create have no default yet
                node = self._node(parent[:depth])
            except (FileNotFoundError, NotADirectoryError):
                continue
            if isinstance(node, RamDir) and node.default_ttl is not None:
                return node.default_ttl
        return self.store.tier_default_ttl(MemoryTier.VOLATILE)

    # -- files ----------------------------------------------------------------------
    def create(self, path: Path_, mode: int = 0o644, uid: int | None = None, gid: int | None = None,
               ttl: float | None = None, kind: int = KIND_BYTES, keep_times: bool = False) -> RamHandle:
        parent, name = self._parent(path)
        ttl = ttl if ttl is not None else self.default_ttl(path[:-1])
        now = self.store.clock.now()
        node = RamFile(mode, uid or 0, gid or 0, Meta(created=now, expires_at=now + ttl if ttl else None, kind=kind))
        self._link(parent, name, node)
        self._track_expiry(node)
        return RamHandle(self, node, True, keep_times)

    def _track_expiry(self, node: RamFile) -> None:
        if node.meta.expires_at is not None:
            heapq.heappush(self._expiring, (node.meta.expires_at, id(node), node))

    def open(self, path: Path_, writable: bool = True, truncate: bool = False,
             keep_times: bool = False) -> RamHandle:
        node = self._node(path)
        if isinstance(node, RamDir):
            raise oserror(errno.EISDIR)
        if not isinstance(node, RamFile):
            raise oserror(errno.ELOOP)
        handle = RamHandle(self, node, writable, keep_times)
        if truncate:
            handle.truncate(0)
        return handle

    def truncate_node(self, node: RamFile, size: int, stamp: bool = True) -> None:
        if size < 0:
            raise oserror(errno.EINVAL)
        old = len(node.data)
        if size > old:
            self.store.charge_volatile(size - old)
        try:
            node.data.truncate(size)
        except BaseException:  # no memory for it: nothing changed, the charge goes back
            if size > old:
                self.store.charge_volatile(old - size)
            raise
        if size < old:
            self.store.charge_volatile(size - old)
        node.meta.size = size
        node.mode = without_setid(node.mode)
        if stamp:
            node.mtime_ns = node.ctime_ns = time.time_ns()

    def note_read(self, handle: RamHandle) -> int:
        handle.node.meta.access_count += 1
        return handle.node.meta.access_count

    def read_all(self, path: Path_) -> tuple[bytes, Meta]:
        h = self.open(path, writable=False)
        try:
            self.note_read(h)
            return h.node.data.to_bytes(), h.node.meta
        finally:
            h.release()

    def write_all(self, path: Path_, data: bytes, ttl: float | None, kind: int, mode: int = 0o600) -> Meta:
        if not self._parent_exists(path):
            self.makedirs(path[:-1])
        parent, name = self._parent(path)
        self.store.charge_volatile(len(data))  # refused before anything changes
        try:
            now = self.store.clock.now()
            node = RamFile(mode, 0, 0, Meta(size=len(data), created=now, expires_at=now + ttl if ttl else None, kind=kind))
            node.data = RamBytes(data)
            if name in parent.children:
                self._unlink_node(parent, name)
            self._link(parent, name, node)
        except BaseException:
            self.store.charge_volatile(-len(data))
            raise
        self._track_expiry(node)
        return node.meta

    def _parent_exists(self, path: Path_) -> bool:
        try:
            self._parent(path)
            return True
        except FileNotFoundError:
            return False

    def unlink(self, path: Path_) -> float:
        """Remove a memory or symlink; returns its creation time (for the audit)."""
        parent, name = self._parent(path)
        node = self._node(path)
        if isinstance(node, RamDir):
            raise oserror(errno.EISDIR)
        created = node.meta.created if isinstance(node, RamFile) else 0.0
        self._unlink_node(parent, name)
        return created

    def _unlink_node(self, parent: RamDir, name: bytes) -> None:
        node = parent.children.pop(name)
        parent.subdirs -= isinstance(node, RamDir)
        self.store.charge_volatile(-(_NODE_OVERHEAD + len(name)))
        parent.mtime_ns = parent.ctime_ns = time.time_ns()
        node.nlink = 0
        if isinstance(node, RamFile) and node.refs > 0:
            return  # erased at the last release
        self.destroy(node)

    def destroy(self, node: RamNode) -> None:
        if isinstance(node, RamFile):
            self.store.charge_volatile(-len(node.data))
            node.data.wipe()
        elif isinstance(node, RamDir):
            for name in list(node.children):
                self._unlink_node(node, name)

    def rename(self, old: Path_, new: Path_, noreplace: bool = False) -> None:
        oparent, oname = self._parent(old)
        nparent, nname = self._parent(new)
        if new[: len(old)] == old and len(new) > len(old):
            raise oserror(errno.EINVAL, "cannot move a directory into itself")
        node = self._node(old)
        if old == new:
            return
        target = nparent.children.get(nname)
        if target is not None and not self._live(target):
            self._unlink_node(nparent, nname)
            target = None
        if target is not None:
            if noreplace:
                raise oserror(errno.EEXIST)
            if isinstance(node, RamDir) != isinstance(target, RamDir):
                raise oserror(errno.EISDIR if isinstance(target, RamDir) else errno.ENOTDIR)
            if isinstance(target, RamDir) and target.children:
                raise oserror(errno.ENOTEMPTY)
            self._unlink_node(nparent, nname)
        del oparent.children[oname]
        self.store.charge_volatile(len(nname) - len(oname))
        node.parent, node.name = nparent, nname
        nparent.children[nname] = node
        if isinstance(node, RamDir):
            oparent.subdirs -= 1
            nparent.subdirs += 1
        now = time.time_ns()
        oparent.mtime_ns = nparent.mtime_ns = node.ctime_ns = now

    # -- symlinks ------------------------------------------------------------------
    def symlink(self, path: Path_, target: bytes, uid: int | None = None, gid: int | None = None) -> Attr:
        if len(target) > SYMLINK_MAX:
            raise oserror(errno.ENAMETOOLONG)
        if not target:
            raise oserror(errno.ENOENT)
        parent, name = self._parent(path)
        node = RamLink(target, uid or 0, gid or 0)
        self._link(parent, name, node)
        self.store.charge_volatile(len(target))
        return self.attr(node)

    def readlink(self, path: Path_) -> bytes:
        node = self._node(path)
        if not isinstance(node, RamLink):
            raise oserror(errno.EINVAL)
        return node.target

    # -- attributes -------------------------------------------------------------------
    def setattr(self, path: Path_, mode: int | None = None, uid: int | None = None, gid: int | None = None,
                atime_ns: int | None = None, mtime_ns: int | None = None, size: int | None = None) -> Attr:
        node = self._node(path)
        if size is not None:
            if not isinstance(node, RamFile):
                raise oserror(errno.EISDIR)
            self.truncate_node(node, size)
        if (uid is not None or gid is not None) and isinstance(node, RamFile):
            node.mode = without_setid(node.mode)  # as chown(2) does; an explicit mode below wins
        if mode is not None and not isinstance(node, RamLink):
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        if uid is not None:
            node.uid = uid
        if gid is not None:
            node.gid = gid
        return self.set_times(node, atime_ns, mtime_ns)

    def set_times(self, node: RamNode, atime_ns: int | None, mtime_ns: int | None) -> Attr:
        if atime_ns is not None:
            node.atime_ns = atime_ns
        if mtime_ns is not None:
            node.mtime_ns = mtime_ns
        node.ctime_ns = time.time_ns()
        return self.attr(node)

    def getxattrs(self, path: Path_) -> dict[bytes, bytes]:
        node = self._node(path)
        if isinstance(node, RamLink):
            raise oserror(errno.EPERM)
        return dict(node.xattrs)

    def setxattr(self, path: Path_, name: bytes, value: bytes | None) -> None:
        node = self._node(path)
        if isinstance(node, RamLink):
            raise oserror(errno.EPERM)
        if value is None:
            if name not in node.xattrs:
                raise oserror(errno.ENODATA)
            old = node.xattrs.pop(name)
            self.store.charge_volatile(-(len(name) + len(old)))
            return
        old_len = len(name) + len(node.xattrs[name]) if name in node.xattrs else 0
        if sum(3 + len(k) + len(v) for k, v in node.xattrs.items()) - old_len + len(name) + len(value) > 3900:
            raise oserror(errno.ENOSPC, "no room for more attributes")
        self.store.charge_volatile(len(name) + len(value) - old_len)
        node.xattrs[name] = value
        node.ctime_ns = time.time_ns()

    def meta(self, path: Path_) -> Meta:
        node = self._node(path)
        if not isinstance(node, RamFile):
            raise oserror(errno.EISDIR)
        return node.meta

    def set_ttl(self, path: Path_, seconds: float | None) -> float | None:
        node = self._node(path)
        if not isinstance(node, RamFile):
            raise oserror(errno.EISDIR)
        node.meta.expires_at = self.store.clock.now() + seconds if seconds is not None else None
        self._track_expiry(node)
        return node.meta.expires_at

    def prune(self, now: float) -> int:
        count = 0
        while self._expiring and self._expiring[0][0] <= now:
            expires, _id, node = heapq.heappop(self._expiring)
            if node.meta.expires_at != expires or node.nlink == 0 or node.parent is None:
                continue
            if node.parent.children.get(node.name) is node:
                self._unlink_node(node.parent, node.name)
                count += 1
        return count

    def next_expiry(self) -> float | None:
        while self._expiring:
            expires, _id, node = self._expiring[0]
            if node.meta.expires_at == expires and node.nlink:
                return expires
            heapq.heappop(self._expiring)
        return None

    def walk_files(self) -> Iterator[tuple[Path_, RamFile]]:
        stack: list[tuple[Path_, RamDir]] = [((), self.root)]
        while stack:
            path, node = stack.pop()
            for name, child in node.children.items():
                if isinstance(child, RamDir):
                    stack.append((path + (name,), child))
                elif isinstance(child, RamFile) and self._live(child):
                    yield path + (name,), child

    def memory_id(self, path: Path_, created: float) -> str:
        key = "/".join(p.decode("utf-8", "backslashreplace") for p in path)
        return f"{self.session_name}:{key}:{created:.3f}"

    def wipe(self) -> None:
        for name in list(self.root.children):
            self._unlink_node(self.root, name)

    def close(self) -> None:
        self.wipe()
