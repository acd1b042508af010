"""FacTool workload: the generator, the default file, prompts, glue handlers, the reference."""

from __future__ import annotations

import json
import os
import random
import statistics
from collections import Counter

import pytest

from alto_workers.factool import handlers, prompts
from alto_workers.factool.reference import Reference, split_lines, split_sentences
from alto_workers.factool.workload import DEFAULT_PATH, PROMPT_NAMES, Workload
from alto_workers.factool.workload_gen import generate
from alto_workers.retrieve import BM25Index


@pytest.fixture(scope="module")
def default() -> Workload:
    return Workload.load(DEFAULT_PATH)


@pytest.fixture(scope="module")
def traces(default):
    ref = Reference(default)
    return ref, [ref.trace(q["question"]) for q in default.questions]


# --- the generator and the default file ---------------------------------------------


def test_default_file_loads_and_is_small(default):
    assert os.path.getsize(DEFAULT_PATH) < 500_000
    assert len(default.questions) == 200
    assert len({q["id"] for q in default.questions}) == 200
    assert set(default.script) == set(PROMPT_NAMES)
    assert all(set(p) == {"id", "text"} for p in default.corpus)


def test_default_file_is_what_the_cli_makes(default):
    # The committed file must be reproducible from the code (seed 1, 200 questions).
    fresh = generate(200, 1)
    assert fresh.script == default.script
    assert fresh.corpus == default.corpus
    assert fresh.questions == default.questions


def test_generator_is_deterministic_per_seed(tmp_path):
    a, b, c = generate(15, 7), generate(15, 7), generate(15, 8)
    assert (a.questions, a.script, a.corpus) == (b.questions, b.script, b.corpus)
    assert a.script != c.script
    a.save(tmp_path / "a.json.gz")
    b.save(tmp_path / "b.json.gz")
    assert (tmp_path / "a.json.gz").read_bytes() == (tmp_path / "b.json.gz").read_bytes()
    back = Workload.load(tmp_path / "a.json.gz")
    assert (back.questions, back.script, back.corpus, back.labels) == (
        a.questions, a.script, a.corpus, a.labels)


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.json.gz"):
        Workload.load(tmp_path / "missing.json.gz")
    bad = tmp_path / "old.json"
    bad.write_text(json.dumps({"version": 0}))
    with pytest.raises(ValueError, match="old.json"):
        Workload.load(bad)


def test_script_lookup(default):
    q = default.questions[0]["question"]
    assert default.script_lookup("answer", q)
    assert default.script_lookup("answer", "not a question") is None
    assert default.script_lookup("nonexistent prompt", q) is None


def test_claims_of_a_whole_answer_are_its_sentences_claims_in_order(traces, default):
    # FacTool's claim extraction reads the whole answer (the baseline topology does).
    _, trs = traces
    for tr in trs:
        answer = default.script_lookup("answer", tr.question)
        whole = default.script_lookup("claims", answer)
        assert split_lines(whole) == [c for per_sentence in tr.claims for c in per_sentence]
        assert [line.split(".")[0] for line in whole.splitlines()] == \
            [str(i) for i in range(1, len(split_lines(whole)) + 1)]
    assert default.script_lookup("claims", "Two sentences. Nobody scripted them.") is None


def test_every_lookup_hits_and_every_key_is_used(traces, default):
    ref, _ = traces     # the strict reference raised already if a lookup missed
    used = Counter(ref.lookups)
    scripted = {(p, k) for p, keys in default.script.items() for k in keys}
    assert set(used) == scripted
    # Unique keys: no two sentences share a claim, no two answers share a sentence.
    assert max(used.values()) == 1


