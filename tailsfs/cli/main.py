"""tailsfs: administer encrypted tailsfs stores, mounted or not.

Every command that works on a store takes either a MOUNTPOINT (the mounted
store's daemon does the work) or ``--base DIR`` (the store is opened here; it
must not be mounted). Secrets never come from the command line: use
``--passphrase-file FILE``, ``$TAILSFS_PASSPHRASE``, the no-echo prompt, or
``--key-file FILE``.

Failures print one line on stderr, ``tailsfs: <cause>; <fix>`` (``--debug``
shows the traceback), and exit with the code of their class:

    code  name          meaning
    0     OK            success (fsck: no problem found; audit verify: trail intact)
    1     FAILURE       any other failure (I/O error, bad key file permissions, mount failed, ...)
    2     USAGE         bad command line, bad option value, missing confirmation
    3     WRONG_KEY     wrong passphrase or key, or none given for a protected store
    4     INTEGRITY     an integrity problem was found (fsck, audit verify, tampered data)
    5     IN_USE        the store is held by another process (mounted, or open in a program)
    6     NOT_MOUNTED   the MOUNTPOINT given is not a mounted tailsfs
    7     NOT_FOUND     no store at the path / a store already exists there (init) / no such session

(The same table is in tailsfs/cli/exitcodes.py, which scripts can import.)
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, NoReturn

from . import exitcodes, secrets
from .client import ControlError, is_tailsfs_mount, request as control_request

PROG = "tailsfs"


# -- output helpers --------------------------------------------------------------------------------
def _say_error(message: str) -> None:
    print(f"{PROG}: {' '.join(message.split())}", file=sys.stderr)


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def _local_time(value: Any) -> str:
    """An ISO string or epoch seconds shown in local time, for people; '-' for none."""
    if value is None:
        return "-"
    try:
        if isinstance(value, (int, float)):
            when = _dt.datetime.fromtimestamp(float(value), _dt.timezone.utc)
        else:
            when = _dt.datetime.fromisoformat(str(value))
    except (ValueError, OverflowError, OSError):
        return str(value)
    return when.astimezone().isoformat(timespec="seconds")


def _print_json(doc: Any) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True, default=str))


class Progress:
    """A plain-text progress line on stderr, only when stderr is a terminal (logs stay clean)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.active = sys.stderr.isatty()
        self.shown = False

    def update(self, done: int, total: int | None = None) -> None:
        if not self.active:
            return
        if total:
            width = 30
            filled = int(width * done / total)
            text = f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        else:
            text = f"\r{self.label}: {done}"
        sys.stderr.write(text)
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self.shown = False


# -- failures -------------------------------------------------------------------------------------------
class CliError(Exception):
    """A failure with its control kind; main() prints it and exits with the kind's code."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2 like every other failure."""

    def error(self, message: str) -> NoReturn:
        _say_error(f"{message}; see '{self.prog} --help'")
        sys.exit(exitcodes.USAGE)


# -- stores and targets -------------------------------------------------------------------------------
def _base_path(args: argparse.Namespace) -> Path:
    from ..config import default_base
    return Path(args.base).expanduser().absolute() if getattr(args, "base", None) else default_base().absolute()


def _secrets_for(base: Path, args: argparse.Namespace) -> tuple[bytes | None, bytes | None]:
    """(passphrase, key) for opening the store at ``base``, asked for only if its key file wants one."""
    from ..crypto.keyfile import protection_kind
    key_file = getattr(args, "key_file", None)
    pw_file = getattr(args, "passphrase_file", None)
    if key_file:
        return None, secrets.read_key_file(key_file)
    try:
        kind = protection_kind((base / ".memory_key").read_bytes())
    except OSError:
        kind = "unknown"  # let the engine report it
    if kind == "passphrase":
        return secrets.passphrase(pw_file, required=True), None
    if kind == "key":
        raise CliError("this store is protected by a key; give --key-file FILE", "wrong_key")
    if pw_file:  # explicit: let the engine say it is not needed
        return secrets.passphrase_from_file(pw_file), None
    return None, None


