"""Graphs declared in Python, run in this process (Graph.run) and as processes (Graph.launched):
the same graph gives the same results both ways, and a run always cleans up after itself."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from alto_bus import Client, Graph, RequestError
from alto_bus.deploy.topology import TopologyError
from tests.integration import graph_handlers as gh
from tests.support import wait_exit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "topology" / "examples"
TEXTS = ["to be or not", "", "a bb ccc dddd", "x", "one two three four five six"]


_BEFORE: set[int] = set()


@pytest.fixture(autouse=True)
def _threads_before():
    # Threads other tests of this process left (a client they did not close) are not ours.
    _BEFORE.clear()
    _BEFORE.update(t.ident for t in threading.enumerate())
    yield


def alto_threads() -> list[str]:
    """alto threads started since this test began and still alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith("alto-") and t.ident not in _BEFORE]


def diamond_in_python() -> Graph:
    g = Graph()
    w = g.function("words", lambda text: (yield from text.split()))
    u = g.function("upper", lambda word: word.upper(), input=w, replicas=2)
    n = g.function("length", lambda word: len(word), input=w, replicas=2)
    g.aggregate("both", input=[u, n], key="request", op="collect", replicas=2)
    return g


def test_a_diamond_with_a_join_gives_in_this_process_what_its_file_gives_as_processes():
    with diamond_in_python().run() as client:
        here = [client.submit(t).result(timeout=30) for t in TEXTS]
    with Graph.from_toml(EXAMPLES / "join.toml").launched() as client:
        there = [client.submit(t).result(timeout=30) for t in TEXTS]
    assert here == there == [{"upper": [w.upper() for w in t.split()], "length": [len(w) for w in t.split()]}
                             for t in TEXTS]
    assert not alto_threads()


def routed(route, short, long) -> Graph:
    g = Graph()
    w = g.function("words", gh.words)
    pick = g.function("pick", gh.upper, input=w, route=route)
    s = g.function("short", short, input=pick, replicas=2)
    lo = g.function("long", long, input=pick)
    g.function("merge", gh.upper, input=[s, lo])
    return g


def test_a_route_declared_with_closures_runs_here_like_the_importable_graph_as_processes():
    limit = 3

    def by_length(word):  # a closure: fine in this process, refused for processes
        return [] if word == "X" else ("short" if len(word) <= limit else "long")

    texts = ["ab abcd x", "", "x x", "abcdef a", "one three five"]
    with routed(by_length, lambda w: f"s:{w}", lambda w: f"l:{w}").run() as client:
        here = [client.submit(t).result(timeout=30) for t in texts]
    with routed(gh.by_length, gh.short, gh.long).launched() as client:  # its TOML names the functions
        there = [client.submit(t).result(timeout=30) for t in texts]
    expected = [[("S:" if len(w) <= 3 else "L:") + w.upper() for w in t.split() if w != "x"] for t in texts]
    assert here == there == expected


def agent_in_python(max_turns: int = 5) -> Graph:
    g = Graph()
    start = g.function("start", lambda q: {"question": q, "steps": []})
    think = g.function("think", lambda s: {**s, "done": len(s["steps"]) >= 3 or s["question"].endswith("?")},
                       input=[start, "tool"], route=lambda s: "answer" if s["done"] else "tool",
                       max_turns=max_turns)
    g.function("tool", lambda s: {**s, "steps": [*s["steps"], "x"]}, input=think, replicas=2)
    g.function("answer", lambda s: f"{s['question']}: {len(s['steps'])} steps", input=think)
    return g