def test_distributions_roughly_hold(traces, default):
    _, trs = traces
    sents = [len(t.sentences) for t in trs]
    per_sentence = Counter(len(c) for t in trs for c in t.claims)
    per_answer = [sum(map(len, t.claims)) for t in trs]
    per_claim = Counter(len(q) for t in trs for q in t.queries)
    assert min(sents) == 2 and max(sents) == 8
    assert 4.0 < statistics.mean(sents) < 5.2
    assert set(per_sentence) == {0, 1, 2, 3}
    assert 0.08 < per_sentence[0] / sum(per_sentence.values()) < 0.22
    assert set(per_claim) == {1, 2, 3}
    assert 1.8 < sum(k * v for k, v in per_claim.items()) / sum(per_claim.values()) < 2.2
    assert len(set(per_answer)) >= 8           # fan-out varies from request to request
    false = sum(not v["factual"] for v in default.labels.values()) / len(default.labels)
    assert 0.10 < false < 0.20
    lengths = [len(p["text"].split()) for p in default.corpus]
    assert 10 <= min(lengths) and max(lengths) <= 100


def test_outputs_are_formatted_like_an_lm(default):
    for claim, out in default.script["verify"].items():
        verdict = json.loads(out)
        assert set(verdict) == {"reasoning", "factuality"}
        assert verdict["factuality"] is default.labels[claim]["factual"]
    for out in default.script["claims"].values():
        lines = out.splitlines()
        assert all(line.startswith(f"{i}. ") for i, line in enumerate(lines, 1))
    assert all(all(line.startswith("- ") for line in out.splitlines())
               for out in default.script["queries"].values())
    for answer in default.script["answer"].values():
        assert "\n" not in answer and answer.endswith(".")


def test_bm25_finds_the_evidence_of_most_claims(default):
    idx = BM25Index(default.corpus)
    found = 0
    for claim, label in default.labels.items():
        queries = split_lines(default.script["queries"][claim])
        found += any(p["id"] == label["passage"] for q in queries for p in idx.search(q, 3))
    assert found / len(default.labels) > 0.95


def test_reference_results_are_consistent(traces, default):
    _, trs = traces
    for t in trs:
        res = t.result
        assert res["n_claims"] == len(res["claims"]) == sum(map(len, t.claims))
        assert res["factual"] == all(c["factual"] for c in res["claims"])
        for c in res["claims"]:
            assert c["factual"] is default.labels[c["claim"]]["factual"]
            assert 1 <= len(c["evidence"]) <= 9
    assert 0.2 < statistics.mean(t.result["factual"] for t in trs) < 0.7
    assert any(t.result["n_claims"] == 0 and t.result["factual"] for t in trs)


# --- splitting rules --------------------------------------------------------------------


def test_split_sentences_and_lines():
    text = "Bridal is a town. It has 12,400 people? Yes! it does. Done."
    assert split_sentences(text) == ["Bridal is a town.", "It has 12,400 people?",
                                     "Yes! it does.", "Done."]
    assert split_lines("1. First claim.\n\n2) Second\n- third\n* fourth\n  plain  \n") == [
        "First claim.", "Second", "third", "fourth", "plain"]
    assert split_lines("") == []


# --- prompts ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,size", [("claims", 2300), ("claims_answer", 2300), ("queries", 1200),
                                       ("verify", 1350)])
def test_prompt_fixed_parts_are_sized_like_factool(name, size):
    assert abs(len(prompts.fixed_part(name)) - size) < 0.1 * size


def test_prompts_render_from_items():
    assert len(prompts.fixed_part("answer")) < 600
    item = {"question": "Who?", "sentence": "S.", "answer": "A.", "claim": "C.", "evidence": "[1] E."}
    for name, key_field in prompts.SCRIPT_KEY_FIELD.items():
        text = prompts.render(name, item)
        assert text.startswith(prompts.fixed_part(name)) and item[key_field] in text
    assert '"factuality"' in prompts.render("verify", item)   # braces survive formatting
    with pytest.raises(KeyError, match="evidence"):
        prompts.render("verify", {"claim": "C."})


# --- glue handlers ----------------------------------------------------------------------


def _p(pid: str, score: float) -> dict:
    return {"id": pid, "text": f"text of {pid}", "score": score}


