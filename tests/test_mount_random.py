"""Random operations from 3 processes, each checked against an in-memory model."""
from __future__ import annotations

import errno
import multiprocessing as mp_
import os
import random
import time
import traceback

import hashlib

TIERS = ("persistent", "volatile", "archive")
OPS_PER_PROC = 300
MAX_IO = 256 * 1024


def _worker(root: str, wid: int, seed: int, conn) -> None:
    try:
        rnd = random.Random(seed)
        dirs = [os.path.join(root, t, f"rand{wid}") for t in TIERS]
        for d in dirs:
            os.mkdir(d)
        model: dict[str, bytearray] = {}
        fds: dict[str, int] = {}
        counter = 0
        log = []

        def check(path: str, fd: int, off: int, size: int) -> None:
            got = os.pread(fd, size, off)
            want = bytes(model[path][off:off + size])
            assert got == want, (f"worker {wid} seed {seed}: pread({path}, off={off}, size={size}) "
                                 f"returned {len(got)} bytes, expected {len(want)}; first diff at "
                                 f"{next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))}"
                                 f"; last ops: {log[-8:]}")

        def fd_of(path: str) -> int:
            if path not in fds:
                fds[path] = os.open(path, os.O_RDWR)
            return fds[path]

        for step in range(OPS_PER_PROC):
            op = rnd.choices(["create", "pwrite", "pread", "truncate", "rename", "unlink", "reopen"],
                             [3, 10, 8, 2, 2, 1, 2])[0]
            if not model or op == "create":
                d = rnd.choice(dirs)
                counter += 1
                path = os.path.join(d, f"f{counter}")
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                fds[path] = fd
                model[path] = bytearray()
                log.append(("create", path))
                continue
            path = rnd.choice(sorted(model))
            m = model[path]
            if op == "pwrite":
                off = rnd.randint(0, len(m) + 64 * 1024)
                size = rnd.randint(1, MAX_IO)
                data = rnd.randbytes(size)
                n = os.pwrite(fd_of(path), data, off)
                assert n == size, f"short write {n} != {size}"
                if off > len(m):
                    m.extend(bytes(off - len(m)))
                m[off:off + size] = data
                log.append(("pwrite", path, off, size))
            elif op == "pread":
                off = rnd.randint(0, len(m) + 1000)
                size = rnd.randint(1, MAX_IO)
                log.append(("pread", path, off, size))
                check(path, fd_of(path), off, size)
            elif op == "truncate":
                size = rnd.randint(0, len(m) + 100_000)
                os.ftruncate(fd_of(path), size)
                if size < len(m):
                    del m[size:]
                else:
                    m.extend(bytes(size - len(m)))
                log.append(("truncate", path, size))
                assert os.fstat(fd_of(path)).st_size == size
            elif op == "rename":
                counter += 1
                new = os.path.join(os.path.dirname(path), f"r{counter}")
                os.rename(path, new)
                model[new] = model.pop(path)
                if path in fds:
                    fds[new] = fds.pop(path)
                log.append(("rename", path, new))
                check(new, fd_of(new), 0, len(model[new]) + 1)
            elif op == "unlink":
                os.unlink(path)
                del model[path]
                fd = fds.pop(path, None)
                if fd is not None:
                    os.close(fd)
                log.append(("unlink", path))
                try:
                    os.open(path, os.O_RDONLY)
                except OSError as exc:
                    assert exc.errno == errno.ENOENT
                else:
                    raise AssertionError(f"{path} still opens after unlink")
            elif op == "reopen":
                fd = fds.pop(path, None)
                if fd is not None:
                    os.close(fd)
                log.append(("reopen", path))
                check(path, fd_of(path), 0, len(m) + 1)
        for fd in fds.values():
            os.close(fd)
        # final: every file's content equals its model, and nothing else is there
        for d in dirs:
            present = {os.path.join(d, n) for n in os.listdir(d)}
            assert present == {p for p in model if os.path.dirname(p) == d}, f"listing of {d} differs"
        for path, m in model.items():
            with open(path, "rb") as fh:
                got = fh.read()
            assert got == bytes(m), f"final content of {path}: {len(got)} bytes vs model {len(m)}"
            assert os.stat(path).st_size == len(m)
        conn.send(("ok", {p: hashlib.sha256(m).hexdigest() for p, m in model.items()}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def test_random_operations_three_processes(mount):
    m = mount()
    ctx = mp_.get_context("fork")
    seed0 = int(os.environ.get("TAILSFS_RANDOM_SEED", str(int(time.time()))))
    procs = []
    for wid in range(3):
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(str(m.mp), wid, seed0 + wid, child))
        p.start()
        child.close()
        procs.append((p, parent))
    results = []
    deadline = time.monotonic() + 60
    for p, conn in procs:
        left = max(0.1, deadline - time.monotonic())
        assert conn.poll(left), f"worker timed out (seed base {seed0})"
        results.append(conn.recv())
        p.join(10)
    errors = [r[1] for r in results if r[0] != "ok"]
    assert not errors, f"seed base {seed0}:\n" + "\n".join(errors) + f"\nlog:\n{m.log}"
    digests = {}
    for _, d in results:
        digests.update(d)
    assert digests, "no file left to compare"
    # the persistent and archive files survive a remount unchanged; volatile ones go
    m.remount()
    for path, digest in digests.items():
        tier = os.path.relpath(path, m.mp).split(os.sep)[0]
        if tier == "volatile":
            assert not os.path.exists(path)
        else:
            with open(path, "rb") as fh:
                assert hashlib.sha256(fh.read()).hexdigest() == digest, path
