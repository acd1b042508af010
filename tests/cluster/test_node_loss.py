"""Loss of a node: every process of a host dies; the rest serves on; the host rejoins."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from alto_bus import Client, RequestError
from alto_bus.deploy.supervisor import StatusProbe
from tests.cluster.conftest import ROOT, H, gone, host_tables, wait_for, write
from tests.cluster.netns import cmdline


def topology(hosts) -> dict:
    return {
        "broker": {"heartbeat_interval": 0.2, "heartbeat_liveness": 4, "request_timeout": 60.0},
        "host": host_tables(hosts),
        "stage": [
            {"name": "fan", "kind": "function", "handler": f"{H}:fan", "replicas": 3},
            {"name": "slow", "kind": "function", "handler": f"{H}:slow", "input": "fan", "replicas": 3},
        ],
    }


def status(control: str) -> dict:
    with StatusProbe(control) as probe:
        st = probe.query(timeout=5)
    assert st is not None, "the broker did not answer"
    return st


def instances(st: dict, host: str | None = None) -> list[dict]:
    return [i for s in st["stages"].values() for i in s["instances"] if host is None or i["host"] == host]


def test_a_lost_host_fails_its_requests_naming_it_and_the_rest_serve_on_then_it_rejoins(clean, launches, tmp_path):
    hosts = clean
    h1, h2, h3 = hosts.hosts
    path = write(tmp_path, topology(hosts))
    run = launches(path, hosts)
    run.ready()
    gateway, control = run.value("gateway"), run.value("control")
    st0 = status(control)
    victims = {i["pid"] for i in instances(st0, h3.name)}
    assert len(victims) == 2  # one instance of each stage
    node = next(p for p in hosts.app_pids(h3) if " node " in cmdline(p))

    with Client(gateway) as client:
        # Each request fans out to 3 items, each sleeping 1.5 s on some "slow" instance.
        items = lambda i: [{"i": f"{i}.{k}", "sleep": 1.5} for k in range(3)]  # noqa: E731
        texts = [i for i in range(150)]
        futures = [client.submit(items(i)) for i in texts]
        wait_for(lambda: any(i["depth"] for i in instances(status(control), h3.name)), 10,
                 "host 3's instances to hold work")
        os.kill(node, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: gone(victims | {node}), 10, "the lost node's instances to die with it")
        ok, failed = [], []
        for i, f in zip(texts, futures):
            try:
                ok.append((i, f.result(timeout=30)))
            except RequestError as exc:
                failed.append(exc)
        took = time.monotonic() - t0
        print(f"{len(failed)} of {len(texts)} requests failed; every request ended {took:.2f} s after the kill")
        assert failed and ok
        for exc in failed:
            assert h3.name in exc.message and exc.stage in ("fan", "slow"), exc
            assert "died" in exc.message, exc
        for i, result in ok:
            assert [r["i"] for r in result] == [f"{i}.{k}" for k in range(3)]
        assert took < 15  # a few heartbeats and the 1.5 s handlers, never the 60 s deadline

        st1 = status(control)
        assert st1["epoch"] > st0["epoch"]
        assert not instances(st1, h3.name)
        survivors = {i["pid"] for i in instances(st1)}
        after = [client.submit(items(1000 + i)) for i in range(30)]
        for f in after:
            assert {r["pid"] for r in f.result(timeout=30)} <= survivors
        run.read_until(lambda ln: ln.startswith("rejoin it with: "), 30)
        assert any(ln.startswith(f"lost host {h3.name!r}") for ln in run.lines)

        # The host comes back: `alto node` again, with the command the launcher printed.
        rejoin = run.lines[-1].removeprefix("rejoin it with: ").replace("alto ", "", 1)
        back = hosts.ssh(h3, f"cd {ROOT} && exec {ROOT}/.venv/bin/python -m alto_bus {rejoin} --watch-stdin "
                             "--die-with-parent", stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            line = back.stdout.readline()
            assert "instance(s) ready" in line, line
            st2 = status(control)
            assert len(instances(st2, h3.name)) == 2 and st2["epoch"] > st1["epoch"]
            newcomers = {i["pid"] for i in instances(st2, h3.name)}
            later = [client.submit(items(2000 + i)) for i in range(60)]
            pids = {r["pid"] for f in later for r in f.result(timeout=30)}
            assert pids & newcomers, "the host that came back got no load"
        finally:
            back.stdin.close()  # its node stops its instances
            assert back.wait(30) == 0
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0


def test_a_host_lost_under_a_stream_of_fast_requests_ends_every_request_promptly(clean, launches, tmp_path):
    # Items move fast here: many are in flight on the wire when the host dies, not held.
    hosts = clean
    h1, h2, h3 = hosts.hosts
    topo = topology(hosts)
    topo["stage"][1]["handler"] = f"{H}:slow"
    run = launches(write(tmp_path, topo), hosts)
    run.ready()
    gateway = run.value("gateway")
    node = next(p for p in hosts.app_pids(h3) if " node " in cmdline(p))
    items = lambda i: [{"i": f"{i}.{k}", "sleep": 0.001} for k in range(4)]  # noqa: E731
    with Client(gateway) as client:
        futures = []
        t_kill = None
        for i in range(3000):
            futures.append(client.submit(items(i), timeout=60.0))
            if i == 1500:
                os.kill(node, signal.SIGKILL)
                t_kill = time.monotonic()
            if i % 100 == 0:
                time.sleep(0.02)  # a steady stream, not one burst
        ok = failed = 0
        for i, f in enumerate(futures):
            try:
                result = f.result(timeout=60)
            except RequestError as exc:
                failed += 1
                assert h3.name in exc.message and "died" in exc.message, exc
                continue
            ok += 1
            assert [r["i"] for r in result] == [f"{i}.{k}" for k in range(4)]
        took = time.monotonic() - t_kill
        print(f"{failed} failed, {ok} exact; all ended {took:.2f} s after the kill")
        assert ok > 1000
        assert took < 20, "some requests waited for their deadline instead of failing when the host died"
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0