def test_an_agent_loop_in_this_process_gives_what_its_file_gives_as_processes_and_max_turns_fails_it():
    questions = ["weather", "weather?", "q1", "q2?"]
    with agent_in_python().run() as client:
        here = [client.submit(q).result(timeout=30) for q in questions]
    with Graph.from_toml(EXAMPLES / "agent.toml").launched() as client:
        there = [client.submit(q).result(timeout=30) for q in questions]
    assert here == there == ["weather: 3 steps", "weather?: 0 steps", "q1: 3 steps", "q2?: 0 steps"]
    with agent_in_python(max_turns=2).run() as client:
        with pytest.raises(RequestError) as err:
            client.submit("weather").result(timeout=30)
        assert client.submit("weather?").result(timeout=30) == "weather?: 0 steps"
    assert err.value.stage == "think" and "max_turns 2" in str(err.value)


def test_an_lm_pool_runs_here_as_it_runs_as_processes():
    g = Graph().broker(request_timeout=30.0)
    g.pool("p", engine="sim", replicas=2)
    said = g.lm("say", pool="p", prompt="Say something about {x}", emit="sentences", max_tokens=32)
    g.aggregate("sentences", input=said, key="request", op="count")
    items = [{"x": f"topic {i}"} for i in range(6)]
    with g.run() as client:
        here = [client.submit(x).result(timeout=30) for x in items]
    with g.launched() as client:
        there = [client.submit(x).result(timeout=30) for x in items]
    assert here == there and all(n >= 1 for n in here)


def test_an_error_in_the_body_stops_everything_and_frees_the_ports():
    with pytest.raises(ZeroDivisionError):
        with diamond_in_python().run() as client:
            gateway = client.gateway
            assert alto_threads()
            raise ZeroDivisionError("the body failed")
    assert not alto_threads()
    host, port = gateway.removeprefix("tcp://").rsplit(":", 1)
    with contextlib.closing(socket.socket()) as s:
        s.bind((host, int(port)))  # the gateway's port is free again


def test_a_handler_that_raises_fails_its_request_naming_the_stage_and_the_rest_go_on():
    g = Graph()
    g.function("check", lambda x: 10 // x)
    with g.run() as client:
        with pytest.raises(RequestError) as err:
            client.submit(0).result(timeout=30)
        assert client.submit(5).result(timeout=30) == 2
    assert err.value.stage == "check" and "ZeroDivisionError" in str(err.value)


def test_a_lambda_cannot_be_launched_and_nothing_starts(monkeypatch):
    from alto_bus.deploy import supervisor

    monkeypatch.setattr(supervisor.Supervisor, "start", lambda self: pytest.fail("a process was started"))
    with pytest.raises(TopologyError, match=r"^graph: stage 'words': field 'handler': .*it is a lambda"):
        with diamond_in_python().launched():
            pass  # pragma: no cover: refused before


def test_the_readme_example_is_the_example_file_and_prints_what_it_says():
    code = (EXAMPLES / "graph_api_example.py").read_text()
    body = code[code.index("from alto_bus import Graph"):]
    assert body in (ROOT / "README.md").read_text()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(EXAMPLES / "graph_api_example.py"), run_name="__main__")
    assert out.getvalue() == "{'upper': ['TO', 'BE', 'OR'], 'length': [2, 2, 2]}\n"
    assert not alto_threads()


def test_launch_runs_like_alto_launch_until_sigterm_and_leaves_no_process(tmp_path):
    script = ("from alto_bus import Graph\n"
              "from tests.integration import graph_handlers as gh\n"
              "g = Graph()\n"
              "g.function('upper', gh.upper, replicas=2)\n"
              "raise SystemExit(g.launch())\n")
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line.strip())
            if line.strip() == "ready":
                break
        gateway = next(ln.split()[1] for ln in lines if ln.startswith("gateway "))
        pids = [int(p) for ln in lines if ln.startswith("stage upper") for p in re.findall(r"\d+", ln.split("pids")[1])]
        assert "stage upper (function): 2/2 instances ready" in "\n".join(lines) and len(pids) == 2
        with Client(gateway) as client:
            assert client.submit("abc").result(timeout=30) == "ABC"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert all(wait_exit(pid, 10) for pid in pids)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
