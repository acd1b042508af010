"""The pure parts of the applications in workers/apps/: retrievers, fusion, tools, routes, chunks."""

from __future__ import annotations

import pytest

from alto_workers.apps.agent import handlers as agent
from alto_workers.apps.agent import tools
from alto_workers.apps.agent.workload import generate as agent_workload
from alto_workers.apps.expect import Expected
from alto_workers.apps.mapreduce.handlers import chunks, documents
from alto_workers.apps.rag import handlers as rag
from alto_workers.apps.rag.dense import DenseIndex, embed
from alto_workers.apps.rag.workload import generate as rag_workload

PASSAGES = [{"id": "b", "text": "Borvik has a population of 1200."},
            {"id": "a", "text": "Borvik has a population of 1200."},
            {"id": "c", "text": "The mayor of Tamlun is Anna Selmor."}]


def test_dense_search_ranks_by_cosine_breaks_ties_by_id_and_matches_word_pieces():
    index = DenseIndex(PASSAGES, dim=256)
    hits = index.search("How populated is Borvik?", k=3)
    assert [h["id"] for h in hits] == ["a", "b", "c"] and hits[0]["score"] == hits[1]["score"] > hits[2]["score"]
    # "populated" shares trigrams with "population": a dense match BM25 would not make.
    assert index.search("populated", k=1)[0]["score"] > 0
    assert embed("", 64).any() == False  # noqa: E712  (no words: the zero vector)
    with pytest.raises(ValueError, match="non-empty"):
        index.search("  ")


def test_fusion_is_reciprocal_rank_and_does_not_depend_on_which_branch_came_first():
    one = {"question": "q", "passages": [{"id": "x", "text": "X.", "score": 9.0}, {"id": "y", "text": "Y.", "score": 1.0}]}
    two = {"question": "q", "passages": [{"id": "y", "text": "Y.", "score": 0.9}, {"id": "z", "text": "Z.", "score": 0.5}]}
    fused = rag.fuse({"bm25": [one], "dense": [two]})
    assert [p["id"] for p in fused["passages"]] == ["y", "x", "z"]   # y is in both lists
    assert rag.fuse({"dense": [two], "bm25": [one]}) == fused
    assert fused["context"].splitlines()[0] == "[y] Y."
    with pytest.raises(ValueError, match="no retriever results"):
        rag.fuse({"bm25": [], "dense": []})


def test_the_rag_workload_is_a_pure_function_of_its_seed():
    a, b = rag_workload(1), rag_workload(2)
    rag_workload.cache_clear()
    assert rag_workload(1) == a and a != b
    assert len({q.question for q in a.questions}) == len(a.questions)
    assert all(any(q.fact in p["text"] for p in a.corpus) for q in a.questions)


def test_calc_does_integer_arithmetic_and_nothing_else():
    assert tools.calc("(12 + 5) * 3 - 1") == "50" and tools.calc("7 // 2") == "3"
    assert tools.calc("__import__('os')").startswith("error: not integer arithmetic")
    assert tools.calc("1 / 0").startswith("error") and tools.calc("7 // 0") == "error: division by zero"
    assert tools.calc("2 * (").startswith("error: cannot parse")
    assert tools.calc("99999999 * 99999999 * 99999999").startswith("error: a result above")
    assert tools.lookup({"Borvik": 1200}, "Borvik population") == "1200"
    assert tools.lookup({"Borvik": 1200}, "Tamlun population") == "not found: Tamlun"
    assert tools.run({}, "shell", "ls").startswith("error: unknown tool 'shell'")


def test_the_route_sends_calls_round_and_everything_else_out_where_it_is_refused_by_name():
    assert agent.decide({"action": "Thought: x\nCALL calc: 1 + 2"}) == "tool"
    assert agent.decide({"action": "Thought: x\nANSWER: 3"}) == "answer"
    assert agent.decide({"action": "I am not sure"}) == "answer"
    with pytest.raises(ValueError, match="neither a tool call nor an answer: 'I am not sure'"):
        agent.answer({"question": "q", "scratchpad": "(no steps yet)", "action": "I am not sure"})
    step = agent.tool(1)({"question": "q", "scratchpad": agent.EMPTY_SCRATCHPAD, "action": "CALL calc: 2 * 3"})
    assert step == {"question": "q", "scratchpad": "Action: calc: 2 * 3\nObservation: 6"}
    assert len(agent_workload(1).tasks) == len({t.question for t in agent_workload(1).tasks})


def test_chunks_pack_whole_paragraphs_and_bad_documents_are_refused_naming_them():
    text = "\n\n".join(" ".join(["w"] * n) for n in (100, 40, 30, 200, 5))
    assert [len(c.split()) for c in chunks(text, limit=150)] == [140, 30, 200, 5]
    with pytest.raises(ValueError, match=r"document 1 \('b'\) has no 'text'"):
        list(documents({"documents": [{"title": "a", "text": "x"}, {"title": "b", "text": ""}]}))
    assert list(documents({"title": "a", "text": "x"})) == [{"title": "a", "text": "x"}]


def test_expected_says_what_differs():
    class Err(Exception):
        stage = "think"

    assert Expected([1]).mismatch([1]) is None and "got [2]" in Expected([1]).mismatch([2])
    e = Expected(error_stage="think", error_words="max_turns 4")
    assert e.mismatch(error=Err("went round more than max_turns 4 times")) is None
    assert "got the value" in e.mismatch(value=1) and "saying" in e.mismatch(error=Err("other"))
