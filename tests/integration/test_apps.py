"""The applications beside fact verification (workers/apps/), end to end on real processes:
every request ends in exactly the outcome the single-process reference computes."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from alto_bus import Client, RequestError
from tests.support import running

ROOT = Path(__file__).resolve().parents[2]


def variant(app: str, **changes) -> dict:
    """topology/<app>.toml on a fast emulated GPU (timing is not what is checked), with
    ``changes = {stage: {field: value}}`` applied."""
    topo = tomllib.loads((ROOT / "topology" / f"{app}.toml").read_text())
    for table in [*topo.get("pool", []), *topo["stage"]]:
        if table.get("engine") == "sim":
            table["engine_args"] = {"time_scale": 0.2}
        table.update(changes.get(table["name"], {}))
    return topo


def outcomes(client: Client, payloads: list) -> list[tuple]:
    futures = [client.submit(p) for p in payloads]
    out = []
    for f in futures:
        try:
            out.append((f.result(timeout=60), None))
        except RequestError as exc:
            out.append((None, exc))
    return out


def assert_all_equal(reference, payloads: list, got: list[tuple]) -> None:
    for payload, (value, error) in zip(payloads, got):
        mismatch = reference.expected(payload).mismatch(value, error)
        assert mismatch is None, f"{payload!r:.100}: {mismatch}"


@pytest.fixture(scope="module")
def rag():
    from alto_workers.apps.rag.reference import Reference
    return Reference()


@pytest.mark.parametrize("stream", [True, False], ids=["by-sentence", "whole-answer"])
def test_rag_answers_equal_the_reference_and_stream_by_sentence(rag, stream):
    questions = rag.requests(60)
    bad = ["   ", 42, {"question": "x" * 600}]
    topo = variant("rag", answer={"stream": stream}, rerank={"replicas": 2})
    with running(topo) as sup, Client(sup.addresses["gateway"]) as client:
        got = outcomes(client, [*questions, *bad])
        parts = list(client.stream(questions[2]))
    assert_all_equal(rag, [*questions, *bad], got)
    assert [e.stage for _, e in got[len(questions):]] == ["question"] * 3
    assert "the question is empty" in str(got[-3][1]) and "more than 500" in str(got[-1][1])
    # The stream is the answer's sentences, one item each, in order.
    expected = rag.expected(questions[2]).value
    assert len(expected) >= 2
    assert [(p.path, p.data, p.final) for p in parts] == [((i,), s, True) for i, s in enumerate(expected)]


def test_rag_results_depend_on_both_retrievers(rag):
    # Guards the test above against a reference that would agree with anything: fusing
    # one retriever's list alone changes the answers of some questions.
    from alto_workers.apps.rag import handlers
    from alto_workers.apps.rag.workload import answer_text

    changed = 0
    for q in rag.workload.questions:
        item = handlers.question(q.question)
        alone = handlers.fuse({"bm25": [rag.bm25(item)], "dense": []})
        text = answer_text(q.question, alone["passages"], q)
        changed += text != answer_text(q.question, rag.joined(q.question)["passages"], q)
    assert changed >= 20


@pytest.fixture(scope="module")
def agent():
    from alto_workers.apps.agent.reference import Reference
    return Reference()


def test_agent_answers_or_hits_max_turns_exactly_as_the_reference(agent):
    questions = agent.requests(80)
    kinds = {t.question: t.kind for t in agent.workload.tasks}
    errors = [q for q in questions if agent.expected(q).is_error]
    # The workload holds loops that hit max_turns, and ones that stop right at the limit.
    assert errors and all(kinds[q] == "missing" for q in errors)
    assert any(agent.run(q)[1] == agent.max_turns and not agent.expected(q).is_error for q in questions)
    with running(variant("agent", tool={"replicas": 2})) as sup, Client(sup.addresses["gateway"]) as client:
        got = outcomes(client, [*questions, ""])
    assert_all_equal(agent, [*questions, ""], got)
    for q, (_, error) in zip(questions, got):
        if q in errors:
            assert error.stage == "think" and "more than max_turns 4 times" in error.message


def test_agent_with_a_higher_max_turns_lets_the_retrying_model_give_up_and_answer():
    from alto_workers.apps.agent.reference import Reference

    ref = Reference(max_turns=8)
    missing = [t.question for t in ref.workload.tasks if t.kind == "missing"][:5]
    with running(variant("agent", think={"max_turns": 8})) as sup, Client(sup.addresses["gateway"]) as client:
        got = outcomes(client, missing)
    assert_all_equal(ref, missing, got)
    assert all(v["steps"] == 8 and v["answer"].startswith("I could not find") for v, _ in got)


def test_mapreduce_summaries_equal_the_reference_per_document():
    from alto_workers.apps.mapreduce.reference import Reference

    ref = Reference()
    requests = ref.requests(30)
    bad = [{"documents": []}, {"documents": [{"title": "t", "text": " "}]}]
    with running(variant("mapreduce", reduce={"replicas": 2})) as sup, Client(sup.addresses["gateway"]) as client:
        got = outcomes(client, [*requests, *bad])
    assert_all_equal(ref, [*requests, *bad], got)
    assert [len(v) for v, _ in got[:30]] == [len(r["documents"]) for r in requests]
    assert "document 0 ('t') has no 'text'" in str(got[-1][1])
