"""Starting and stopping the mount: the daemon's whole life cycle.

``mount_command`` checks what it can in the caller's process, forks the
daemon, and returns only once the daemon reports the mount ready (or the
one-line reason it failed) through a pipe. The daemon opens the store,
mounts, and runs pyfuse3's loop beside the expiry task until the kernel
unmounts it or SIGTERM/SIGINT asks it to; then it closes every handle, drops
the volatile tier and releases the store.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import logging
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pyfuse3
import trio

from ..cli import exitcodes
from ..config import MountConfig, default_base, load_config, set_option
from ..errors import IntegrityError, KeyFileError, StoreInUseError, TailsError, WrongKeyError
from ..store.engine import Store
from .follow import ClientFollower, ThreadScheduler, may_leave_idle
from .killpriv import InitAmender
from .ops import TailsOperations
from .polling import RequestPoller
from .tuning import set_readahead
from .wakeprobe import cross_cpu_extra, worth_following

log = logging.getLogger(__name__)



class MountError(Exception):
    def __init__(self, message: str, code: int = exitcodes.FAILURE) -> None:
        super().__init__(message)
        self.code = code


def _fs_type(path: Path) -> str | None:
    """The type of the filesystem mounted at ``path`` (the top one), None if nothing is."""
    target, found = str(path.resolve()), None
    with open("/proc/mounts") as fh:
        for line in fh:
            fields = line.split()
            if len(fields) > 2 and fields[1] == target:
                found = fields[2]
    return found


def _is_mounted(path: Path) -> bool:
    return _fs_type(path) is not None


def _check_mountpoint(mp: Path) -> None:
    if not Path("/dev/fuse").exists():
        raise MountError("/dev/fuse is missing: install fuse3 and load the fuse module (modprobe fuse)")
    if mp.exists() and _is_mounted(mp):
        raise MountError(f"{mp} is already a mountpoint: unmount it first (tailsfs umount {mp})", exitcodes.IN_USE)
    if not mp.exists():
        mp.mkdir(parents=True)
    if not mp.is_dir():
        raise MountError(f"{mp} is not a directory", exitcodes.USAGE)
    if any(mp.iterdir()):
        raise MountError(f"{mp} is not empty: mount on an empty directory", exitcodes.USAGE)


def build_config(config: str | None, options: list[str], base: str | None) -> MountConfig:
    cfg = load_config(config)
    for group in options:
        for opt in filter(None, group.split(",")):
            name, _, value = opt.partition("=")
            if name in ("allow_other", "lock_memory") and not value:
                value = "yes"
            if name in ("rw", "defaults", "nofail", "_netdev", "auto", "noauto", "user", "nouser"):
                continue  # fstab generics
            set_option(cfg, name, value)
    if base:
        cfg.base = base
    if not cfg.base:
        cfg.base = str(default_base())
    cfg.validate()
    return cfg


def _harden_process(cfg: MountConfig) -> None:
    """No core dumps of a process holding keys; malloc tuned for 1 MiB requests; optional mlockall."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 0
    # Fresh 1 MiB buffers per request cost page faults: keep them on the heap.
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD
    if cfg.lock_memory:
        if libc.mlockall(1 | 2) != 0:  # MCL_CURRENT | MCL_FUTURE
            err = ctypes.get_errno()
            raise MountError(f"lock_memory: mlockall failed ({os.strerror(err)}); raise the memlock limit "
                             f"(ulimit -l unlimited / LimitMEMLOCK=infinity) or turn lock_memory off")


