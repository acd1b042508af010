"""A peer without an allowed key tries every door; prints what happened as one JSON line.

    python -m tests.cluster.intruder GATEWAY CONTROL INBOX MY_ADDRESS [KEY BROKER_KEY]

With KEY/BROKER_KEY it holds a key pair (not allowed) and the broker's real public key;
without, it speaks plain tcp. Run in another namespace than the broker's.
"""

from __future__ import annotations

import concurrent.futures
import json
import sys

import zmq

from alto_bus import Client
from alto_bus.net import curve as keys
from alto_bus.protocol import wire
from alto_bus.runtime.worker import Worker
from alto_bus.net.sockets import make_socket


def main() -> None:
    gateway, control, inbox, me = sys.argv[1:5]
    curve = keys.client_curve(sys.argv[5], sys.argv[6]) if len(sys.argv) > 6 else None
    out = {}

    client = Client(gateway, timeout=3.0, curve=curve)
    try:
        out["submit"] = f"answered: {client.submit('let me in').result(timeout=3)!r}"
    except concurrent.futures.TimeoutError:
        out["submit"] = "no answer"
    except Exception as exc:  # noqa: BLE001 - report whatever it was
        out["submit"] = f"error: {exc}"
    client.close()

    try:
        Worker("where", handler=lambda x: x, broker=control, inbox=f"tcp://{me}:0", advertise=me,
               connect_timeout=3.0, curve=curve).start()
        out["register"] = "registered"
    except Exception as exc:  # noqa: BLE001
        out["register"] = f"refused: {exc}"

    ctx = zmq.Context.instance()
    address, server_key = keys.split_key(inbox)
    push = make_socket(ctx, zmq.PUSH, connect=address if curve is None else inbox,
                       curve=curve.to_peer("intruder") if curve else None)
    frame = wire.encode_frame("where", [[wire.DATA, [999_999], 0, "intruder", True, 0]])
    try:
        push.send(frame, zmq.NOBLOCK)
        out["push"] = "queued"
    except zmq.Again:
        out["push"] = "not connected"
    push.close(linger=1500)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
