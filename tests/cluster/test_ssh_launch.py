"""One topology across three "hosts" over ssh: placement, exact results, stop everywhere."""

from __future__ import annotations

import signal
import time

from alto_bus import Client
from alto_bus.deploy.supervisor import StatusProbe
from tests.cluster.conftest import H, gone, host_tables, wait_for, write
from tests.cluster.netns import cmdline
from tests.integration.test_factool import variant
from alto_workers.factool.reference import Reference
from alto_workers.factool.workload import Workload


def topology(hosts) -> dict:
    return {
        "broker": {"heartbeat_interval": 0.2, "heartbeat_liveness": 4, "request_timeout": 60.0},
        "host": host_tables(hosts, gpus=[2, 2, 0]),
        "stage": [
            {"name": "split", "kind": "function", "handler": f"{H}:split", "replicas": 3},
            {"name": "where", "kind": "function", "handler": f"{H}:where", "input": "split",
             "replicas": 4, "gpus": 1},
        ],
    }


def test_a_launch_over_ssh_places_serves_exactly_and_stops_everywhere(clean, launches, tmp_path):
    hosts = clean
    h1, h2, h3 = hosts.hosts
    run = launches(write(tmp_path, topology(hosts)), hosts)
    ready = run.ready()
    seconds = float(ready.split("hosts, ")[1].split(" s")[0])
    print(f"launch to ready, 3 hosts: {seconds:.2f} s")
    gateway, control = run.value("gateway"), run.value("control")
    assert gateway.startswith(f"tcp://{h1.address}:") and control.startswith(f"tcp://{h1.address}:")

    # Processes really run in the namespace they were placed in.
    pids = {h.name: hosts.app_pids(h) for h in hosts.hosts}
    assert all(pids.values()), pids
    assert any(" broker " in cmdline(p) for p in pids[h1.name])
    assert not any(" broker " in cmdline(p) for p in pids[h2.name] | pids[h3.name])
    with StatusProbe(control) as probe:
        status = probe.query(timeout=5)
    placed = {name: sorted((i["host"], i["pid"]) for i in st["instances"]) for name, st in status["stages"].items()}
    assert sorted(h for h, _ in placed["split"]) == sorted([h1.name, h2.name, h3.name])
    assert sorted(h for h, _ in placed["where"]) == sorted([h1.name, h1.name, h2.name, h2.name])  # h3: no GPU
    for stage in placed.values():
        for host, pid in stage:
            assert pid in pids[host], f"{pid} is not running in namespace {host}"

    # A few hundred concurrent requests, exact results, computed on both GPU hosts and every GPU.
    texts = [f"alpha{i} beta{i} gamma{i}" for i in range(300)]
    with Client(gateway) as client:
        futures = [client.submit(t) for t in texts]
        results = [f.result(timeout=60) for f in futures]
    for text, result in zip(texts, results):
        assert [r["word"] for r in result] == text.upper().split()
    seen = {(r["pid"], r["cuda"]) for result in results for r in result}
    where_pids = {pid for _, pid in placed["where"]}
    assert {pid for pid, _ in seen} == where_pids
    assert {cuda for _, cuda in seen} == {"0", "1"}

    # Ctrl-C: every process on every host stops, sshd aside.
    everything = set().union(*pids.values())
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0, run.err[-20:]
    wait_for(lambda: gone(everything), 30, "every process on every host to exit")
    print(f"stop everywhere: {time.monotonic() - t0:.2f} s")
    assert all(not hosts.app_pids(h) for h in hosts.hosts)


def test_killing_the_launcher_stops_every_host(clean, launches, tmp_path):
    hosts = clean
    run = launches(write(tmp_path, topology(hosts)), hosts, alto_launch=True)  # `alto launch FILE --hosts`
    run.ready()
    everything = set().union(*(hosts.app_pids(h) for h in hosts.hosts))
    assert len(everything) >= 3 + 7  # a node per host, broker, 7 instances
    t0 = time.monotonic()
    run.kill()  # SIGKILL: no clean-up by the launcher; the ssh sessions end, and the nodes with them
    wait_for(lambda: gone(everything), 30, "the nodes to die with their ssh sessions")
    print(f"every host stopped {time.monotonic() - t0:.2f} s after the launcher was killed")


def test_the_fact_verification_pipeline_with_an_lm_pool_across_hosts(clean, launches, tmp_path):
    # Every stage kind (LM stages on a pool of sim engines, retriever, functions, aggregates).
    hosts = clean
    topo = variant(True, None, "factool.toml")
    topo["host"] = host_tables(hosts, gpus=[1, 1, 1])
    topo["pool"][0]["gpus"] = 1  # a member per GPU: one on each host
    topo["pool"][0]["replicas"] = 3
    workload = Workload.load()
    ref = Reference(workload, k=3)
    questions = [q["question"] for q in workload.questions[:30]]
    run = launches(write(tmp_path, topo), hosts)
    run.ready(120)
    with StatusProbe(run.value("control")) as probe:
        st = probe.query(timeout=5)
    assert {i["host"] for i in st["stages"]["answer"]["instances"]} == {h.name for h in hosts.hosts}
    with Client(run.value("gateway")) as client:
        results = [f.result(timeout=180) for f in [client.submit({"question": q}) for q in questions]]
    for q, r in zip(questions, results):
        assert r == ref.result(q), q
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(60) == 0
