"""pyfuse3 operations: the kernel's requests answered from the store.

Every handler goes through :func:`_guard`: an exception that is not a
FUSEError would tear the whole mount down (pyfuse3 re-raises it out of
``main``), so store errors become their errno and anything unexpected is
logged — type and traceback only, never a message that could carry a name —
and answered with EIO.
"""
from __future__ import annotations

import errno
import functools
import json
import logging
import math
import os
import stat as st
import time
import traceback
from typing import Any, Callable

import pyfuse3
import trio

from ..errors import IntegrityError, UnknownSessionError
from ..store.deadlines import Deadlines
from ..store.engine import Store, check_session_name
from ..store.nodes import Attr, check_name, check_ttl
from ..store.tiers import MemoryTier
from .inodes import CTL_INODE, CTL_NAME, ROOT, TIER_INODES, InodeTable, Node
from .follow import ClientFollower
from .memtrim import QuietTrimmer
from .prefetch import OpenAfterLookup

log = logging.getLogger(__name__)

CACHE_TIMEOUT = 300.0  # nothing changes behind the kernel: the daemon owns the store; expiry invalidates
BULK_BYTES = 64 * 1024  # reads and writes this large keep both vCPUs busy: no reply from the client's (follow.py)
# Held-back read counts (DiskTree.flush_counts) are written after this long without a request,
# this many per turn of the expiry loop: a request that arrives meanwhile waits a few ms at most.
COUNT_FLUSH_QUIET = 0.5
COUNT_FLUSH_BATCH = 64
TRIM_QUIET = 1.0  # seconds without a request before the daemon gives its free heap memory back (memtrim.py)
FILL_MAX_BYTES = 128 * 1024  # files up to this size reach the kernel's page cache with their OPEN
XATTR_PREFIX = b"user."
TTL_XATTR = b"user.tails.ttl"
READONLY_XATTRS = (b"user.tails.tier", b"user.tails.expires_at", b"user.tails.created",
                   b"user.tails.memory_id", b"user.tails.access_count")
CAPABILITY_XATTR = b"security.capability"
TEST_FAULT_XATTR = b"user.tails.test.raise"
TEST_IO_FAULT_XATTR = b"user.tails.test.fault"  # value "op:errno:count", e.g. "read:5:1"


def _guard(fn: Callable, payload: Callable[[tuple[Any, ...]], int] | None = None) -> Callable:
    """``fn`` as a pyfuse3 handler; ``payload`` says how many bytes a request moves (reads, writes)."""
    @functools.wraps(fn)
    async def wrapper(self: "TailsOperations", *args: Any) -> Any:
        if self.follower is not None:
            self.follower.handling()
        try:
            return _answer(self, fn, args)
        finally:  # pyfuse3 sends the reply when this returns
            if self.follower is not None:
                ctx = args[-1] if args else None
                self.follower.replying(ctx.pid if isinstance(ctx, pyfuse3.RequestContext) else 0,
                                       bulk=payload is not None and payload(args) >= BULK_BYTES)
    return wrapper


def _answer(self: "TailsOperations", fn: Callable, args: tuple[Any, ...]) -> Any:
    """``fn``'s answer, or the FUSEError that stands for what went wrong."""
    self.store.note_activity()
    try:
        return fn(self, *args)
    except pyfuse3.FUSEError:
        raise
    except IntegrityError as exc:
        log.error("%s: integrity check failed (%s); answering EIO", fn.__name__, exc.detail)
        self.store.audit.record("integrity_error", operation=fn.__name__, detail=exc.detail, memory=exc.what)
        raise pyfuse3.FUSEError(errno.EIO) from None
    except UnknownSessionError:
        raise pyfuse3.FUSEError(errno.ENOENT) from None
    except OSError as exc:
        code = exc.errno or errno.EIO
        if code == errno.EIO:
            log.error("%s: I/O error from the store's disk", fn.__name__)
            self.store.audit.record("io_error", operation=fn.__name__, detail=os.strerror(code))
        raise pyfuse3.FUSEError(code) from None
    except (ValueError, TypeError):
        raise pyfuse3.FUSEError(errno.EINVAL) from None
    except Exception as exc:  # never let one request kill the mount
        log.error("%s failed with %s; answering EIO\n%s", fn.__name__, type(exc).__name__,
                  "".join(traceback.format_tb(exc.__traceback__)))
        raise pyfuse3.FUSEError(errno.EIO) from None