def test_verify_input_merges_evidence_independently_of_order():
    group = [{"claim": "C.", "query": "q1", "passages": [_p("a", 2.0), _p("b", 1.0)]},
             {"claim": "C.", "query": "q2", "passages": [_p("b", 3.0), _p("c", 1.0)]},
             {"claim": "C.", "query": "q3", "passages": []}]
    out = handlers.build_verify_input(group)
    assert out["claim"] == "C."
    assert [(p["id"], p["score"]) for p in out["passages"]] == [("b", 3.0), ("a", 2.0),
                                                                ("c", 1.0)]
    assert out["evidence"].splitlines()[0] == "[1] text of b"
    rng = random.Random(0)
    for _ in range(5):
        shuffled = group[:]
        rng.shuffle(shuffled)
        assert handlers.build_verify_input(shuffled) == out
    bare = handlers.build_verify_input([g["passages"] for g in group], claim="C.")
    assert bare == out
    with pytest.raises(ValueError, match="no claim"):
        handlers.build_verify_input([[_p("a", 1.0)]])
    empty = handlers.build_verify_input([{"claim": "C.", "passages": []}])
    assert empty["evidence"] == handlers.NO_EVIDENCE


def test_parse_verdict_tolerates_lm_noise():
    assert handlers.parse_verdict('{"reasoning": "ok", "factuality": true}') == (True, "ok")
    fenced = '```json\n{"reasoning": "no", "factuality": false}\n```'
    assert handlers.parse_verdict(fenced) == (False, "no")
    assert handlers.parse_verdict('Sure: {"factuality": "False"} done') == (False, "")
    assert handlers.parse_verdict("I cannot tell.") == (None, "")
    assert handlers.parse_verdict('{"factuality": 1}') == (None, "")


def test_verdict_counts_missing_verdicts_as_factual_and_keeps_path_order():
    items = [{"claim": "A.", "passages": [_p("a", 1.0)], "verdict": '{"factuality": true}'},
             {"claim": "B.", "passages": [], "verdict": "garbled"},
             {"claim": "C.", "passages": [], "verdict": '{"factuality": false}'}]
    res = handlers.build_verdict(items)
    assert res["factual"] is False and res["n_claims"] == 3 and res["n_false"] == 1
    assert [c["factual"] for c in res["claims"]] == [True, None, False]
    assert res["claims"][0]["evidence"] == [_p("a", 1.0)]
    assert handlers.build_verdict(items[:2])["factual"] is True
    assert handlers.build_verdict([]) == {"factual": True, "n_claims": 0, "n_false": 0,
                                          "claims": []}
    pairs = [([7, 1, 0], items[2]), ([7, 0, 1], items[1]), ([7, 0, 0], items[0])]
    assert handlers.build_verdict(pairs) == res


def test_glue_runs_as_aggregate_callables():
    # The aggregate stage calls f(payloads) or f(payloads, group_path) by arity: the glue
    # must take the one-argument form.
    aggregate = pytest.importorskip("alto_workers.aggregate")
    agg = aggregate.Aggregator(3, aggregate.make_operator(
        "alto_workers.factool.handlers:build_verify_input"))
    out = agg.data((5, 0, 1, 1), {"claim": "C.", "query": "b", "passages": [_p("x", 1.0)]})
    out += agg.data((5, 0, 1, 0), {"claim": "C.", "query": "a", "passages": [_p("y", 2.0)]})
    out += agg.end((5, 0, 1), 2)
    assert out == [((5, 0, 1), handlers.build_verify_input(
        [{"claim": "C.", "passages": [_p("x", 1.0), _p("y", 2.0)]}]))]
    verdict = aggregate.make_operator("alto_workers.factool.handlers:build_verdict")
    assert verdict.group([], (5,))["factual"] is True


def test_streaming_splitters_agree_with_the_reference_rules(default):
    # The pipeline splits LM streams with alto_workers.lm.splitters; the reference's results
    # hold only if both split every scripted output the same way, however it is chunked.
    splitters = pytest.importorskip("alto_workers.lm.splitters")
    rng = random.Random(3)

    def stream(kind: str, text: str) -> list[str]:
        sp, out, i = splitters.make_splitter(kind), [], 0
        while i < len(text):
            n = rng.randint(1, 12)
            out += sp.feed(text[i:i + n])
            i += n
        return [s.strip() for s in out + sp.finish()]

    for answer in default.script["answer"].values():
        assert stream("sentences", answer) == split_sentences(answer)
    for prompt in ("claims", "queries"):
        for text in default.script[prompt].values():
            assert stream("lines", text) == split_lines(text)
