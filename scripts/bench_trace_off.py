"""What tracing costs a hop while it is off, per message, in one process (no sockets).

    python scripts/bench_trace_off.py [--messages 200000] [--repeats 7]

A hop decodes a DATA, dispatches it and encodes its output. Two message shapes are
timed in the same run, interleaved: today's DATA (with the appended optional ``trace``
field, None) and the same record without it (what the bus sent before), each through
decode -> the inbox's check (``msg.trace is not None``, only with the field) -> build the
output record -> encode. Reports the median ns per message of each and the difference;
scripts/bench_hop.py gives the whole hop (sockets, three processes) for scale.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402

from alto_bus.protocol.messages import Count, Data  # noqa: E402
from alto_bus.protocol.messages import Path as ItemPath

PAYLOADS = {"small": "x" * 8, "16 tokens": list(range(1000, 1016))}


class Untraced(msgspec.Struct, tag=0, array_like=True, gc=False):
    """DATA as it was before the ``trace`` field (the other fields as they are now)."""

    path: ItemPath
    seq: Count
    payload: Any
    final: bool
    epoch: Count
    turns: Count = 0


def hop_traced(frames: list[bytes], dec: Any, enc: Any) -> None:
    tracing = None
    for raw in frames:
        msg = dec(raw)
        if msg.trace is not None and tracing is not None:
            pass
        enc(Data(msg.path, msg.seq, msg.payload, msg.final, msg.epoch, None))


def hop_untraced(frames: list[bytes], dec: Any, enc: Any) -> None:
    for raw in frames:
        msg = dec(raw)
        enc(Untraced(msg.path, msg.seq, msg.payload, msg.final, msg.epoch))


def ns_per_message(fn: Any, frames: list[bytes], dec: Any, enc: Any) -> float:
    t0 = time.perf_counter_ns()
    fn(frames, dec, enc)
    return (time.perf_counter_ns() - t0) / len(frames)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    enc = msgspec.msgpack.Encoder().encode
    dec_t, dec_u = msgspec.msgpack.Decoder(Data).decode, msgspec.msgpack.Decoder(Untraced).decode
    print("| payload | bytes with trace=None | bytes before | ns/message with the field | before | difference |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, payload in PAYLOADS.items():
        traced = [enc(Data([i, 0], 0, payload, True, 0)) for i in range(args.messages)]
        untraced = [enc(Untraced([i, 0], 0, payload, True, 0)) for i in range(args.messages)]
        t, u = [], []
        for _ in range(args.repeats):  # interleaved: both see the same machine
            t.append(ns_per_message(hop_traced, traced, dec_t, enc))
            u.append(ns_per_message(hop_untraced, untraced, dec_u, enc))
        mt, mu = statistics.median(t), statistics.median(u)
        print(f"| {name} | {len(traced[0])} | {len(untraced[0])} | {mt:.0f} | {mu:.0f} | {mt - mu:+.0f} ns "
              f"({(mt - mu) / mu:+.1%}) |")


if __name__ == "__main__":
    main()
