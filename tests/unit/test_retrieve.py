"""BM25 retriever: scores, ranking, determinism, corpus loading, the runtime handler."""

from __future__ import annotations

import gzip
import itertools
import json
import math
import random
import time
from collections import Counter

import pytest

from alto_workers import retrieve
from alto_workers.retrieve import BM25Index, load_corpus, make_handler, tokenize


def docs(*texts: str) -> list[dict[str, str]]:
    return [{"id": f"d{i}", "text": t} for i, t in enumerate(texts, 1)]


def test_tokenize_lowercases_and_drops_stop_words():
    assert tokenize("The Danube, in 1867, FLOWS-into the Black Sea!") == [
        "danube", "1867", "flows", "into", "black", "sea"]
    assert tokenize("  ") == []


def test_scores_match_hand_computation():
    # N = 3, lengths 3, 2, 4, avgdl = 3, k1 = 1.2, b = 0.75.
    idx = BM25Index(docs("apple banana apple", "banana cherry", "cherry date elderberry fig"))
    (top,) = idx.search("apple", k=1)
    # apple: df 1, idf = ln(1 + 2.5/1.5); d1: tf 2, |d| = avgdl -> 2 * 2.2 / (2 + 1.2).
    assert top["id"] == "d1"
    assert top["score"] == pytest.approx(math.log(1 + 2.5 / 1.5) * 4.4 / 3.2, abs=1e-6)

    res = idx.search("banana cherry", k=3)
    idf = math.log(1 + 1.5 / 2.5)        # both terms have df 2
    w_d2 = 2.2 / (1 + 1.2 * (0.25 + 0.75 * 2 / 3))   # tf 1 in a 2-word doc
    w_d1 = 2.2 / (1 + 1.2)                           # tf 1 in a 3-word doc
    w_d3 = 2.2 / (1 + 1.2 * (0.25 + 0.75 * 4 / 3))   # tf 1 in a 4-word doc
    assert [r["id"] for r in res] == ["d2", "d1", "d3"]
    assert [r["score"] for r in res] == pytest.approx(
        [2 * idf * w_d2, idf * w_d1, idf * w_d3], abs=1e-6)


def test_k1_and_b_are_used():
    corpus = docs("apple apple apple pear pear pear pear pear", "apple kiwi")
    plain = BM25Index(corpus, k1=1.2, b=0.0)     # no length normalisation: tf wins
    normed = BM25Index(corpus, k1=1.2, b=1.0)    # full normalisation: the short doc wins
    assert plain.search("apple", 1)[0]["id"] == "d1"
    assert normed.search("apple", 1)[0]["id"] == "d2"
    with pytest.raises(ValueError, match="k1"):
        BM25Index(corpus, b=1.5)


def test_relevant_passage_ranks_first():
    idx = BM25Index(docs(
        "The Kesmar is a river in the Olvar province and is 420 kilometres long.",
        "Alda Verrenhof was a composer born in Tarnholm in 1847.",
        "Tarnholm is a town on the Kesmar river known for glassmaking.",
        "Alda Verrenhof composed the opera The Glass Orchard in 1874.",
        "The Olvar province has many rivers and lakes.",
    ))
    assert idx.search("When was Alda Verrenhof born?", 1)[0]["id"] == "d2"
    assert idx.search("Alda Verrenhof opera Glass Orchard", 1)[0]["id"] == "d4"
    assert idx.search("How long is the Kesmar river?", 1)[0]["id"] == "d1"
    assert idx.search("glassmaking town", 1)[0]["id"] == "d3"


def test_ties_are_broken_by_id_also_at_the_k_boundary():
    corpus = [{"id": i, "text": "same words here"} for i in ("e", "b", "d", "a", "c")]
    idx = BM25Index(corpus)
    assert [r["id"] for r in idx.search("words", 5)] == ["a", "b", "c", "d", "e"]
    assert [r["id"] for r in idx.search("words", 2)] == ["a", "b"]


def test_empty_and_unmatched_queries():
    idx = BM25Index(docs("apple banana"))
    with pytest.raises(ValueError, match="empty query"):
        idx.search("   ", 3)
    assert idx.search("the of and", 3) == []     # only stop words
    assert idx.search("durian", 3) == []         # not in the corpus
    with pytest.raises(ValueError, match="k must be"):
        idx.search("apple", 0)


def test_bad_corpora_are_rejected():
    with pytest.raises(ValueError, match="no passages"):
        BM25Index([])
    with pytest.raises(ValueError, match="duplicate passage id 'x'"):
        BM25Index([{"id": "x", "text": "a"}, {"id": "x", "text": "b"}])
    with pytest.raises(ValueError, match="passage #0"):
        BM25Index([{"text": "no id"}])


