"""One stage hop of the runtime against raw pyzmq, measured in the same run.

    python scripts/bench_hop.py [--messages 200000] [--repeats 5] [--json out.json]

Three processes either way: a source, the hop, and a sink.
  raw    source PUSH -> relay process (pyzmq PULL -> PUSH, one message per frame) -> sink PULL
  alto   source PUSH -> alto_bus Worker (identity handler) -> sink PULL
  loop   (latency only) the raw relay driven as the worker's inbox is: an asyncio reader
         callback on the PULL's FD, recv until ZMQ_EVENTS says nothing waits. What a hop
         on an event loop costs before any per-item work: the floor of the alto hop.
The alto source sends data-plane frames the way an upstream stage does (coalesced
batches); the worker registers with a fake broker (a ROUTER in this script) whose
"results" address is the sink, so nothing but the hop is measured.

(a) throughput: messages/s arriving at the sink, small payloads and 16-token payloads;
(b) latency at low load: one message in flight at a time, one-way time source -> sink
    (CLOCK_MONOTONIC is shared by the processes of one machine); each hop on its own, then
    (c) the hops taking turns message by message: every hop then meets the same machine
    (a burst of load elsewhere hits all alike), so the ratios vary far less between runs
    on a shared machine, and each message finds its hop cold, as a lone request does.
Reports medians over repeats and the ratio alto / raw.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgpack  # noqa: E402
import zmq  # noqa: E402

from alto_bus.protocol import wire  # noqa: E402
from scripts.hop_broker import FakeBroker  # noqa: E402, F401 (tests/bench use it from here)

SMALL = "x" * 8
TOKENS16 = list(range(1000, 1016))


def identity(x):
    return x


# -- the hop processes ---------------------------------------------------------------------


def raw_relay(inbox: str, outbox: str, ready) -> None:
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(inbox)
    push = ctx.socket(zmq.PUSH)
    push.connect(outbox)
    ready.set()
    while True:
        msg = pull.recv()
        if msg == b"STOP":
            break
        push.send(msg)
    push.close(linger=1000)
    pull.close()


def loop_relay(inbox: str, outbox: str, ready) -> None:
    import asyncio

    async def relay() -> None:
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.bind(inbox)
        push = ctx.socket(zmq.PUSH)
        push.connect(outbox)
        loop = asyncio.get_running_loop()
        stopped = loop.create_future()
        events, pollin = int(zmq.EVENTS), int(zmq.POLLIN)

        def on_readable() -> None:
            while not stopped.done():
                try:
                    msg = pull.recv(zmq.NOBLOCK)
                except zmq.Again:
                    return
                if msg == b"STOP":
                    stopped.set_result(None)
                    return
                push.send(msg)
                if not pull.getsockopt(events) & pollin:
                    return

        loop.add_reader(pull.getsockopt(zmq.FD), on_readable)
        ready.set()
        on_readable()
        await stopped
        push.close(linger=1000)
        pull.close()

    asyncio.run(relay())


def alto_worker(control: str, ready) -> None:
    import asyncio

    from alto_bus.runtime.worker import Worker

    w = Worker("hop", handler=identity, broker=control, inbox="tcp://127.0.0.1:0")
    ready.set()
    asyncio.run(w.run())


# -- measurements ----------------------------------------------------------------------------


def count_messages(frame: bytes, alto: bool) -> int:
    return len(wire.decode_frame(frame)[1]) if alto else 1


def source_proc(address: str, n: int, payload, alto: bool, batch: int, go) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 1000)
    push.connect(address)
    go.wait()
    if alto:
        b = wire.FrameBuilder("hop")
        for i in range(n):
            b.add([wire.DATA, [i], 0, payload, True, 0])
            if len(b) >= batch:
                push.send(b.take())
        if len(b):
            push.send(b.take())
    else:
        packb = msgpack.Packer(use_bin_type=True).pack
        for i in range(n):
            push.send(packb([wire.DATA, [i], 0, payload, True, 0]))
    push.close(linger=5000)


def throughput(hop_inbox: str, sink: zmq.Socket, n: int, payload, alto: bool) -> float:
    go = mp.Event()
    src = mp.Process(target=source_proc, args=(hop_inbox, n, payload, alto, 64, go))
    src.start()
    go.set()
    got = 0
    t0 = None
    while got < n:
        if not sink.poll(20_000):
            raise RuntimeError(f"sink stalled at {got}/{n} messages")
        frame = sink.recv()
        if t0 is None:
            t0 = time.perf_counter()
        got += count_messages(frame, alto)
    elapsed = time.perf_counter() - t0
    src.join()
    return n / elapsed


def latency(hop_inbox: str, sink: zmq.Socket, n: int, alto: bool) -> list[float]:
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.connect(hop_inbox)
    lat = []
    for i in range(n + 50):
        sent = time.perf_counter_ns()
        if alto:
            push.send(wire.encode_frame("hop", [[wire.DATA, [i], 0, SMALL, True, 0]]))
        else:
            push.send(msgpack.packb([wire.DATA, [i], 0, SMALL, True, 0]))
        sink.recv()
        if i >= 50:  # warm-up
            lat.append((time.perf_counter_ns() - sent) / 1000)
    push.close(linger=0)
    return lat


def interleaved_latency(hops: dict[str, tuple[str, bool]], sink: zmq.Socket, n: int) -> dict[str, list[float]]:
    """One-way latency of each hop (name -> (inbox, alto frames)), the hops taking turns
    message by message, in alternating order."""
    ctx = zmq.Context.instance()
    pushes = {}
    for name, (address, _) in hops.items():
        pushes[name] = ctx.socket(zmq.PUSH)
        pushes[name].connect(address)
    lat: dict[str, list[float]] = {name: [] for name in hops}
    names = list(hops)
    try:
        for i in range(n + 50):
            for name in (names if i % 2 else names[::-1]):
                msg = [wire.DATA, [i], 0, SMALL, True, 0]
                frame = wire.encode_frame("hop", [msg]) if hops[name][1] else msgpack.packb(msg)
                sent = time.perf_counter_ns()
                pushes[name].send(frame)
                sink.recv()
                if i >= 50:  # warm-up
                    lat[name].append((time.perf_counter_ns() - sent) / 1000)
    finally:
        for push in pushes.values():
            push.close(linger=0)
    return lat


def run(args: argparse.Namespace) -> dict:
    ctx = zmq.Context.instance()
    sink = ctx.socket(zmq.PULL)
    sink.setsockopt(zmq.RCVHWM, 100_000)
    sink_port = sink.bind_to_random_port("tcp://127.0.0.1")
    sink_addr = f"tcp://127.0.0.1:{sink_port}"
    results: dict[str, dict[str, list[float]]] = {"pair": {}, "raw": {}, "loop": {}, "alto": {}}

    # raw relay
    ready = mp.Event()
    relay_in = f"tcp://127.0.0.1:{_free_port()}"
    relay = mp.Process(target=raw_relay, args=(relay_in, sink_addr, ready))
    relay.start()
    ready.wait(10)
    ready_loop = mp.Event()
    loop_in = f"tcp://127.0.0.1:{_free_port()}"
    loop = mp.Process(target=loop_relay, args=(loop_in, sink_addr, ready_loop))
    loop.start()
    ready_loop.wait(10)
    # alto worker behind a fake broker
    broker = FakeBroker(sink_addr)
    broker.start()
    ready2 = mp.Event()
    worker = mp.Process(target=alto_worker, args=(broker.address, ready2))
    worker.start()
    if not broker.registered.wait(30):
        raise RuntimeError("the worker did not register")
    try:
        for r in range(args.repeats):
            pair = results["pair"]
            pair.setdefault("small_msgs_per_s", []).append(throughput(sink_addr, sink, args.messages, SMALL, False))
            pair.setdefault("tok16_msgs_per_s", []).append(throughput(sink_addr, sink, args.messages, TOKENS16, False))
            for name, inbox, alto in (("raw", relay_in, False), ("alto", broker.inbox, True)):
                res = results[name]
                res.setdefault("small_msgs_per_s", []).append(throughput(inbox, sink, args.messages, SMALL, alto))
                res.setdefault("tok16_msgs_per_s", []).append(
                    throughput(inbox, sink, args.messages, TOKENS16, alto))
                lat = latency(inbox, sink, args.latency_samples, alto)
                res.setdefault("lat_p50_us", []).append(statistics.median(lat))
                res.setdefault("lat_p99_us", []).append(statistics.quantiles(lat, n=100)[98])
                if name == "raw":  # the floor, between the two hops it bounds
                    lat = latency(loop_in, sink, args.latency_samples, False)
                    results["loop"].setdefault("lat_p50_us", []).append(statistics.median(lat))
                    results["loop"].setdefault("lat_p99_us", []).append(statistics.quantiles(lat, n=100)[98])
            turns = interleaved_latency({"raw": (relay_in, False), "loop": (loop_in, False),
                                         "alto": (broker.inbox, True)}, sink, args.latency_samples)
            for name, lat in turns.items():
                results[name].setdefault("turns_p50_us", []).append(statistics.median(lat))
                results[name].setdefault("turns_p99_us", []).append(statistics.quantiles(lat, n=100)[98])
            print(f"repeat {r + 1}/{args.repeats} done", file=sys.stderr, flush=True)
    finally:
        for address in (relay_in, loop_in):
            push = ctx.socket(zmq.PUSH)
            push.connect(address)
            push.send(b"STOP")
            push.close(linger=1000)
        broker.shutdown()
        relay.join(5)
        loop.join(5)
        worker.join(10)
        for p in (relay, loop, worker):
            if p.is_alive():
                p.kill()
    med = {name: {k: statistics.median(v) for k, v in res.items()} for name, res in results.items()}
    # Ratios per repeat (each against the raw relay of the same repeat), their median and range.
    ratios = {f"{name}/raw {key}": [a / b for a, b in zip(results[name][key], results["raw"][key])]
              for name in ("loop", "alto") for key in ("lat_p50_us", "lat_p99_us", "turns_p50_us", "turns_p99_us")}
    return {"median": med, "runs": results, "ratios": ratios, "messages": args.messages, "repeats": args.repeats,
            "cpus": os.cpu_count()}


def _free_port() -> int:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def report(out: dict) -> str:
    pair, raw, alto, floor = (out["median"][k] for k in ("pair", "raw", "alto", "loop"))
    rows = [
        ("small payload, messages/s", raw["small_msgs_per_s"], alto["small_msgs_per_s"], "higher"),
        ("16-token payload, messages/s", raw["tok16_msgs_per_s"], alto["tok16_msgs_per_s"], "higher"),
        ("16-token payload, tokens/s", raw["tok16_msgs_per_s"] * 16, alto["tok16_msgs_per_s"] * 16, "higher"),
        ("one-way latency p50, us", raw["lat_p50_us"], alto["lat_p50_us"], "lower"),
        ("one-way latency p99, us", raw["lat_p99_us"], alto["lat_p99_us"], "lower"),
    ]
    lines = ["| figure (median of %d runs) | raw pyzmq hop | alto_bus hop | alto / raw hop |" % out["repeats"],
             "|---|---:|---:|---:|"]
    for name, r, a, _ in rows:
        lines.append(f"| {name} | {r:,.0f} | {a:,.0f} | {a / r:.2f} |")
    lines += ["", "| throughput against the raw pair (source PUSH -> sink PULL, no hop) | raw pair | alto_bus hop "
              "| alto / pair |", "|---|---:|---:|---:|"]
    for name, key, mult in (("small payload, messages/s", "small_msgs_per_s", 1),
                            ("16-token payload, tokens/s", "tok16_msgs_per_s", 16)):
        p_, a_ = pair[key] * mult, alto[key] * mult
        lines.append(f"| {name} | {p_:,.0f} | {a_:,.0f} | {a_ / p_:.2f} |")
    lines += ["", "| latency against the floor of a hop on an event loop | raw pyzmq hop | asyncio relay "
              "| alto_bus hop | asyncio / raw | alto / asyncio |", "|---|---:|---:|---:|---:|---:|"]
    for name, key in (("one-way latency p50, us", "lat_p50_us"), ("one-way latency p99, us", "lat_p99_us")):
        r, f, a = raw[key], floor[key], alto[key]
        lines.append(f"| {name} | {r:,.0f} | {f:,.0f} | {a:,.0f} | {f / r:.2f} | {a / f:.2f} |")
    lines += ["", "| latency, the hops taking turns per message (ratios: median and range over repeats) "
              "| raw pyzmq hop | asyncio relay | alto_bus hop | asyncio / raw | alto / raw |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, key in (("one-way latency p50, us", "turns_p50_us"), ("one-way latency p99, us", "turns_p99_us")):
        cells = []
        for hop in ("loop", "alto"):
            v = out["ratios"][f"{hop}/raw {key}"]
            cells.append(f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})")
        lines.append(f"| {name} | {raw[key]:,.0f} | {floor[key]:,.0f} | {alto[key]:,.0f} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--messages", type=int, default=200_000)
    p.add_argument("--latency-samples", type=int, default=2000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", help="also write the raw figures here")
    args = p.parse_args()
    out = run(args)
    print(report(out))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
