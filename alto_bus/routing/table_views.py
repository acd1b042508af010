"""What of the broker's routing table each stage's instances get, and its changes. Pure.

The broker's table lists every instance of every stage. A sender routes only to the
stages it feeds, so its *view* holds their instances, their key tables and pool
members, the number of its own stage's instances (``peers``: a pool's policy divides
its share by it) and the recent deaths. Sending every instance the whole table on every
epoch is O(N) bytes to each of N instances; a view cut to the consumers is what a sender
needs, and an instance that had the previous epoch's view gets only what changed (a
*delta*): the instances added and removed per stage, and the other fields only when they
differ. Applying a delta to the view it was made from gives the new view exactly.

A delta names the epoch it applies to (``base``); an instance whose view is another
epoch (a lost message) cannot apply it and asks for the whole view again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

View = dict[str, Any]

# Fields copied whole into a delta when they differ from the base view's.
WHOLE_FIELDS = ("peers", "keys", "members", "dead", "results")


def view_for(table: Mapping[str, Any], stage: str, feeds: Iterable[str]) -> View:
    """The part of the broker's ``table`` that ``stage`` routes by (it feeds ``feeds``)."""
    feeds = tuple(feeds)
    all_stages = table["stages"]
    stages = {c: list(all_stages.get(c, ())) for c in feeds}
    ids = {int(iid) for entries in stages.values() for iid, _ in entries}
    view: View = {
        "epoch": int(table["epoch"]),
        "stages": stages,
        "peers": len(all_stages.get(stage, ())),
        "keys": {c: k for c, k in table.get("keys", {}).items() if c in feeds},
        "members": {iid: m for iid, m in table.get("members", {}).items() if int(iid) in ids},
        "dead": list(table.get("dead", ())),
    }
    if "results" in table:
        view["results"] = table["results"]
    older = []
    for old in table.get("older", ()):
        keys = {c: k for c, k in old.get("keys", {}).items() if c in feeds}
        if keys:
            older.append({"epoch": old["epoch"], "keys": keys,
                          "stages": {c: v for c, v in old.get("stages", {}).items() if c in keys}})
    if older:
        view["older"] = older
    return view


def make_delta(old: View, new: View) -> dict[str, Any]:
    """What turns view ``old`` into view ``new``."""
    added: dict[str, list] = {}
    removed: dict[str, list[int]] = {}
    for stage, entries in new["stages"].items():
        before = {int(iid): addr for iid, addr in old["stages"].get(stage, ())}
        now = {int(iid) for iid, _ in entries}
        add = [[iid, addr] for iid, addr in entries if before.get(int(iid)) != addr]
        gone = [iid for iid in before if iid not in now]
        if add:
            added[stage] = add
        if gone:
            removed[stage] = gone
    delta: dict[str, Any] = {"epoch": new["epoch"], "base": old["epoch"], "added": added, "removed": removed}
    for name in set(old["stages"]) - set(new["stages"]):
        delta.setdefault("dropped", []).append(name)
    for name in WHOLE_FIELDS:
        if name in new and new[name] != old.get(name):
            delta[name] = new[name]
    # Older epochs the old view had (or was) are known to whoever holds it.
    known = {old["epoch"], *(o["epoch"] for o in old.get("older", ()))}
    older = [o for o in new.get("older", ()) if o["epoch"] not in known]
    if older:
        delta["older"] = older
    return delta


def apply_delta(base: View, delta: Mapping[str, Any]) -> View | None:
    """The view ``delta`` makes of ``base``; None if it was made from another epoch. New
    containers throughout: a router may keep the base view of an epoch still in flight."""
    if int(delta["base"]) != int(base["epoch"]):
        return None
    stages: dict[str, list] = {}
    dropped = set(delta.get("dropped", ()))
    added, removed = delta.get("added", {}), delta.get("removed", {})
    for stage in {*base["stages"], *added} - dropped:
        changed = {int(iid) for iid, _ in added.get(stage, ())} | {int(i) for i in removed.get(stage, ())}
        kept = [e for e in base["stages"].get(stage, ()) if int(e[0]) not in changed]
        stages[stage] = sorted([*kept, *added.get(stage, ())], key=lambda e: int(e[0]))
    view: View = {"epoch": int(delta["epoch"]), "stages": stages}
    for name in WHOLE_FIELDS:
        if name in delta:
            view[name] = delta[name]
        elif name in base:
            view[name] = base[name]
    if delta.get("older"):
        view["older"] = list(delta["older"])
    return view