def _setup_logging(cfg: MountConfig, foreground: bool) -> None:
    level = getattr(logging, cfg.log_level.upper())
    handler: logging.Handler
    if cfg.log_file:
        handler = logging.FileHandler(cfg.log_file)
    elif foreground:
        handler = logging.StreamHandler(sys.stderr)
    else:
        handler = logging.FileHandler(Path(cfg.base) / "tailsfs.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _open_and_mount(mp: Path, cfg: MountConfig, passphrase: bytes | None, user_key: bytes | None,
                    test_faults: bool) -> tuple[Store, TailsOperations]:
    try:
        store = Store(cfg.base, passphrase=passphrase, user_key=user_key, config=cfg.store_config())
    except WrongKeyError as exc:
        raise MountError(f"{exc}", exitcodes.WRONG_KEY) from None
    except StoreInUseError as exc:
        raise MountError(f"{exc}: unmount it or close the program first", exitcodes.IN_USE) from None
    except IntegrityError as exc:
        raise MountError(f"{exc}; run 'tailsfs fsck --base {cfg.base}'", exitcodes.INTEGRITY) from None
    except (KeyFileError, TailsError, OSError, ValueError) as exc:
        raise MountError(str(exc)) from None
    ops = TailsOperations(store, mountpoint=str(mp), prune_interval=cfg.prune_interval,
                          allow_other=cfg.allow_other, test_faults=test_faults)
    opts = set(pyfuse3.default_options) - {"default_permissions"}
    opts |= {"fsname=tailsfs", "subtype=tailsfs", "noatime"}
    if cfg.allow_other:
        # Other users come in: the kernel checks modes and owners for them. Without allow_other
        # only the mounting user gets in at all (as with gocryptfs, which pairs the two the same
        # way), and sparing the checks spares a GETATTR of the parent on every create and unlink.
        opts |= {"allow_other", "default_permissions"}
    try:
        pyfuse3.init(ops, str(mp), opts)
    except RuntimeError as exc:
        store.close()
        raise MountError(f"mounting {mp} failed: {exc}") from None
    store.audit.log("mount", face="fuse")
    return store, ops


async def _tune_after_init(ops: TailsOperations) -> None:
    """Widen read-ahead once INIT is answered (the kernel clamps it to INIT's value)."""
    while not ops.initialized:
        await trio.sleep(0.01)
    set_readahead(ops.mountpoint)


def _frames(exc: BaseException) -> str:
    """Where ``exc`` (and each exception of a group) was raised: types and frames, never messages."""
    inner = exc.exceptions if isinstance(exc, BaseExceptionGroup) else ()
    lines = [f"{type(exc).__name__}:\n", *traceback.format_tb(exc.__traceback__)]
    return "".join(lines) + "".join(_frames(e) for e in inner)


def _follower(cfg: MountConfig) -> tuple[ClientFollower | None, float | None]:
    """The follower of the client's CPU, when asked for and worth it here (fuse/follow.py), and
    what the wake-up probe measured (fuse/wakeprobe.py; None when it did not run)."""
    if cfg.follow_client == "no" or cfg.poll_us <= 0:
        return None, None  # without the poller's hooks the follower would never go back to normal priority
    if not may_leave_idle():
        log.info("replies from the client's CPU are off: needs CAP_SYS_NICE or RLIMIT_NICE of 20")
        return None, None
    extra = None
    if cfg.follow_client == "auto":
        try:
            extra = cross_cpu_extra()
        except (OSError, RuntimeError) as exc:  # no pipe, thread or affinity: the mount must not fail over it
            log.info("wake-up probe failed (%s): replies from the client's CPU are off", type(exc).__name__)
            return None, None
        if not worth_following(extra):
            log.info("replies from the client's CPU are off: waking another CPU costs little here (%s)",
                     "one CPU" if extra is None else f"{extra * 1e6:.0f} µs per round trip")
            return None, extra
    return ClientFollower(ThreadScheduler()), extra


def _serve(store: Store, ops: TailsOperations, cfg: MountConfig) -> int:
    """Run until unmounted or signalled; always release the store."""
    async def main() -> None:
        async with trio.open_nursery() as nursery:
            def stop(*_args: object) -> None:
                pyfuse3.terminate()
            ops.on_emergency = stop
            trio_token = trio.lowlevel.current_trio_token()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, lambda *_a: trio_token.run_sync_soon(pyfuse3.terminate))
            nursery.start_soon(ops.expiry_loop)
            nursery.start_soon(_tune_after_init, ops)
            # One worker: every handler is synchronous, so a second one could never run beside
            # the first, and handing the read lock over between them cost time on every request.
            await pyfuse3.main(min_tasks=1, max_tasks=1)
            nursery.cancel_scope.cancel()

    # What exists now (modules, the opened store) lives as long as the mount: the collector
    # need not walk it again. A full collection walked about 31 000 such objects, 7-8 ms,
    # and a listing of a few thousand files made enough new objects to start one.
    gc.collect()
    gc.freeze()
    follower, ops.wake_probe = _follower(cfg)
    ops.follower = follower
    poller = RequestPoller(cfg.poll_us / 1e6)
    amender = InitAmender()
    ops.killpriv_v2 = lambda: amender.enabled
    if follower is not None:
        poller.on_request, poller.on_park = follower.arrived, follower.parked
    code = exitcodes.OK
    try:
        with poller.installed(), (amender.installed() if cfg.handle_killpriv else contextlib.nullcontext()):
            trio.run(main)
    except BaseException as exc:  # noqa: BLE001 - the store must be released whatever happened
        log.error("the FUSE loop stopped with %s\n%s", type(exc).__name__, _frames(exc))
        code = exitcodes.FAILURE
    finally:
        try:
            pyfuse3.close(unmount=True)
        except Exception:
            pass
        ops.close()
        if not store.closed:
            store.audit.log("unmount", face="fuse")
            store.close()
    return code