def _eperm() -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(errno.EPERM)


class Handle:
    """An open file: the store handle plus what the audit needs at close."""

    __slots__ = ("node", "inner", "tree", "path", "reader")

    def __init__(self, node: Node, inner: Any, tree: Any, path: tuple[bytes, ...], reader: bool) -> None:
        self.node, self.inner, self.tree, self.path, self.reader = node, inner, tree, path, reader


class CtlHandle:
    """The control file: a JSON request written, a JSON response read back."""

    __slots__ = ("response", "stop")

    def __init__(self) -> None:
        self.response = b""
        self.stop = False  # after an emergency wipe: unmount once the caller has read the answer


class TailsOperations(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, store: Store, *, mountpoint: str = "", prune_interval: float = 60.0,
                 allow_other: bool = False, test_faults: bool = False) -> None:
        super().__init__()
        self.store = store
        self.mountpoint = mountpoint
        self.prune_interval = prune_interval
        self.allow_other = allow_other
        self.test_faults = test_faults
        self.initialized = False
        self.inodes = InodeTable()
        self.handles: dict[int, Handle | CtlHandle] = {}
        self.dir_snapshots: dict[int, list[tuple[bytes, Node, Attr]]] = {}
        self._dir_nodes: dict[int, Node] = {}
        self.open_by_ino: dict[int, Handle] = {}  # any one open handle per inode: its size is the live one
        self._next_fh = 1
        # inodes whose entries the kernel caches, and when their files expire: dropped from its cache then
        self.expiring: Deadlines[int] = Deadlines()
        self.pattern = OpenAfterLookup()  # whether lookups should start reading the file they find
        self.uid, self.gid = os.getuid(), os.getgid()
        self.started = time.time_ns()
        self.on_emergency: Callable[[], None] | None = None
        self.follower: ClientFollower | None = None  # set by the mount when replies follow the client's CPU
        self.wake_probe: float | None = None  # seconds, set by the mount when follow_client=auto measured
        self.trimmer = QuietTrimmer(TRIM_QUIET)  # the heap's free memory back to the kernel when quiet
        self.killpriv_v2: Callable[[], bool] = lambda: False  # set by the mount: whether INIT announced it
        self.capability_lookups = 0  # the kernel's GETXATTR security.capability: one per write(2) without it

    # -- helpers ----------------------------------------------------------------------
    def _tree(self, node: Node, create: bool = False):
        if node.session is None or node.tier is None:
            raise _eperm()
        return self.store.tree(node.session, node.tier, create=create)

    def _entry(self, node: Node, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = node.ino
        e.generation = 0
        e.entry_timeout = CACHE_TIMEOUT
        e.attr_timeout = CACHE_TIMEOUT
        e.st_mode = attr.mode
        e.st_nlink = attr.nlink
        e.st_uid = attr.uid
        e.st_gid = attr.gid
        e.st_rdev = 0
        e.st_size = attr.size
        e.st_blksize = 4096
        e.st_blocks = attr.blocks
        e.st_atime_ns = attr.atime_ns
        e.st_mtime_ns = attr.mtime_ns
        e.st_ctime_ns = attr.ctime_ns
        if attr.expires_at is not None:
            self.expiring.watch(node.ino, attr.expires_at)
        return e

    def _virtual_dir(self, mode: int, nlink: int) -> Attr:
        t = self.started
        return Attr(st.S_IFDIR | mode, nlink, self.uid, self.gid, 4096, 8, t, t, t)

    def _attr(self, node: Node) -> Attr:
        if node.ino == ROOT:
            return self._virtual_dir(0o755, 2 + len(TIER_INODES))
        if node.ino == CTL_INODE:
            t = self.started
            return Attr(st.S_IFREG | 0o600, 1, self.uid, self.gid, 0, 0, t, t, t)
        if node.session is None:
            return self._virtual_dir(0o1777 if self.allow_other else 0o755,
                                     2 + len(self.store.tier_sessions(node.tier)))
        h = self.open_by_ino.get(node.ino)
        if h is not None:
            return h.inner.getattr()
        return self._tree(node).getattr(self._live_path(node))

    def _live_path(self, node: Node) -> tuple[bytes, ...]:
        """A node's store path; ENOENT once the node is deleted: its old path may name a new file by now."""
        if node.unlinked:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return self.inodes.path(node)

    def _name_ok(self, name: bytes) -> None:
        check_name(name)

    def _new_fh(self, h: Handle | CtlHandle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = h
        if isinstance(h, Handle):
            h.node.opens += 1
            self.open_by_ino[h.node.ino] = h
        return fh

    # -- lookups ------------------------------------------------------------------------
    @_guard
    def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        attr: Attr | None = None
        if name == b".":
            node = parent
        elif name == b"..":
            node = self.inodes.get(parent.parent)
        elif parent.ino == ROOT:
            if name == CTL_NAME:
                node = self.inodes.get(CTL_INODE)
            else:
                ino = self.inodes.by_name.get((ROOT, name))
                if ino is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                node = self.inodes.get(ino)
        elif parent.session is None:  # a tier folder: the name is a session
            self._name_ok(name)
            if not self.store.has_tier(os.fsdecode(name), parent.tier):
                raise pyfuse3.FUSEError(errno.ENOENT)
            node = self.inodes.child(parent, name, is_dir=True)
        else:
            self._name_ok(name)
            node, attr = self._lookup_in_session(parent, name)
        if attr is None:
            attr = self._attr(node)
        node.lookups += 1
        return self._entry(node, attr)

    def _lookup_in_session(self, parent: Node, name: bytes) -> tuple[Node, Attr]:
        """The child and its attributes from one store stat, which also tells a file from a directory.

        The stores answer an open file's stat from its open state (a writer's size included).
        A disk tree also starts reading the file when the client has been opening or removing
        the files it looks up (fuse/prefetch.py).
        """
        attr = self._tree(parent).getattr(self.inodes.path(parent) + (name,), prefetch=self.pattern.likely)
        node = self.inodes.child(parent, name, is_dir=attr.is_dir)
        if not attr.is_dir:
            self.pattern.looked_up(node.ino)
        return node, attr

    @_guard
    def forget(self, inode_list: list[tuple[int, int]]) -> None:
        for ino, count in inode_list:
            self.inodes.forget(ino, count)
            if ino not in self.inodes.nodes:
                self.expiring.forget(ino)

    @_guard
    def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        return self._entry(node, self._attr(node))

    @_guard
    def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        """access(2) without default_permissions (the caller is the mounting user): POSIX mode bits.

        Root passes everything but X_OK on a file with no execute bit, as execve(2) would.
        """
        attr = self._attr(self.inodes.get(inode))
        if ctx.uid == 0:
            return not (mode & os.X_OK) or st.S_ISDIR(attr.mode) or bool(attr.mode & 0o111)
        if ctx.uid == attr.uid:
            bits = attr.mode >> 6
        elif attr.gid == ctx.gid or attr.gid in pyfuse3.get_sup_groups(ctx.pid):
            bits = attr.mode >> 3
        else:
            bits = attr.mode
        return (bits & mode & 0o7) == mode & 0o7

    @_guard
    def setattr(self, inode: int, attr: pyfuse3.EntryAttributes, fields: pyfuse3.SetattrFields, fh: int | None,
                ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.inodes.get(inode)
        if node.session is None:
            raise _eperm()
        size = attr.st_size if fields.update_size else None
        h = self.handles.get(fh) if fh is not None else None
        if h is None:
            h = self.open_by_ino.get(node.ino)
        if size is not None and isinstance(h, Handle):
            h.inner.truncate(size)
            size = None
        now = time.time_ns()
        kwargs = dict(
            mode=attr.st_mode if fields.update_mode else None,
            uid=attr.st_uid if fields.update_uid else None,
            gid=attr.st_gid if fields.update_gid else None,
            atime_ns=(now if getattr(fields, "update_atime_now", False) else attr.st_atime_ns) if fields.update_atime else None,
            mtime_ns=(now if getattr(fields, "update_mtime_now", False) else attr.st_mtime_ns) if fields.update_mtime else None,
            size=size,
        )
        if node.unlinked and isinstance(h, Handle):
            return self._entry(node, h.inner.getattr())
        if isinstance(h, Handle) and not (fields.update_mode or fields.update_uid or fields.update_gid):
            return self._entry(node, h.inner.set_times(kwargs["atime_ns"], kwargs["mtime_ns"]))
        # a deleted node without a handle (also the ctime the kernel writes back after an unlink): ENOENT
        return self._entry(node, self._tree(node).setattr(self._live_path(node), **kwargs))

    @_guard
    def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.inodes.get(inode)
        return self._tree(node).readlink(self._live_path(node))

    # -- directories --------------------------------------------------------------------
    @_guard
    def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        self._name_ok(name)
        if parent.ino == ROOT:
            raise _eperm()
        if parent.session is None:
            sname = check_session_name(os.fsdecode(name))
            if self.store.has_tier(sname, parent.tier):
                raise pyfuse3.FUSEError(errno.EEXIST)
            tree = self.store.tree(sname, parent.tier, create=True)
            attr = tree.setattr((), mode=mode & ~ctx.umask, uid=ctx.uid, gid=ctx.gid)
        else:
            attr = self._tree(parent).mkdir(self.inodes.path(parent) + (name,), mode & ~ctx.umask, ctx.uid, ctx.gid)
        node = self.inodes.child(parent, name, is_dir=True)
        node.lookups += 1
        self.store.audit.record("directory_create", session=node.session, tier=node.tier.value,
                             path=os.fsdecode(b"/".join(self.inodes.path(node))))
        return self._entry(node, attr)

    @_guard
    def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.inodes.get(parent_inode)
        if parent.ino == ROOT:
            raise _eperm()
        self._name_ok(name)
        if parent.session is None:
            sname = os.fsdecode(name)
            if not self.store.has_tier(sname, parent.tier):
                raise pyfuse3.FUSEError(errno.ENOENT)
            self.store.remove_tier(sname, parent.tier)
        else:
            self._tree(parent).rmdir(self.inodes.path(parent) + (name,))
        ino = self.inodes.by_name.get((parent.ino, name))
        if ino is not None:
            self.inodes.detach(self.inodes.get(ino))

    @_guard
    def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        node = self.inodes.get(inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._next_fh
        self._next_fh += 1
        self._dir_nodes[fh] = node
        return fh

    def _list(self, node: Node) -> list[tuple[bytes, Node, Attr]]:
        out = []
        if node.ino == ROOT:
            for tier, ino in TIER_INODES.items():
                n = self.inodes.get(ino)
                out.append((n.name, n, self._attr(n)))
            return out
        if node.session is None:
            for sname in self.store.tier_sessions(node.tier):
                name = os.fsencode(sname)
                child = self.inodes.child(node, name, is_dir=True)
                try:
                    out.append((name, child, self._attr(child)))
                except (OSError, pyfuse3.FUSEError):
                    continue
            return out
        for name, attr in self._tree(node).listdir(self.inodes.path(node)):
            out.append((name, self.inodes.child(node, name, is_dir=attr.is_dir), attr))
        return out

    @_guard
    def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        # One snapshot per opendir (a rewind re-reads): offsets stay stable while entries change.
        snapshot = self.dir_snapshots.get(fh)
        if snapshot is None or start_id == 0:
            snapshot = self.dir_snapshots[fh] = self._list(self._dir_nodes[fh])
        for i in range(start_id, len(snapshot)):
            name, child, attr = snapshot[i]
            if child.ino not in self.inodes.nodes:
                if child.unlinked:
                    continue  # removed since the snapshot
                # only forgotten by the kernel: the entry is still there (same inode number again)
                child = self.inodes.child(self._dir_nodes[fh], name, is_dir=child.is_dir)
                snapshot[i] = (name, child, attr)
            if not pyfuse3.readdir_reply(token, name, self._entry(child, attr), i + 1):
                return
            child.lookups += 1

    @_guard
    def releasedir(self, fh: int) -> None:
        self.dir_snapshots.pop(fh, None)
        self._dir_nodes.pop(fh, None)

    @_guard
    def fsyncdir(self, fh: int, datasync: bool) -> None:
        return None

    # -- files ------------------------------------------------------------------------------
    def _check_file_parent(self, parent: Node) -> None:
        if parent.session is None:
            raise _eperm()  # no files in the root or directly in a tier folder

    @_guard
    def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
               ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.inodes.get(parent_inode)
        self._check_file_parent(parent)
        self._name_ok(name)
        tree = self._tree(parent)
        path = self.inodes.path(parent) + (name,)
        inner = tree.create(path, mode & ~ctx.umask & 0o7777, ctx.uid, ctx.gid, keep_times=True)
        node = self.inodes.child(parent, name, is_dir=False)
        node.lookups += 1
        node.opened = True
        fh = self._new_fh(Handle(node, inner, tree, path, reader=False))
        return self._file_info(fh, node, flags), self._entry(node, inner.getattr())

    def _file_info(self, fh: int, node: Node, flags: int) -> pyfuse3.FileInfo:
        fi = pyfuse3.FileInfo(fh=fh)
        fi.direct_io = bool(flags & os.O_DIRECT)
        fi.keep_cache = True
        return fi

    @_guard
    def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
              ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        self._check_file_parent(parent)
        self._name_ok(name)
        if not st.S_ISREG(mode):
            raise _eperm()  # FIFOs, sockets and device nodes are not memories
        tree = self._tree(parent)
        inner = tree.create(self.inodes.path(parent) + (name,), mode & ~ctx.umask & 0o7777, ctx.uid, ctx.gid)
        attr = inner.getattr()
        inner.release()
        node = self.inodes.child(parent, name, is_dir=False)
        node.lookups += 1
        return self._entry(node, attr)

    @_guard
    def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.inodes.get(inode)
        if inode == CTL_INODE:
            if ctx.uid not in (0, self.uid):
                raise pyfuse3.FUSEError(errno.EACCES)
            fi = pyfuse3.FileInfo(fh=self._new_fh(CtlHandle()))
            fi.direct_io = True
            return fi
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if node.session is None:
            raise _eperm()
        tree = self._tree(node)
        path = self._live_path(node)
        self.pattern.used(inode)
        accmode = flags & os.O_ACCMODE
        # the kernel keeps the times of the files it caches writes for: they change only by SETATTR
        inner = tree.open(path, writable=accmode != os.O_RDONLY, truncate=bool(flags & os.O_TRUNC), keep_times=True)
        reader = accmode in (os.O_RDONLY, os.O_RDWR)
        if reader:
            count = tree.note_read(inner)
            self.store.audit.record("memory_read", memory_id=tree.memory_id(path, _meta(inner).created),
                                 tier=node.tier.value, access_count=count, session=node.session)
        fh = self._new_fh(Handle(node, inner, tree, path, reader))
        if accmode == os.O_RDONLY and not node.opened and not flags & os.O_DIRECT:
            self._fill_page_cache(inode, inner)
        node.opened = True
        return self._file_info(fh, node, flags)

    def _fill_page_cache(self, inode: int, inner: Any) -> None:
        """Hand a small file's bytes to the kernel with the OPEN answer, sparing the READ that follows.

        Reading a small file is otherwise three requests (OPEN, READ, RELEASE); the READ costs a
        round trip for a few KiB of a file whose header OPEN has just read.
        Only at the first open since the kernel looked the inode up: until then the kernel holds
        no page of it, so nothing a writer left dirty there can be overwritten with older bytes.
        A file that fails to read here is left to READ, which answers EIO as it always did.
        """
        size = _meta(inner).size  # the handle's own, without the fstat a getattr makes
        if not 0 < size <= FILL_MAX_BYTES:
            return
        try:
            pyfuse3.notify_store(inode, 0, inner.read_view(0, size))
        except OSError as exc:  # IntegrityError included; and ENOSYS from a kernel without the call
            log.debug("page cache left to READ (%s)", errno.errorcode.get(exc.errno or 0, "no errno"))  # no names

    @functools.partial(_guard, payload=lambda args: args[2])
    def read(self, fh: int, off: int, size: int) -> bytes | bytearray | memoryview:
        h = self.handles[fh]
        if isinstance(h, CtlHandle):
            return h.response[off : off + size]
        # a view into a reused buffer is safe: pyfuse3 replies before any other request runs
        return h.inner.read_view(off, size)

    @functools.partial(_guard, payload=lambda args: len(args[2]))
    def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if isinstance(h, CtlHandle):
            h.response = self._control(buf)
            h.stop = self.store.closed
            return len(buf)
        if h.inner.setid and self.initialized:
            # The store clears set-ID bits (nodes.without_setid) that the kernel, which leaves
            # that to us (killpriv.py), would go on showing after a write it flushed from its
            # cache. (After a truncate it asks again: SETATTR answers with the attributes, and
            # an O_TRUNC open invalidates them.)
            n = h.inner.write(off, buf)
            try:
                pyfuse3.invalidate_inode(h.node.ino, attr_only=True)
            except OSError:  # ENOENT: the kernel holds nothing of the inode to correct
                pass
            return n
        return h.inner.write(off, buf)

    async def flush(self, fh: int) -> None:
        """Not implemented, on purpose: the kernel then stops sending FLUSH at all.

        close() still waits for the kernel to write back the file's dirty
        pages and reports their errors (fs/fuse/file.c, fuse_flush); the
        header is written at release and at fsync. One round trip fewer on
        every close.
        """
        raise pyfuse3.FUSEError(errno.ENOSYS)

    @_guard
    def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles.get(fh)
        if isinstance(h, Handle):
            h.inner.fsync(datasync)

    @_guard
    def release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if isinstance(h, CtlHandle) and h.stop and self.on_emergency is not None:
            self.on_emergency()
        if not isinstance(h, Handle):
            return
        node = h.node
        node.opens -= 1
        if self.open_by_ino.get(node.ino) is h:
            other = None if node.opens == 0 else next(
                (x for x in self.handles.values() if isinstance(x, Handle) and x.node is node), None)
            if other is None:
                del self.open_by_ino[node.ino]
            else:
                self.open_by_ino[node.ino] = other
        written = h.inner.release()
        if written:
            self.store.audit.record("memory_write", memory_id=h.tree.memory_id(self.inodes.path(node) if not node.unlinked else h.path,
                                                                             _meta(h.inner).created),
                                 tier=node.tier.value, size_bytes=written, session=node.session)
        self.inodes._maybe_drop(node)

    # -- names -------------------------------------------------------------------------------
    @_guard
    def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        parent = self.inodes.get(parent_inode)
        if parent.session is None:
            raise _eperm()
        self._name_ok(name)
        tree = self._tree(parent)
        path = self.inodes.path(parent) + (name,)
        created = tree.unlink(path)
        self.store.audit.record("memory_delete", memory_id=tree.memory_id(path, created), tier=parent.tier.value,
                             session=parent.session)
        ino = self.inodes.by_name.get((parent.ino, name))
        if ino is not None:
            self.pattern.used(ino)
            self.expiring.forget(ino)
            self.inodes.detach(self.inodes.get(ino))

    @_guard
    def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int, name_new: bytes, flags: int,
               ctx: pyfuse3.RequestContext) -> None:
        old_parent = self.inodes.get(parent_inode_old)
        new_parent = self.inodes.get(parent_inode_new)
        self._name_ok(name_old)
        self._name_ok(name_new)
        if old_parent.ino == ROOT or new_parent.ino == ROOT:
            raise _eperm()
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise pyfuse3.FUSEError(errno.EINVAL)
        if old_parent.session is None or new_parent.session is None:
            # renaming a session folder re-keys nothing but would fork its identity: mv copies instead
            raise pyfuse3.FUSEError(errno.EXDEV)
        if (old_parent.session, old_parent.tier) != (new_parent.session, new_parent.tier):
            raise pyfuse3.FUSEError(errno.EXDEV)  # other keys or tier: mv copies (re-encrypts) and erases
        tree = self._tree(old_parent)
        old_path = self.inodes.path(old_parent) + (name_old,)
        new_path = self.inodes.path(new_parent) + (name_new,)
        tree.rename(old_path, new_path, noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))
        self.store.audit.record("memory_rename", session=old_parent.session, tier=old_parent.tier.value,
                             path=os.fsdecode(b"/".join(old_path)), new_path=os.fsdecode(b"/".join(new_path)))
        target = self.inodes.by_name.get((new_parent.ino, name_new))
        if target is not None:
            self.inodes.detach(self.inodes.get(target))
        ino = self.inodes.by_name.get((old_parent.ino, name_old))
        if ino is not None:
            self.inodes.move(self.inodes.get(ino), new_parent, name_new)
        for h in self.handles.values():
            if isinstance(h, Handle) and h.path[: len(old_path)] == old_path:
                h.path = new_path + h.path[len(old_path):]

    @_guard
    def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        parent = self.inodes.get(parent_inode)
        self._check_file_parent(parent)
        self._name_ok(name)
        attr = self._tree(parent).symlink(self.inodes.path(parent) + (name,), target, ctx.uid, ctx.gid)
        node = self.inodes.child(parent, name, is_dir=False)
        node.lookups += 1
        return self._entry(node, attr)

    @_guard
    def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext) -> None:
        raise _eperm()  # hard links would share one data key between two names: refused

    # -- xattrs ----------------------------------------------------------------------------------
    def _xattr_target(self, inode: int, change: bool = False) -> tuple[Node, Any, tuple[bytes, ...]]:
        """The node, its tree and its path; ENOENT for a deleted node the path no longer leads to.

        A deleted file still open is read through its handle, but never changed: the store
        reaches attributes by path, and the old path may name a new file by now.
        """
        node = self.inodes.get(inode)
        if node.session is None:
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if node.unlinked and not change and node.ino in self.open_by_ino:
            return node, self._tree(node), self.inodes.path(node)  # read through its handle
        return node, self._tree(node), self._live_path(node)

    @_guard
    def setxattr(self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext) -> None:
        if self.test_faults and name == TEST_FAULT_XATTR:
            raise RuntimeError("fault injected for tests")
        if self.test_faults and name == TEST_IO_FAULT_XATTR:
            op, err, count = value.decode().split(":")
            self.store.arm_io_fault(op, int(err), int(count))
            return
        if not name.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if name in READONLY_XATTRS:
            raise _eperm()
        node, tree, path = self._xattr_target(inode, change=True)
        if node.ino != CTL_INODE and ctx.uid not in (0, self._attr(node).uid):
            raise _eperm()
        if name == TTL_XATTR:
            seconds = _parse_ttl(value)
            if node.is_dir:
                tree.set_dir_ttl(path, seconds)
            else:
                expires = tree.set_ttl(path, seconds)
                self.expiring.watch(node.ino, expires)
                self.store.audit.record("ttl_set", session=node.session, tier=node.tier.value,
                                     path=os.fsdecode(b"/".join(path)), ttl_seconds=seconds)
            return
        tree.setxattr(path, name, value)

    @_guard
    def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if not name.startswith(XATTR_PREFIX):
            if name == CAPABILITY_XATTR:
                self.capability_lookups += 1
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        node, tree, path = self._xattr_target(inode)
        if name == TTL_XATTR:
            if node.is_dir:
                ttl = tree.get_dir_ttl(path) if path or node.session else None
                if ttl is None:
                    raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
                return _num(ttl)
            expires = self._attr(node).expires_at
            if expires is None:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            return _num(max(0, math.ceil(expires - self.store.clock.now())))
        if name == b"user.tails.tier":
            return node.tier.value.encode()
        if name in READONLY_XATTRS:
            if node.is_dir:
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            meta = self._meta_of(node, tree, path)
            if name == b"user.tails.expires_at":
                if meta.expires_at is None:
                    raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
                return _num(meta.expires_at)
            if name == b"user.tails.created":
                return _num(meta.created)
            if name == b"user.tails.memory_id":
                return tree.memory_id(path, meta.created).encode("utf-8", "surrogateescape")
            return _num(meta.access_count)
        try:
            return self._xattrs_of(node, tree, path)[name]
        except KeyError:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR) from None

    def _meta_of(self, node: Node, tree: Any, path: tuple[bytes, ...]):
        h = self.open_by_ino.get(node.ino)
        return _meta(h.inner) if h is not None else tree.meta(path)

    def _xattrs_of(self, node: Node, tree: Any, path: tuple[bytes, ...]) -> dict[bytes, bytes]:
        h = self.open_by_ino.get(node.ino)
        if h is not None:
            return dict(_meta(h.inner).xattrs)
        return tree.getxattrs(path)

    @_guard
    def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        node = self.inodes.get(inode)
        if node.session is None:
            return []
        node, tree, path = self._xattr_target(inode)
        try:
            names = list(self._xattrs_of(node, tree, path))
        except OSError as exc:
            if exc.errno == errno.EPERM:  # symlinks hold no user attributes
                return []
            raise
        if not node.is_dir and self._attr(node).expires_at is not None:
            names.append(TTL_XATTR)  # copied by cp -a / rsync -X as "seconds left": the copy expires too
        return names

    @_guard
    def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        if not name.startswith(XATTR_PREFIX):
            raise pyfuse3.FUSEError(errno.ENOTSUP)
        if name in READONLY_XATTRS:
            raise _eperm()
        node, tree, path = self._xattr_target(inode, change=True)
        if name == TTL_XATTR:
            if node.is_dir:
                tree.set_dir_ttl(path, None)
            elif node.tier is MemoryTier.EPHEMERAL:
                # the ephemeral tier never holds a file without a TTL: removing it restores the default
                # (rsync -X and cp -a remove the attributes their source lacks)
                self.expiring.watch(node.ino, tree.set_ttl(path, tree.default_ttl(path[:-1])))
            else:
                tree.set_ttl(path, None)
                self.expiring.forget(node.ino)
            return
        tree.setxattr(path, name, None)

    # -- filesystem -------------------------------------------------------------------------------
    @_guard
    def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        vfs = os.statvfs(self.store.base)
        s = pyfuse3.StatvfsData()
        s.f_bsize = vfs.f_bsize
        s.f_frsize = vfs.f_frsize
        s.f_blocks = vfs.f_blocks
        s.f_bfree = vfs.f_bfree
        s.f_bavail = vfs.f_bavail
        s.f_files = vfs.f_files
        s.f_ffree = vfs.f_ffree
        s.f_favail = vfs.f_favail
        s.f_namemax = 255
        return s

    # -- control file ------------------------------------------------------------------------------
    def _control(self, buf: bytes) -> bytes:
        from ..control import execute
        try:
            request = json.loads(buf)
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            return json.dumps({"error": "control request is not a JSON object", "kind": "usage"}).encode()
        cmd = request.get("cmd")
        if cmd == "emergency_wipe":
            self.store.audit.record("emergency_wipe", face="mount")
        response = execute(self.store, request)
        if cmd == "status":
            response.update(mounted=True, mountpoint=self.mountpoint, pid=os.getpid(),
                            prune_interval=self.prune_interval, open_files=len(self.handles),
                            follow_client=self._follow_report(),
                            fuse={"killpriv_v2": self.killpriv_v2(), "capability_lookups": self.capability_lookups})
        if cmd == "wipe_session" and "error" not in response:
            self._forget_session(request["session"])
        return json.dumps(response, default=str).encode()

    def _follow_report(self) -> dict[str, object]:
        report = self.follower.report() if self.follower else {"on": False}
        if self.wake_probe is not None:
            report["cross_cpu_extra_us"] = round(self.wake_probe * 1e6, 1)
        return report

    def _forget_session(self, name: str) -> None:
        """A wiped session is gone from every tier: drop its names from the kernel's caches too."""
        raw = os.fsencode(name)
        for tier_ino in TIER_INODES.values():
            ino = self.inodes.by_name.get((tier_ino, raw))
            if ino is not None:
                self.inodes.detach(self.inodes.get(ino))
            try:
                pyfuse3.invalidate_entry_async(tier_ino, raw, ignore_enoent=True)
            except Exception:  # noqa: BLE001 - a name the kernel never saw
                pass

    # -- expiry ---------------------------------------------------------------------------------------
    async def expiry_loop(self) -> None:
        """Hide expired files from the kernel's caches at once; erase them every prune interval."""
        last_prune = time.monotonic()
        while True:
            now = self.store.clock.now()
            for ino in self.expiring.due(now):
                node = self.inodes.nodes.get(ino)
                if node is not None and node.ino not in (ROOT, CTL_INODE):
                    try:
                        pyfuse3.invalidate_entry_async(node.parent, node.name)
                    except Exception:  # invalidating a name the kernel forgot is harmless
                        pass
            if time.monotonic() - last_prune >= self.prune_interval:
                last_prune = time.monotonic()
                try:
                    self.store.prune()
                except Exception as exc:
                    log.error("background prune failed: %s", type(exc).__name__)
            try:  # read counts that releases held back, a few at a time, once requests have paused
                more = self.store.flush_counts(COUNT_FLUSH_BATCH, quiet=COUNT_FLUSH_QUIET) == COUNT_FLUSH_BATCH
            except Exception as exc:
                log.error("writing read counts failed: %s", type(exc).__name__)
                more = False
            if not more:
                self.trimmer.tick(self.store.last_activity(), time.monotonic())
            nxt = self.expiring.next_at()
            nxt = now + 1.0 if nxt is None else nxt
            await trio.sleep(0.05 if more else max(0.05, min(1.0, nxt - now, self.prune_interval)))

    def init(self) -> None:
        """Called by pyfuse3 on the kernel's INIT, before its reply."""
        self.initialized = True

    def close(self) -> None:
        for fh, h in list(self.handles.items()):
            if isinstance(h, Handle):
                try:
                    h.inner.release()
                except Exception as exc:
                    log.error("closing a handle at unmount failed: %s", type(exc).__name__)
        self.handles.clear()
        self.open_by_ino.clear()


def _meta(inner: Any):
    return inner.of.ef.meta if hasattr(inner, "of") else inner.node.meta


def _num(value: float) -> bytes:
    return (str(int(value)) if float(value).is_integer() else f"{value:.3f}").encode()


def _parse_ttl(value: bytes) -> float:
    try:
        return check_ttl(float(value.strip().decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        raise pyfuse3.FUSEError(errno.EINVAL) from None
