"""Fixtures for the real-mount tests (mount a fresh store, always unmount it) and for driving the FUSE operations in-process."""
from __future__ import annotations

import errno
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tailsfs.fuse.inprocess import RequestContext, call
from tailsfs.fuse.ops import TailsOperations
from tailsfs.store.engine import Store

REPO = Path(__file__).resolve().parent.parent
CLI = REPO / ".venv" / "bin" / "tailsfs"
MOUNT_WAIT = 10.0


def load_script(file_name: str) -> types.ModuleType:
    """Import ``scripts/<file_name>`` (no .py suffix), once, so a test and the script share their code."""
    name = file_name.replace("-", "_")
    if name in sys.modules:
        return sys.modules[name]
    loader = importlib.machinery.SourceFileLoader(name, str(REPO / "scripts" / file_name))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    loader.exec_module(module)
    return module


def _cli_has_mount() -> bool:
    if not CLI.exists():
        return False
    try:
        return subprocess.run([str(CLI), "mount", "--help"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_CLI_MOUNT: bool | None = None


def cli_has_mount() -> bool:
    global _CLI_MOUNT
    if _CLI_MOUNT is None:
        _CLI_MOUNT = _cli_has_mount()
    return _CLI_MOUNT


def is_mounted(mp: Path) -> bool:
    target = str(Path(mp).resolve())
    with open("/proc/mounts") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 1 and parts[1] == target:
                return True
    return False


def mounts_under(root: Path) -> list[str]:
    """Mountpoints at ``root`` or below it."""
    with open("/proc/mounts") as fh:
        points = [line.split()[1] for line in fh if len(line.split()) > 1]
    return [p for p in points if p == str(root) or p.startswith(str(root) + "/")]


def ctl_request(mp: Path, request: dict) -> dict:
    """Write a JSON request to the control file and read the JSON answer back."""
    fd = os.open(Path(mp) / ".tailsfs.ctl", os.O_RDWR)
    try:
        os.write(fd, json.dumps(request).encode())
        data = b""
        while True:
            chunk = os.pread(fd, 65536, len(data))
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    return json.loads(data)


def status_field(pid: int, name: str) -> str:
    """A field of /proc/PID/status, as written there (e.g. "123 kB")."""
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    raise AssertionError(f"/proc/{pid}/status has no {name}")


def daemon_pid(mp: Path) -> int | None:
    try:
        return int(ctl_request(mp, {"cmd": "status"})["pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as fh:
            if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                try:
                    os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    pass
                return False
    except OSError:
        return False
    return True


def scan_for_marker(base: Path, marker: bytes) -> list[str]:
    """Every regular file under ``base`` whose bytes contain ``marker`` (chunked, overlap-safe)."""
    hits = []
    overlap = len(marker) - 1
    for root, _dirs, files in os.walk(base):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as fh:
                    tail = b""
                    while True:
                        chunk = fh.read(1 << 20)
                        if not chunk:
                            break
                        if marker in tail + chunk:
                            hits.append(path)
                            break
                        tail = chunk[-overlap:] if overlap else b""
            except OSError:
                continue
    return hits


class Mount:
    def __init__(self, base: Path, mp: Path, options: list[str], env: dict[str, str]) -> None:
        self.base = base
        self.mp = mp
        self.options = list(options)
        self.env = dict(env)
        self.pids: list[int] = []
        self.mounted = False

    @property
    def log(self) -> str:
        p = self.base / "tailsfs.log"
        return p.read_text(errors="replace") if p.exists() else "(no tailsfs.log)"

    def _mount_cmd(self) -> list[str]:
        if cli_has_mount():
            cmd = [str(CLI), "mount", "--base", str(self.base)]
            for o in self.options:
                cmd += ["-o", o]
            return cmd + [str(self.mp)]
        code = ("import sys; from tailsfs.fuse.mount import mount_command; "
                f"sys.exit(mount_command({str(self.mp)!r}, {str(self.base)!r}, None, None, None, False, "
                f"{self.options!r}))")
        return [sys.executable, "-c", code]

    def mount(self) -> None:
        env = dict(os.environ)
        env.update(self.env)
        env["TAILSFS_BASE"] = str(self.base)
        proc = subprocess.run(self._mount_cmd(), capture_output=True, text=True, env=env, cwd=str(REPO),
                              stdin=subprocess.DEVNULL, timeout=60)
        assert proc.returncode == 0, f"mount failed rc={proc.returncode}: {proc.stderr}\nlog:\n{self.log}"
        deadline = time.monotonic() + MOUNT_WAIT
        while not is_mounted(self.mp):
            assert time.monotonic() < deadline, f"{self.mp} not in /proc/mounts after {MOUNT_WAIT}s"
            time.sleep(0.05)
        self.mounted = True
        pid = daemon_pid(self.mp)
        assert pid is not None and pid > 0, "status request on the control file gave no pid"
        self.pids.append(pid)

    def umount(self) -> None:
        if not is_mounted(self.mp):
            self.mounted = False
            return
        pid = daemon_pid(self.mp)
        if pid is not None and pid not in self.pids:
            self.pids.append(pid)
        ok = False
        if cli_has_mount():
            r = subprocess.run([str(CLI), "umount", str(self.mp)], capture_output=True, text=True,
                               stdin=subprocess.DEVNULL, timeout=90)
            ok = r.returncode == 0
        else:
            from tailsfs.fuse.mount import umount_command
            ok = umount_command(str(self.mp), timeout=30.0) == 0
        if not ok or is_mounted(self.mp):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], capture_output=True)
        self.mounted = False
        deadline = time.monotonic() + 30
        for p in self.pids:
            while pid_alive(p) and time.monotonic() < deadline:
                time.sleep(0.05)
        assert not is_mounted(self.mp), f"{self.mp} still mounted"
        assert ok, f"clean unmount failed (needed fusermount3 -u -z)\nlog:\n{self.log}"

    def umount_or_detach(self) -> None:
        """Unmount; if that fails, detach lazily so no test leaves a mount behind, then re-raise."""
        try:
            self.umount()
        finally:
            if is_mounted(self.mp):
                subprocess.run(["fusermount3", "-u", "-z", str(self.mp)], capture_output=True)

    def remount(self) -> None:
        self.umount()
        self.mount()

    def daemons_gone(self) -> list[int]:
        return [p for p in self.pids if pid_alive(p)]


def _fuse_available() -> None:
    if not os.path.exists("/dev/fuse"):
        msg = "/dev/fuse is missing"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)


@pytest.fixture
def mount(tmp_path):
    """Factory: ``m = mount(options=[...], env={...})`` mounts a fresh store and returns a Mount."""
    _fuse_available()
    made: list[Mount] = []

    def factory(options: list[str] | tuple[str, ...] = (), env: dict[str, str] | None = None) -> Mount:
        n = len(made)
        base = tmp_path / f"base{n}"
        mp = tmp_path / f"mnt{n}"
        base.mkdir(mode=0o700)
        mp.mkdir()
        m = Mount(base, mp, list(options), env or {})
        made.append(m)
        m.mount()
        return m

    yield factory
    errors = unmount_all(made)
    assert not errors, "; ".join(errors)


def unmount_all(mounts: list[Mount]) -> list[str]:
    """Unmount every mount (lazily as a last resort); the problems found, for one assertion."""
    errors = []
    for m in mounts:
        try:
            m.umount_or_detach()
        except AssertionError as exc:
            errors.append(str(exc))
        alive = m.daemons_gone()
        if alive:
            errors.append(f"daemon(s) {alive} still running after unmount")
    return errors


@pytest.fixture(scope="module")
def shared_mount(tmp_path_factory):
    """One default mount shared by a module's tests (each test uses its own session)."""
    _fuse_available()
    tmp = tmp_path_factory.mktemp("shared")
    base, mp = tmp / "base", tmp / "mnt"
    base.mkdir(mode=0o700)
    mp.mkdir()
    m = Mount(base, mp, [], {})
    try:
        m.mount()
        yield m
    finally:
        m.umount_or_detach()
        assert not m.daemons_gone(), f"daemon(s) {m.daemons_gone()} still running after unmount"


def session(m: Mount, tier: str, name: str = "s1") -> Path:
    """Make (if needed) a session folder in a tier and return its path."""
    p = m.mp / tier / name
    try:
        os.mkdir(p)
    except FileExistsError:
        pass
    return p


def wait_until(cond: Callable[[], bool], seconds: float = 30.0, interval: float = 0.05) -> bool:
    """Poll ``cond``; True once it holds. Only a guard against hanging, never a timing assertion."""
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


def drop_caches() -> None:
    """Empty the kernel's page, dentry and inode caches, so reads and lookups reach the daemon again."""
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3")
    except OSError as exc:
        pytest.fail(f"these tests need to drop the kernel's caches (run as root): {exc}")


def expect_errno(code: int, fn, *args, **kwargs) -> OSError:
    with pytest.raises(OSError) as info:
        fn(*args, **kwargs)
    assert info.value.errno == code, f"expected {errno.errorcode[code]}, got {info.value!r}"
    return info.value


# -- the FUSE operations driven in-process ------------------------------------------------------------
OpContext = RequestContext
run_op = call


@pytest.fixture
def ops(tmp_path: Path) -> Iterator[TailsOperations]:
    """The FUSE operations on a real store, driven in-process: the kernel's FORGETs become explicit."""
    store = Store(tmp_path / "store")
    operations = TailsOperations(store)
    try:
        yield operations
    finally:
        operations.close()
        store.close()
