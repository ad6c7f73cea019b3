"""The inode table: which store node each kernel inode number stands for.

Inodes are named by (parent inode, name); a node's store path is found by
walking parents up to its session, so renaming a directory is one update.
Lookup counts follow the kernel's: every entry returned by lookup, create,
mkdir, symlink or readdirplus adds one; FORGET subtracts.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pyfuse3

from ..store.tiers import MemoryTier

ROOT = pyfuse3.ROOT_INODE
TIER_INODES = {MemoryTier.VOLATILE: 2, MemoryTier.EPHEMERAL: 3, MemoryTier.PERSISTENT: 4, MemoryTier.ARCHIVE: 5}
CTL_INODE = 6
CTL_NAME = b".tailsfs.ctl"
FIRST_DYNAMIC = 16


@dataclass(eq=False, slots=True)  # slots: fewer objects per entry for the collector to walk
class Node:
    ino: int
    parent: int
    name: bytes
    tier: MemoryTier | None = None
    session: str | None = None  # set on session folders and everything below
    lookups: int = 0
    opens: int = 0
    unlinked: bool = False
    is_dir: bool = False
    # opened since the kernel looked this inode up: the kernel's page cache may hold its data,
    # dirty pages included (a forgotten inode loses its pages, and a new lookup makes a new Node)
    opened: bool = False
    children: set[int] = field(default_factory=set)


class InodeTable:
    def __init__(self) -> None:
        self.nodes: dict[int, Node] = {}
        self.by_name: dict[tuple[int, bytes], int] = {}
        # numbers of live entries the kernel forgot: a later lookup gets the same st_ino back
        self._forgotten: dict[tuple[int, bytes], tuple[int, bool]] = {}
        self._next = FIRST_DYNAMIC
        self.nodes[ROOT] = Node(ROOT, ROOT, b"", is_dir=True, lookups=1)
        for tier, ino in TIER_INODES.items():
            self._add(Node(ino, ROOT, tier.value.encode(), tier=tier, is_dir=True, lookups=1))
        self.nodes[CTL_INODE] = Node(CTL_INODE, ROOT, CTL_NAME, lookups=1)

    def _add(self, node: Node) -> Node:
        self.nodes[node.ino] = node
        self.by_name[(node.parent, node.name)] = node.ino
        parent = self.nodes.get(node.parent)
        if parent is not None:
            parent.children.add(node.ino)
        return node

    def get(self, ino: int) -> Node:
        return self.nodes[ino]

    def child(self, parent: Node, name: bytes, is_dir: bool) -> Node:
        """The node for ``name`` in ``parent``, made if new (no lookup counted)."""
        ino = self.by_name.get((parent.ino, name))
        if ino is not None:
            node = self.nodes[ino]
            if node.is_dir == is_dir:
                return node
            self.detach(node)
        session = parent.session if parent.session is not None else (name.decode("utf-8", "surrogateescape") if parent.tier is not None and parent.parent == ROOT else None)
        number, was_dir = self._forgotten.pop((parent.ino, name), (0, is_dir))
        if not number or was_dir != is_dir:
            number = self._next
            self._next += 1
        node = Node(number, parent.ino, name, tier=parent.tier, session=session, is_dir=is_dir)
        return self._add(node)

    def path(self, node: Node) -> tuple[bytes, ...]:
        """Store path of a node inside its session tree (() for the session folder)."""
        parts: list[bytes] = []
        while self.nodes[node.parent].session is not None:
            parts.append(node.name)
            node = self.nodes[node.parent]
        parts.reverse()
        return tuple(parts)

    def detach(self, node: Node) -> None:
        """The name is gone (unlink, rmdir, rename over, expiry); the inode lives until forgotten."""
        if self.by_name.get((node.parent, node.name)) == node.ino:
            del self.by_name[(node.parent, node.name)]
        self._forgotten.pop((node.parent, node.name), None)
        node.unlinked = True
        self._maybe_drop(node)

    def move(self, node: Node, new_parent: Node, new_name: bytes) -> None:
        if self.by_name.get((node.parent, node.name)) == node.ino:
            del self.by_name[(node.parent, node.name)]
        old_parent = self.nodes.get(node.parent)
        if old_parent is not None:
            old_parent.children.discard(node.ino)
        node.parent, node.name = new_parent.ino, new_name
        self._add(node)

    def forget(self, ino: int, count: int) -> None:
        node = self.nodes.get(ino)
        if node is None or ino < FIRST_DYNAMIC:
            return
        node.lookups = max(0, node.lookups - count)
        self._maybe_drop(node)

    def _maybe_drop(self, node: Node) -> None:
        if node.ino < FIRST_DYNAMIC or node.lookups > 0 or node.opens > 0:
            return
        if node.children and not node.unlinked:
            return
        if self.by_name.get((node.parent, node.name)) == node.ino:
            del self.by_name[(node.parent, node.name)]
            if not node.unlinked:
                self._forgotten[(node.parent, node.name)] = (node.ino, node.is_dir)
        parent = self.nodes.get(node.parent)
        if parent is not None:
            parent.children.discard(node.ino)
        del self.nodes[node.ino]