def open_store(args: argparse.Namespace, base: Path | None = None):
    """Open the store at --base (or the default) with the secrets the command line provides."""
    from ..store.engine import Store, store_exists
    base = base or _base_path(args)
    if not store_exists(base):
        raise CliError(f"no tailsfs store at {base}; create one with 'tailsfs init --base {base}' "
                       f"or give the right --base", "not_found")
    passphrase, user_key = _secrets_for(base, args)
    store = Store(base, passphrase=passphrase, user_key=user_key, create=False)
    store._cli_secret = (passphrase, user_key)  # type: ignore[attr-defined]  # rekey re-wraps with it
    return store


class Target:
    """Where a command runs: a mounted store's daemon, or a store opened here from --base."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.mountpoint: str | None = getattr(args, "mountpoint", None)
        if self.mountpoint and getattr(args, "base", None):
            raise CliError("give a MOUNTPOINT or --base DIR, not both; a mounted store is reached through its "
                           "MOUNTPOINT, an unmounted one through --base", "usage")
        self.store = None

    def __enter__(self) -> "Target":
        if self.mountpoint is None:
            self.store = open_store(self.args)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.store is not None and not self.store.closed:
            self.store.close()

    @property
    def where(self) -> str:
        return self.mountpoint or str(self.store.base if self.store is not None else _base_path(self.args))

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        if self.mountpoint is not None:
            return control_request(self.mountpoint, req)
        from .. import control
        answer = control.execute(self.store, req)
        if "error" in answer:
            raise CliError(answer["error"], answer.get("kind", "other"))
        return answer


def _confirm(word: str, what: str, yes: bool) -> None:
    """Destructive commands ask the user to type a word; --yes is for scripts."""
    if yes:
        return
    if not secrets.is_interactive():
        raise CliError(f"{what} needs confirmation; add --yes (stdin is not a terminal)", "usage")
    try:
        typed = input(f"This will {what}. Type {word!r} to confirm: ")
    except EOFError:
        typed = ""
    if typed.strip() != word:
        raise CliError(f"not confirmed (expected {word!r}); nothing was changed", "usage")


def _argon2_params(args: argparse.Namespace):
    from ..crypto.kdf import Argon2Params
    defaults = Argon2Params()
    params = Argon2Params(
        iterations=args.argon2_iterations if args.argon2_iterations is not None else defaults.iterations,
        lanes=args.argon2_lanes if args.argon2_lanes is not None else defaults.lanes,
        memory_kib=args.argon2_memory_kib if args.argon2_memory_kib is not None else defaults.memory_kib)
    params.check()
    return params


def _describe_params(p: Any) -> str:
    return f"Argon2id, memory {p.memory_kib} KiB, {p.iterations} passes, {p.lanes} lanes"


# -- commands -----------------------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from ..crypto.keyfile import Protection
    from ..store.engine import init_store, store_exists
    base = _base_path(args)
    if store_exists(base):
        raise CliError(f"a tailsfs store already exists at {base}; choose another --base "
                       f"(init never overwrites a store)", "not_found")
    if args.key_file:
        protection = Protection(user_key=secrets.read_key_file(args.key_file))
        note = "master key wrapped under the key from " + args.key_file
    elif args.passphrase_file or os.environ.get(secrets.PASSPHRASE_ENV) or args.ask_passphrase:
        if args.ask_passphrase and not args.passphrase_file:
            pw = secrets.new_passphrase(None, env=secrets.PASSPHRASE_ENV)
        else:
            pw = secrets.passphrase(args.passphrase_file, required=True)
        params = _argon2_params(args)
        protection = Protection(passphrase=pw, params=params)
        note = f"master key wrapped under your passphrase ({_describe_params(params)})"
    else:
        protection = Protection()
        note = "master key stored unprotected in the key file (mode 0600); protect it later with 'tailsfs passwd'"
    init_store(base, protection)
    print(f"created a tailsfs store at {base}")
    print(note)
    return exitcodes.OK


def _mount_secrets(args: argparse.Namespace) -> tuple[bytes | None, bytes | None]:
    from ..config import load_config, set_option
    base = args.base
    if not base:
        try:
            cfg = load_config(args.config)
            for opt in args.options:
                name, sep, value = opt.partition("=")
                if name == "base" and sep:
                    set_option(cfg, name, value)
            base = cfg.base or None
        except (OSError, ValueError):
            base = None  # mount_command reports a bad config itself
    path = Path(base).expanduser().absolute() if base else _base_path(args)
    if not (path / ".memory_key").exists():
        if args.key_file:
            return None, secrets.read_key_file(args.key_file)
        return secrets.passphrase(args.passphrase_file, required=False), None
    return _secrets_for(path, args)


def cmd_mount(args: argparse.Namespace) -> int:
    try:
        from ..fuse.mount import mount_command
    except ImportError as exc:
        raise CliError(f"FUSE mounting is not available ({exc}); install pyfuse3 and fuse3", "other") from None
    options = [o.strip() for group in args.options for o in group.split(",") if o.strip()]
    args.options = options
    passphrase, user_key = _mount_secrets(args)
    return mount_command(args.mountpoint, args.base, args.config, passphrase, user_key, args.foreground, options)


def cmd_umount(args: argparse.Namespace) -> int:
    try:
        from ..fuse.mount import umount_command
    except ImportError as exc:
        raise CliError(f"FUSE mounting is not available ({exc}); install pyfuse3 and fuse3", "other") from None
    return umount_command(args.mountpoint)


def _tailsfs_mounts() -> list[str]:
    """Mountpoints of tailsfs filesystems, from the kernel's mount table."""
    out = []
    try:
        with open("/proc/self/mounts", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                fields = line.split()
                if len(fields) >= 3 and "tailsfs" in (fields[0] + fields[2]):
                    mp = fields[1].replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")
                    if is_tailsfs_mount(mp):
                        out.append(mp)
    except OSError:
        pass
    return out


def _print_status(doc: dict[str, Any], where: str) -> None:
    print(f"store          {doc.get('store', where)}")
    if "mountpoint" in doc or where != doc.get("store"):
        print(f"mounted at     {doc.get('mountpoint', where)}")
    if "protection" in doc:
        print(f"protection     {doc['protection']}")
    print(f"sessions       {doc.get('sessions', 0)}"
          + (f" ({doc['damaged_sessions']} damaged: run tailsfs fsck)" if doc.get("damaged_sessions") else ""))
    print(f"{'tier':<14} {'memories':>9} {'bytes':>12}")
    for tier, t in doc.get("tiers", {}).items():
        print(f"{tier:<14} {t.get('files', 0):>9} {human_bytes(t.get('bytes', 0)):>12}")
    vol = doc.get("volatile", {})
    print(f"volatile use   {human_bytes(vol.get('used'))} of {human_bytes(vol.get('cap'))}")
    print(f"next expiry    {_local_time(doc.get('next_expiry')) if doc.get('next_expiry') else 'none'}")


def cmd_status(args: argparse.Namespace) -> int:
    if args.mountpoint is None and not args.base and not os.environ.get("TAILSFS_BASE"):
        mounts = _tailsfs_mounts()  # no store named at all: show every mounted one
        if mounts:
            docs = {mp: control_request(mp, {"cmd": "status"}) for mp in mounts}
            if args.json:
                _print_json(docs)
            else:
                for i, (mp, doc) in enumerate(docs.items()):
                    if i:
                        print()
                    _print_status(doc, mp)
            return exitcodes.OK
    with Target(args) as target:
        doc = target.run({"cmd": "status"})
    if args.json:
        _print_json(doc)
    else:
        _print_status(doc, target.where)
    return exitcodes.OK


def _print_stats(doc: dict[str, Any], session: str | None) -> None:
    tiers = doc.get("tiers", {})
    if session is not None:
        print(f"session        {session}")
        print(f"memories       {doc.get('memory_count', 0)} ({human_bytes(doc.get('bytes', 0))})")
        print(f"last activity  {_local_time(doc.get('last_activity'))}")
        print(f"{'tier':<14} {'memories':>9}")
        for tier, n in doc.get("tiers", {}).items():
            print(f"{tier:<14} {n:>9}")
    else:
        print(f"sessions       {doc.get('total_sessions', 0)}")
        print(f"{'tier':<14} {'memories':>9} {'bytes':>12}")
        for tier, t in tiers.items():
            print(f"{tier:<14} {t.get('count', 0):>9} {human_bytes(t.get('bytes', 0)):>12}")
        sessions = doc.get("sessions", {})
        if sessions:
            print()
            print(f"{'session':<24} {'memories':>9} {'bytes':>12}  {'vol':>4} {'eph':>4} {'per':>4} {'arc':>4}  last activity")
            for name, s in sorted(sessions.items()):
                t = s.get("tiers", {})
                print(f"{name[:24]:<24} {s.get('memory_count', 0):>9} {human_bytes(s.get('bytes', 0)):>12}  "
                      f"{t.get('volatile', 0):>4} {t.get('ephemeral', 0):>4} {t.get('persistent', 0):>4} "
                      f"{t.get('archive', 0):>4}  {_local_time(s.get('last_activity'))}")
        print(f"volatile use   {human_bytes(doc.get('volatile_bytes_used'))} of {human_bytes(doc.get('volatile_max_bytes'))}")
        print(f"next expiry    {_local_time(doc.get('next_expiry')) if doc.get('next_expiry') else 'none'}")
    counts = doc.get("stats", {})
    if counts:
        print("activity       " + ", ".join(f"{k.removeprefix('total_').replace('_', ' ')} {v}"
                                           for k, v in counts.items()))


def cmd_stats(args: argparse.Namespace) -> int:
    req: dict[str, Any] = {"cmd": "stats"}
    if args.session:
        req["session"] = args.session
    with Target(args) as target:
        doc = target.run(req)
    if args.json:
        _print_json(doc)
    else:
        _print_stats(doc, args.session)
    return exitcodes.OK


def cmd_audit_show(args: argparse.Namespace) -> int:
    req = {"cmd": "audit_show", "session": args.session, "since": args.since, "event": args.event}
    with Target(args) as target:
        doc = target.run(req)
    entries = doc.get("entries", [])
    if args.json:
        _print_json(entries)
        return exitcodes.OK
    for e in entries:
        details = e.get("details") or {}
        text = " ".join(f"{k}={v}" for k, v in details.items())
        print(f"{e.get('seq', ''):>6}  {_local_time(e.get('timestamp'))}  {e.get('event', ''):<16}  {text}".rstrip())
    if not entries and sys.stderr.isatty():
        print("no matching audit entries", file=sys.stderr)
    return exitcodes.OK


def cmd_audit_verify(args: argparse.Namespace) -> int:
    with Target(args) as target:
        doc = target.run({"cmd": "audit_verify"})
    if args.json:
        _print_json(doc)
    if doc.get("ok"):
        if not args.json:
            print(doc.get("message") or f"audit trail intact: {doc.get('count')} entries verified")
        return exitcodes.OK
    raise CliError(f"{doc.get('message')}; the trail was altered outside tailsfs: keep a copy of the store's "
                   f"audit/ folder for investigation", "integrity")


def cmd_prune(args: argparse.Namespace) -> int:
    with Target(args) as target:
        doc = target.run({"cmd": "prune"})
    print(f"pruned {doc.get('count', 0)} expired memories")
    return exitcodes.OK


def cmd_wipe(args: argparse.Namespace) -> int:
    if args.emergency and not getattr(args, "mountpoint", None):
        return _wipe_emergency_unmounted(args)
    with Target(args) as target:
        if args.session is not None:
            target.run({"cmd": "stats", "session": args.session})  # unknown session: fail before asking
            _confirm(args.session, f"erase every memory of session {args.session!r} in {target.where}", args.yes)
            doc = target.run({"cmd": "wipe_session", "session": args.session})
            print(f"session {args.session!r} wiped: {doc.get('count', 0)} memories erased; its key was destroyed "
                  f"first, so its data became unrecoverable at once")
            return exitcodes.OK
        _confirm("destroy", f"DESTROY the whole store at {target.where} (every session, the key, the audit trail)",
                 args.yes)
        doc = target.run({"cmd": "emergency_wipe"})
    print(f"master key destroyed: every memory became unrecoverable at {_local_time(doc.get('unrecoverable_at'))}")
    print(f"{doc.get('count', 0)} files erased from {target.where}")
    return exitcodes.OK


def _wipe_emergency_unmounted(args: argparse.Namespace) -> int:
    """An unmounted store is destroyed without its passphrase: an emergency must not wait for one."""
    from ..store.engine import wipe_closed_store
    base = _base_path(args)
    _confirm("destroy", f"DESTROY the whole store at {base} (every session, the key, the audit trail)", args.yes)
    when: list[float] = []
    try:
        count = wipe_closed_store(base, on_progress=lambda _msg: when.append(time.time()))
    except FileNotFoundError:
        raise CliError(f"no tailsfs store at {base}; give the right --base (stores are made by 'tailsfs init')",
                       "not_found") from None
    print(f"master key destroyed: every memory became unrecoverable at {_local_time(when[0] if when else time.time())}")
    print(f"{count} files erased from {base}")
    return exitcodes.OK


def cmd_passwd(args: argparse.Namespace) -> int:
    from ..crypto.keyfile import Protection
    store = open_store(args)
    try:
        if args.new_key_file:
            protection = Protection(user_key=secrets.read_key_file(args.new_key_file))
            note = f"the store is now protected by the key from {args.new_key_file}"
        elif args.remove_passphrase:
            protection = Protection()
            note = "passphrase removed: the master key is now stored unprotected (mode 0600)"
        else:
            params = _argon2_params(args)
            pw = secrets.new_passphrase(args.new_passphrase_file)
            protection = Protection(passphrase=pw, params=params)
            note = f"passphrase set ({_describe_params(params)})"
        before = store.protection()
        store.change_protection(protection)
    finally:
        store.close()
    print(f"{note} (was: {before}); the data was not re-encrypted, only the master key re-wrapped")
    return exitcodes.OK


def cmd_rekey(args: argparse.Namespace) -> int:
    from ..crypto.keyfile import Protection
    store = open_store(args)
    progress = Progress("rekey: re-wrapping session keys")
    try:
        passphrase, _user_key = store._cli_secret
        protection = None  # the store keeps the current protection and its Argon2 cost
        if passphrase is not None and any(
                v is not None for v in (args.argon2_memory_kib, args.argon2_iterations, args.argon2_lanes)):
            protection = Protection(passphrase=passphrase, params=_argon2_params(args))
        sessions = len(store.sessions)
        store.rekey(protection, on_progress=progress.update)
    finally:
        progress.done()
        store.close()
    print(f"new master key in place: {sessions} session keys, the audit key and the TTL index re-wrapped")
    return exitcodes.OK


def cmd_fsck(args: argparse.Namespace) -> int:
    from .. import control
    store = open_store(args)
    progress = Progress("fsck: memories checked")
    try:
        report = control.fsck(store, repair=args.repair, progress=progress.update)
    finally:
        progress.done()
        store.close()
    if args.json:
        _print_json(report)
    else:
        for p in report["problems"]:
            where = []
            if p.get("session") is not None:
                where.append(f"session {p['session']!r}")
            if p.get("tier"):
                where.append(f"{p['tier']} tier")
            subject = f"{p['what']} {p['memory']!r}" if p.get("memory") else p["what"]
            line = f"{', '.join(where + [subject])}: {p['problem']}"
            if p.get("moved_to"):
                line += f" -> moved to {p['moved_to']}"
            elif p.get("host"):
                line += f" [{p['host']}]"
            print(f"PROBLEM  {line}")
        for note in report["notes"]:
            print(f"note     {note}")
        print(f"checked {report['checked']} memories in {report['sessions']} sessions, "
              f"{report['audit_entries']} audit entries; {len(report['problems'])} problems"
              + (f", {report['repaired']} moved aside to {store.base / control.LOST_AND_FOUND}" if args.repair else ""))
    if report["problems"]:
        fixed = report["repaired"]
        total = len(report["problems"])
        fix = ("the damaged items were moved aside; run fsck again to confirm" if args.repair and fixed == total
               else "run 'tailsfs fsck --base DIR --repair' to move damaged memories aside")
        raise CliError(f"fsck found {total} integrity problem{'s' if total != 1 else ''}; {fix}", "integrity")
    return exitcodes.OK


# -- the parser -----------------------------------------------------------------------------------------------
def _formatter(prog: str) -> argparse.HelpFormatter:
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def build_parser() -> Parser:
    from .. import __version__
    parser = Parser(prog=PROG, formatter_class=_formatter,
                    description="Administer tailsfs stores: encrypted, tiered, session-isolated memories.",
                    epilog="exit codes:\n" + exitcodes.TABLE + "\n\nexample:\n  tailsfs init --base ~/tails\n"
                           "  tailsfs stats --base ~/tails\n\n'tailsfs COMMAND --help' shows each command.")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    parser.add_argument("--debug", action="store_true", default=False, help="show tracebacks and debug logs")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks and debug logs")
    keys = argparse.ArgumentParser(add_help=False)
    kg = keys.add_mutually_exclusive_group()
    kg.add_argument("--passphrase-file", metavar="FILE",
                    help="read the passphrase from FILE (else $TAILSFS_PASSPHRASE, else a prompt)")
    kg.add_argument("--key-file", metavar="FILE", help="read the key (32 bytes, or a Fernet key) from FILE")
    base_only = argparse.ArgumentParser(add_help=False)
    base_only.add_argument("--base", metavar="DIR", help="the store's directory (default: $TAILSFS_BASE or "
                                                         "~/.local/share/tailsfs)")
    target = argparse.ArgumentParser(add_help=False)
    target.add_argument("mountpoint", nargs="?", metavar="MOUNTPOINT", help="a mounted tailsfs")
    target.add_argument("--base", metavar="DIR", help="an unmounted store's directory instead of a MOUNTPOINT")
    argon = argparse.ArgumentParser(add_help=False)
    argon.add_argument("--argon2-memory-kib", type=int, metavar="KIB",
                       help="Argon2id memory cost in KiB (default 65536, minimum 19456)")
    argon.add_argument("--argon2-iterations", type=int, metavar="N", help="Argon2id passes (default 3, minimum 2)")
    argon.add_argument("--argon2-lanes", type=int, metavar="N", help="Argon2id lanes (default 4)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for scripts instead of a table")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, func: Callable[[argparse.Namespace], int], help_: str, example: str,
            parents: list[argparse.ArgumentParser]) -> Parser:
        p = sub.add_parser(name, help=help_, description=help_, parents=[common, *parents],
                           formatter_class=_formatter, epilog="example:\n  " + example)
        p.set_defaults(func=func)
        return p

    p = add("init", cmd_init, "create a new store with a random master key (never overwrites one)",
            "tailsfs init --base ~/tails --passphrase-file ~/.tails-pass",
            [base_only, keys, argon])
    p.add_argument("--ask-passphrase", action="store_true",
                   help="protect the master key with a passphrase typed (twice) at the terminal")

    p = add("mount", cmd_mount, "mount a store at MOUNTPOINT (a daemon serves it until 'tailsfs umount')",
            "tailsfs mount /mnt/tails --base ~/tails -o ephemeral_ttl=3600,allow_other", [keys])
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--base", metavar="DIR", help="the store's directory (default: the config's base, "
                                                 "$TAILSFS_BASE or ~/.local/share/tailsfs)")
    p.add_argument("--config", metavar="FILE", help="INI file with a [tailsfs] section (see mount.example.conf)")
    p.add_argument("--foreground", action="store_true", help="serve in this process (for systemd)")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT]",
                   help="mount options, name=value (any config field)")

    p = add("umount", cmd_umount, "unmount a tailsfs and wait for its daemon to finish",
            "tailsfs umount /mnt/tails", [])
    p.add_argument("mountpoint", metavar="MOUNTPOINT")

    p = add("status", cmd_status, "where a store is and how full each tier is (every mounted tailsfs if no "
                                  "MOUNTPOINT or --base)", "tailsfs status /mnt/tails", [target, keys, as_json])

    p = add("stats", cmd_stats, "memory counts, sizes and activity per tier and per session",
            "tailsfs stats /mnt/tails --session run_001 --json", [target, keys, as_json])
    p.add_argument("--session", metavar="NAME", help="only this session")

    p = add("audit", lambda a: _missing_sub(a, "audit"), "show or verify the tamper-evident audit trail",
            "tailsfs audit verify --base ~/tails", [])
    asub = p.add_subparsers(dest="audit_command", metavar="SUBCOMMAND")
    pa = asub.add_parser("show", help="list audit entries (decrypted)", description="list audit entries (decrypted)",
                         parents=[common, target, keys, as_json], formatter_class=_formatter,
                         epilog="example:\n  tailsfs audit show --base ~/tails --session run_001 --since 2024-05-01 "
                                "--event memory_write")
    pa.set_defaults(func=cmd_audit_show)
    pa.add_argument("--session", metavar="NAME", help="only entries about this session")
    pa.add_argument("--since", metavar="WHEN", help="ISO date/time (local unless it has a zone) or a span: 30m, 2h, 7d")
    pa.add_argument("--event", metavar="EVENT[,EVENT]", help="only these events (e.g. memory_write,session_clear)")
    pv = asub.add_parser("verify", help="check the audit chain; exit 4 naming the first bad entry",
                         description="check every entry's MAC and sequence, and the checkpoint; exit 0 and "
                                     "the count when intact, 4 naming the first bad entry otherwise",
                         parents=[common, target, keys, as_json], formatter_class=_formatter,
                         epilog="example:\n  tailsfs audit verify /mnt/tails")
    pv.set_defaults(func=cmd_audit_verify)

    add("prune", cmd_prune, "erase every expired memory now and print how many",
        "tailsfs prune --base ~/tails", [target, keys])

    p = add("wipe", cmd_wipe, "erase one session, or (--emergency) destroy the whole store",
            "tailsfs wipe --session run_001 /mnt/tails\n  tailsfs wipe --emergency --yes --base ~/tails",
            [target, keys])
    wg = p.add_mutually_exclusive_group(required=True)
    wg.add_argument("--session", metavar="NAME", help="the session to erase (its key is destroyed first)")
    wg.add_argument("--emergency", action="store_true",
                    help="destroy the master key at once, then erase every file of the store")
    p.add_argument("--yes", action="store_true", help="do not ask for confirmation")

    p = add("passwd", cmd_passwd, "change, add or remove the passphrase (re-wraps the master key)",
            "TAILSFS_NEW_PASSPHRASE=... tailsfs passwd --base ~/tails --passphrase-file ~/.old-pass",
            [base_only, keys, argon])
    ng = p.add_mutually_exclusive_group()
    ng.add_argument("--new-passphrase-file", metavar="FILE",
                    help="the new passphrase (else $TAILSFS_NEW_PASSPHRASE, else typed twice)")
    ng.add_argument("--new-key-file", metavar="FILE", help="protect the master key with this key instead")
    ng.add_argument("--remove-passphrase", action="store_true", help="store the master key unprotected")

    add("rekey", cmd_rekey, "replace the master key and re-wrap every session key under it",
        "tailsfs rekey --base ~/tails --passphrase-file ~/.tails-pass", [base_only, keys, argon])

    p = add("fsck", cmd_fsck, "authenticate every memory and the store's metadata (exit 0 clean, 4 problems)",
            "tailsfs fsck --base ~/tails --repair", [base_only, keys, as_json])
    p.add_argument("--repair", action="store_true", help="move damaged memories aside into <base>/lost+found/")
    return parser


def _missing_sub(args: argparse.Namespace, name: str) -> int:
    raise CliError(f"'{name}' needs a subcommand (show or verify); see 'tailsfs {name} --help'", "usage")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns its exit code (tailsfs/cli/exitcodes.py)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(getattr(args, "debug", False))
    if debug:
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s: %(message)s")
    elif args.command not in ("mount", "umount"):
        logging.getLogger("tailsfs").setLevel(logging.CRITICAL + 1)  # failures are reported as one line
    if not getattr(args, "func", None):
        parser.error("no command given")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        _say_error("interrupted; nothing more was done")
        return exitcodes.FAILURE
    except BrokenPipeError:  # the reader went away ('tailsfs stats | head'): not a failure of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return exitcodes.OK
    except Exception as exc:  # every failure: one line, one exit code
        from .. import control
        if debug:
            traceback.print_exc()
        kind, message = (exc.kind, str(exc)) if isinstance(exc, (CliError, ControlError)) else control.classify(exc)
        _say_error(message)
        return exitcodes.for_kind(kind)


if __name__ == "__main__":
    sys.exit(main())
