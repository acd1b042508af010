"""What a worker does on each message of its control link: the broker's tables, loads,
cancels and orders, and the link's own news (it failed, the broker went silent).

Called on the worker's event loop (the control thread hands each message over), so it
may touch all of the worker's state.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("alto.worker")


def on_control(w: Any, op: str, body: dict) -> None:
    """Apply one control message ``op`` with ``body`` to worker ``w``."""
    fut = w._events.pop(op, None)
    if fut is not None and not fut.done():
        fut.set_result(body)
    if op in ("table", "table_delta"):
        view = w._feed.table(op, body)
        if view is None:  # a table went missing: ask for the whole view
            w._control.send("resync", {})
        else:
            w._apply_table(view)
    elif op == "loads":
        if not w._feed.loads_in_sequence(body) and w.iid is not None:
            w._control.send("resync", {})  # a report or a table went missing
        w.outboxes.rotate(body.get("ended", []))  # a heartbeat interval: a new generation
        w._forget(body.get("ended", []))
        w._oldest_epoch = int(body.get("oldest", 0))
        w.routes.apply_loads(body)
        w._drop_gone()
    elif op == "left":
        w._left_epoch = w.routes.epoch  # that table came just before "left"
    elif op == "cancel":
        w._cancel(body.get("rids", []))
    elif op == "resend" and w._retrying is not None:
        w._retrying.resend(int(body.get("iid", -1)))
    elif op == "shutdown":
        w._begin_stop(drain=False)
    elif op == "control_failed":
        log.critical("stage %s: the control link failed %d turns in a row; stopping", w.stage, body["turns"])
        w.failed = True
        w._begin_stop(drain=False)
    elif op == "broker_lost":
        log.error("stage %s: the broker has been silent for %.0f s; stopping", w.stage, body["silent"])
        w._begin_stop(drain=False)
    elif op == "registered" and w.iid is not None:
        w.iid = int(body["iid"])  # re-registered after a broker restart
    elif op == "error":
        log.warning("the broker says: %s", body.get("reason"))