def _brute_force(corpus, query, k, k1=1.2, b=0.75):
    """BM25 straight from the formula, one document at a time."""
    toks = [Counter(tokenize(p["text"])) for p in corpus]
    n, avgdl = len(corpus), sum(sum(t.values()) for t in toks) / len(corpus)
    qtf = Counter(tokenize(query))
    idf = {t: math.log(1 + (n - df + 0.5) / (df + 0.5))
           for t in qtf for df in [sum(1 for d in toks if d[t])]}
    scores = []
    for p, tf in zip(corpus, toks):
        dl = sum(tf.values())
        s = sum(qtf[t] * idf[t] * tf[t] * (k1 + 1) / (tf[t] + k1 * (1 - b + b * dl / avgdl))
                for t in qtf if tf[t])
        if s > 0:
            scores.append((-round(s, 9), p["id"]))  # rounded: equal scores tie exactly
    return [(pid, -neg) for neg, pid in sorted(scores)[:k]]


@pytest.mark.parametrize("sparse_limit", [0, 10**9])   # dense and sparse accumulation
def test_matches_brute_force_and_is_deterministic(monkeypatch, sparse_limit):
    monkeypatch.setattr(retrieve, "_SPARSE_LIMIT", sparse_limit)
    rng = random.Random(5)
    vocab = [f"w{i}" for i in range(40)]
    corpus = [{"id": f"p{i:04d}", "text": " ".join(rng.choices(vocab, k=rng.randint(3, 12)))}
              for i in range(400)]
    shuffled = corpus[:]
    rng.shuffle(shuffled)
    idx, idx2 = BM25Index(corpus), BM25Index(shuffled)
    for _ in range(20):
        q = " ".join(rng.choices(vocab, k=rng.randint(1, 4)))
        got = idx.search(q, 5)
        want = _brute_force(corpus, q, 5)
        assert [r["id"] for r in got] == [pid for pid, _ in want]
        assert [r["score"] for r in got] == pytest.approx([s for _, s in want], abs=1e-6)
        assert idx.search(q, 5) == got == idx2.search(q, 5)


def test_sparse_and_dense_paths_agree_exactly(monkeypatch):
    rng = random.Random(9)
    vocab = [f"w{i}" for i in range(30)]
    idx = BM25Index([{"id": str(i), "text": " ".join(rng.choices(vocab, k=8))}
                     for i in range(500)])
    queries = [" ".join(rng.choices(vocab, k=3)) for _ in range(20)]
    monkeypatch.setattr(retrieve, "_SPARSE_LIMIT", 0)
    dense = [idx.search(q, 10) for q in queries]
    monkeypatch.setattr(retrieve, "_SPARSE_LIMIT", 10**9)
    assert [idx.search(q, 10) for q in queries] == dense


def test_load_corpus_formats(tmp_path):
    passages = docs("alpha beta", "gamma delta")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text("".join(json.dumps(p) + "\n" for p in passages))
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt") as f:
        f.write(jsonl.read_text())
    wrapped = tmp_path / "w.json.gz"
    with gzip.open(wrapped, "wt") as f:
        json.dump({"corpus": passages, "other": 1}, f)
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps(passages[0]) + "\n")
    for path in (jsonl, gz, wrapped):
        assert load_corpus(path) == passages
    assert load_corpus(one) == passages[:1]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(passages[0]) + "\nnot json\n")
    with pytest.raises(ValueError, match="line 2"):
        load_corpus(bad)


def test_missing_corpus_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere.jsonl.gz"
    with pytest.raises(FileNotFoundError, match="nowhere.jsonl.gz"):
        make_handler(str(missing))


def test_handler_takes_strings_and_dict_fields(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in docs(
        "Alda Verrenhof was born in 1847.", "Tarnholm lies on the Kesmar river.")))
    h = make_handler(str(path), k=1)
    assert [p["id"] for p in h("Alda Verrenhof birth")] == ["d1"]
    hf = make_handler(str(path), k=2, field="query")
    assert hf({"query": "Kesmar river", "claim": "x"})[0]["id"] == "d2"
    carry = make_handler(str(path), k=1, field="query", out_field="passages")
    out = carry({"claim": "Tarnholm lies on the Kesmar.", "query": "Kesmar"})
    assert out["claim"] == "Tarnholm lies on the Kesmar." and out["passages"][0]["id"] == "d2"
    with pytest.raises(ValueError, match="no field 'query'"):
        hf({"q": "Kesmar"})
    with pytest.raises(ValueError, match="no 'field'"):
        h({"query": "Kesmar"})
    with pytest.raises(ValueError, match="empty query"):
        hf({"query": ""})


def test_query_time_on_10k_passages():
    rng = random.Random(0)
    words = [f"w{i}" for i in range(5000)]
    # Zipf-like: a few words occur in most passages (the dense path), most are rare.
    cum = list(itertools.accumulate(1 / (i + 1) for i in range(5000)))
    corpus = [{"id": f"p{i:05d}", "text": " ".join(rng.choices(words, cum_weights=cum, k=30))}
              for i in range(10_000)]
    idx = BM25Index(corpus)
    queries = [" ".join(rng.choices(words[20:], k=5)) + " w3" for _ in range(300)]
    start = time.perf_counter()
    for q in queries:
        idx.search(q, 3)
    per_query = (time.perf_counter() - start) / len(queries)
    assert per_query < 2e-3, f"{per_query * 1e6:.0f} us per query"
