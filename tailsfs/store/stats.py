"""Statistics of the first design, computed from the store and its audit trail."""
from __future__ import annotations

from typing import Any

from .engine import Store
from .tiers import MemoryTier

_COUNTED = {"memory_write": "total_writes", "memory_read": "total_reads", "memory_delete": "total_deletes",
            "pruned_expired": "total_pruned", "tier_move": "total_moves", "session_clear": "total_session_clears"}


def store_stats(store: Store, session: str | None = None) -> dict[str, Any]:
    counts = {v: 0 for v in _COUNTED.values()}
    last: dict[str, str] = {}
    for e in store.audit.entries():
        name = _COUNTED.get(e["event"])
        sess = e["details"].get("session")
        if session is not None and sess != session:
            continue
        if name:
            counts[name] += e["details"].get("count", 1) if name == "total_pruned" else 1
        if sess:
            last[sess] = e["timestamp"]
    per_session: dict[str, dict[str, Any]] = {}
    tiers = {t.value: {"count": 0, "bytes": 0} for t in MemoryTier}
    names = [session] if session is not None else store.session_names()
    for name in names:
        info = {"session_id": name, "memory_count": 0, "bytes": 0, "last_activity": last.get(name),
                "tiers": {t.value: 0 for t in MemoryTier}}
        for _n, tier, path, _node in store.iter_memories(name):
            try:
                size = store.tree(name, tier).getattr(path).size
            except OSError:
                continue
            info["memory_count"] += 1
            info["bytes"] += size
            info["tiers"][tier.value] += 1
            tiers[tier.value]["count"] += 1
            tiers[tier.value]["bytes"] += size
        per_session[name] = info
    out: dict[str, Any] = {
        "total_volatile": tiers["volatile"]["count"],
        "total_sessions": len(store.session_names()),
        "stats": counts,
        "tiers": tiers,
        "volatile_bytes_used": store.volatile_used,
        "volatile_max_bytes": store.config.volatile_max_bytes,
        "next_expiry": store.next_expiry(),
    }
    if session is not None:
        out.update(per_session.get(session, {}))
    else:
        out["sessions"] = per_session
    return out