def mount_command(mountpoint: str, base: str | None, config: str | None, passphrase: bytes | None,
                  user_key: bytes | None, foreground: bool, options: list[str]) -> int:
    """``tailsfs mount``: returns once the mount is ready (or failed, with a one-line message)."""
    test_faults = os.environ.get("TAILSFS_TEST_FAULTS") == "1"
    try:
        cfg = build_config(config, options, base)
        mp = Path(mountpoint).absolute()
        _check_mountpoint(mp)
    except MountError as exc:
        print(f"tailsfs: {exc}", file=sys.stderr)
        return exc.code
    except (ValueError, FileNotFoundError) as exc:
        print(f"tailsfs: {exc}", file=sys.stderr)
        return exitcodes.USAGE
    if foreground:
        try:
            _harden_process(cfg)
            _setup_logging(cfg, True)
            store, ops = _open_and_mount(mp, cfg, passphrase, user_key, test_faults)
        except MountError as exc:
            print(f"tailsfs: {exc}", file=sys.stderr)
            return exc.code
        return _serve(store, ops, cfg)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the daemon
        os.close(read_fd)
        code = exitcodes.FAILURE
        try:
            os.setsid()
            _harden_process(cfg)
            Path(cfg.base).mkdir(parents=True, exist_ok=True, mode=0o700)
            _setup_logging(cfg, False)
            store, ops = _open_and_mount(mp, cfg, passphrase, user_key, test_faults)
            devnull = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(devnull, fd)
            os.write(write_fd, f"ok {os.getpid()}\n".encode())
            os.close(write_fd)
            code = _serve(store, ops, cfg)
        except MountError as exc:
            os.write(write_fd, f"{exc.code} {exc}\n".encode())
        except BaseException as exc:  # noqa: BLE001
            os.write(write_fd, f"{exitcodes.FAILURE} daemon failed to start: {type(exc).__name__}: {exc}\n".encode())
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd) as fh:
        line = fh.readline().strip()
    if line.startswith("ok"):
        return exitcodes.OK
    os.waitpid(pid, 0)
    code_text, _, message = line.partition(" ")
    print(f"tailsfs: {message or 'the daemon exited before mounting'}", file=sys.stderr)
    return int(code_text) if code_text.isdigit() else exitcodes.FAILURE


def _daemon_pid(mp: Path) -> int | None:
    from ..cli.client import ControlError, request
    try:
        return int(request(str(mp), {"cmd": "status"})["pid"])
    except (ControlError, KeyError, TypeError, ValueError):
        return None


def umount_command(mountpoint: str, timeout: float = 60.0) -> int:
    """``tailsfs umount``: flush, unmount, and wait for the daemon to exit."""
    mp = Path(mountpoint).absolute()
    if not mp.exists() or not _is_mounted(mp):
        print(f"tailsfs: {mp} is not mounted", file=sys.stderr)
        return exitcodes.NOT_MOUNTED
    if _fs_type(mp) != "fuse.tailsfs":
        print(f"tailsfs: {mp} is mounted but is not a tailsfs filesystem; check the mountpoint "
              f"(umount(8) unmounts other filesystems)", file=sys.stderr)
        return exitcodes.NOT_MOUNTED
    pid = _daemon_pid(mp)
    os.sync()
    result = subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True, text=True)
    if result.returncode != 0:
        msg = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "fusermount3 failed"
        print(f"tailsfs: cannot unmount {mp}: {msg} (is a program still using it?)", file=sys.stderr)
        return exitcodes.IN_USE if "busy" in msg.lower() else exitcodes.FAILURE
    if pid is not None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    break
            except ChildProcessError:
                pass
            time.sleep(0.05)
        else:
            print(f"tailsfs: unmounted, but the daemon (pid {pid}) did not exit within {timeout:.0f} s", file=sys.stderr)
            return exitcodes.FAILURE
    return exitcodes.OK
