"""Mount and store options: defaults, the config file, and where the store lives.

The config file is INI with one ``[tailsfs]`` section; ``mount.example.conf``
lists every option with its default.
"""
from __future__ import annotations

import configparser
import os
from dataclasses import dataclass, fields
from pathlib import Path

from .store.engine import StoreConfig


def default_base() -> Path:
    """Where the store lives when --base is not given ($TAILSFS_BASE overrides)."""
    env = os.environ.get("TAILSFS_BASE")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/var/lib/tailsfs")
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "tailsfs"


FOLLOW_CHOICES = ("yes", "no", "auto")


@dataclass
class MountConfig:
    base: str = ""
    ephemeral_ttl: float = 24 * 3600.0
    prune_interval: float = 60.0
    volatile_max_bytes: int = 1 << 30
    overwrite_passes: int = 1
    lock_memory: bool = False
    allow_other: bool = False
    log_level: str = "WARNING"
    log_file: str = ""
    poll_us: int = 200
    follow_client: str = "auto"  # yes, no, or auto: measured at mount (fuse/wakeprobe.py)
    handle_killpriv: bool = True  # the daemon clears set-ID bits; no GETXATTR per write (fuse/killpriv.py)

    def store_config(self) -> StoreConfig:
        # poll_us is how long the daemon stays busy instead of sleeping: for the next request
        # (fuse/polling.py) and for a host read that missed the page cache (format/backing.py)
        return StoreConfig(overwrite_passes=self.overwrite_passes, ephemeral_ttl=self.ephemeral_ttl,
                           volatile_max_bytes=self.volatile_max_bytes, read_spin=self.poll_us / 1e6)

    def validate(self) -> None:
        if not 0 <= self.poll_us <= 100_000:  # before store_config, which derives read_spin from it
            raise ValueError("poll_us must be between 0 and 100000 microseconds")
        self.store_config()
        if not self.prune_interval > 0:
            raise ValueError("prune_interval must be > 0 seconds")
        if self.follow_client not in FOLLOW_CHOICES:
            raise ValueError(f"follow_client must be yes, no or auto, not {self.follow_client!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not {self.log_level!r}")


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    for suffix, mult in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if text.endswith(suffix) or text.endswith(suffix + "IB"):
            return int(float(text.rstrip("IB").rstrip(suffix)) * mult)
    return int(text)


def _parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "yes", "true", "on"):
        return True
    if low in ("0", "no", "false", "off"):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def set_option(cfg: MountConfig, name: str, value: str) -> None:
    """Set one option from text (config file or ``-o name=value``); ValueError if unknown or bad."""
    known = {f.name: f for f in fields(MountConfig)}
    if name not in known:
        raise ValueError(f"unknown option {name!r}")
    kind = known[name].type
    try:
        if name == "volatile_max_bytes":
            parsed: object = _parse_size(value)
        elif name == "follow_client":
            parsed = "auto" if value.strip().lower() == "auto" else ("yes" if _parse_bool(value) else "no")
        elif kind in (bool, "bool"):
            parsed = _parse_bool(value)
        elif kind in (float, "float"):
            parsed = float(value)
        elif kind in (int, "int"):
            parsed = int(value)
        else:
            parsed = value
    except ValueError:
        raise ValueError(f"bad value {value!r} for option {name}") from None
    setattr(cfg, name, parsed)


def load_config(path: str | os.PathLike | None) -> MountConfig:
    cfg = MountConfig()
    if path is None:
        return cfg
    parser = configparser.ConfigParser()
    if not parser.read(path):
        raise FileNotFoundError(f"config file {path} not found")
    if not parser.has_section("tailsfs"):
        raise ValueError(f"config file {path} has no [tailsfs] section")
    for name, value in parser.items("tailsfs"):
        set_option(cfg, name, value)
    cfg.validate()
    return cfg
