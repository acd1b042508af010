"""The sim engine's pure core: parameters, tokenizer, KV cache, scheduler."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from alto_workers.lm.sim_model import (
    EOS_ID,
    VOCAB_SIZE,
    KVCache,
    SimCore,
    SimParams,
    SimSeq,
    block_hashes,
    split_pieces,
    tokenize,
)

# ------------------------------------------------------------------- parameters


def test_defaults_follow_sim_facts():
    p = SimParams()
    assert p.step_time(1, 2049, 0) == pytest.approx(0.1366, abs=1e-4)     # 2,048-token prefill
    assert p.step_time(1, 1, 0) == pytest.approx(0.012045)               # light-load decode
    assert p.step_time(32, 32, 32 * 4096) == pytest.approx(0.0226, abs=1e-4)
    assert p.num_blocks() == 410_000 // 16
    assert (p.max_num_seqs, p.max_num_batched_tokens, p.block_size) == (256, 2048, 16)


def test_from_dict_overrides_and_rejects_unknown_keys():
    p = SimParams.from_dict({"max_num_seqs": 8, "time_scale": 0.5, "kv_capacity_tokens": 4096.0})
    assert (p.max_num_seqs, p.time_scale, p.kv_capacity_tokens) == (8, 0.5, 4096)
    assert isinstance(p.kv_capacity_tokens, int)
    with pytest.raises(ValueError, match="'max_batch'"):
        SimParams.from_dict({"max_batch": 3})
    with pytest.raises(ValueError, match="'block_size'"):
        SimParams.from_dict({"block_size": 0})
    with pytest.raises(ValueError, match="'enable_prefix_caching'"):
        SimParams.from_dict({"enable_prefix_caching": 1})
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        SimParams.from_dict({"max_num_batched_tokens": 64})
    h100 = SimParams.from_dict({"preset": "h100-llama3-8b"})
    assert (h100.step_base_ms, h100.max_num_seqs) == (7.0, 1024)
    with pytest.raises(ValueError, match="'tpu'"):
        SimParams.from_dict({"preset": "tpu"})


# -------------------------------------------------------------------- tokenizer


@given(st.text())
def test_pieces_join_back_and_ids_are_in_the_vocabulary(text):
    pieces, ids = tokenize(text)
    assert "".join(pieces) == text
    assert all(3 <= i < VOCAB_SIZE and i != EOS_ID for i in ids)
    assert tokenize(text) == (pieces, ids)


def test_about_four_characters_a_token():
    prose = (
        "The committee reviewed the proposal after a long debate in the spring of 2019. "
        "Researchers published the results of the survey, which covered about 3.5 million "
        "households across the country, and several officials questioned the method."
    )
    assert 3.5 <= len(prose) / len(split_pieces(prose)) <= 4.5


def test_block_hashes_chain():
    a = tokenize("shared system prompt " * 20 + "the first question, asked at length " * 4)[1]
    b = tokenize("shared system prompt " * 20 + "another question entirely, also long " * 4)[1]
    ha, hb = block_hashes(a, 16), block_hashes(b, 16)
    assert len(ha) == len(a) // 16
    common = next(i for i, (x, y) in enumerate(zip(ha, hb, strict=False)) if x != y)
    assert common >= 5                       # the shared prefix matches...
    # ...and nothing after it
    assert all(x != y for x, y in zip(ha[common:], hb[common:], strict=False))
    # same block content at a different position: a different hash (chained)
    assert block_hashes([7] * 32, 16)[0] != block_hashes([7] * 32, 16)[1]


# --------------------------------------------------------------------- KV cache


def test_kv_cache_lru_eviction_prefers_free_blocks_then_oldest():
    kv = KVCache(4)
    assert kv.allocate([], 2)
    assert kv.register(101) and kv.register(102)
    kv.release([101, 102], 0)                 # both idle: 102 (the tail) is released first
    assert kv.available() == 4 and kv.cached() == 2
    assert kv.allocate([], 3)                 # 2 free blocks, then evict the oldest idle one
    assert 102 not in kv and 101 in kv and kv.evictions == 1
    assert not kv.allocate([], 2)             # 1 left
    assert kv.match([101, 5]) == 1


def test_kv_cache_pinned_hits_are_not_evictable():
    kv = KVCache(3)
    assert kv.allocate([], 1) and kv.register(9)
    kv.release([9], 0)
    assert not kv.allocate([9], 3)            # reviving 9 leaves only 2 free blocks
    assert kv.allocate([9], 2)
    assert kv.available() == 0 and 9 in kv


# -------------------------------------------------------------------- scheduler


def seq(rid: str, prompt: int, out: int, name: str = "p", shared: int = 0) -> SimSeq:
    hashes = [hash(("s", i)) if i < shared else hash((rid, i)) for i in range(prompt // 16)]
    return SimSeq(rid, name, prompt, hashes, out)


def drain(core: SimCore, limit: int = 100_000) -> list:
    results = []
    while core.has_work():
        res = core.step()
        assert res is not None
        results.append(res)
        assert len(results) < limit
    return results


def params(**kw) -> SimParams:
    return SimParams.from_dict(kw)


def test_one_sequence_step_by_step():
    core = SimCore(params())
    s = seq("a", 100, 5)
    core.add(s)
    steps = drain(core)
    assert len(steps) == 5                            # prefill makes token 1, then 4 decodes
    assert steps[0].started == [s] and steps[0].prefill_tokens == 100
    assert steps[-1].finished == [s]
    assert [s.generated(k) for k in range(7)] == [0, 1, 2, 3, 4, 5, 5]
    assert core.decode_tokens() == 5 and core.prompts["p"].running == 0
    assert core.kv.available() == core.kv.num_blocks


def test_concurrent_sequences_batch():
    core = SimCore(params())
    core.add(seq("solo", 64, 50))
    solo = len(drain(core))
    core = SimCore(params())
    for i in range(32):
        core.add(seq(f"r{i}", 64, 50))
    batched = drain(core)
    assert len(batched) <= solo + 2                    # not 32 x solo
    assert max(r.batch for r in batched) == 32
    assert core.decode_tokens() == 32 * 50


def test_chunked_prefill_and_token_budget():
    core = SimCore(params())
    long = seq("long", 2048, 2)
    core.add(long)
    steps = drain(core)
    assert [r.prefill_tokens for r in steps[:4]] == [512] * 4      # chunks of 512
    assert steps[3].started == [long]
    ttft = sum(r.duration for r in steps[:4])
    assert ttft == pytest.approx(0.1368, abs=1e-3)                 # TensorRT-LLM: 133 ms
    core = SimCore(params(max_prefill_chunk=4096))
    for i in range(3):
        core.add(seq(f"r{i}", 1000, 2))
    first = core.step()
    assert first.prefill_tokens == 2048 and first.batch == 3       # budget caps the step


def test_max_num_seqs_limits_the_batch():
    core = SimCore(params(max_num_seqs=4))
    for i in range(10):
        core.add(seq(f"r{i}", 32, 20))
    steps = drain(core)
    assert max(r.batch for r in steps) == 4
    assert core.finished == 10


def test_admission_waits_for_kv_capacity():
    # 160 tokens (10 blocks) each; the cache holds 16 blocks: one at a time.
    core = SimCore(params(kv_capacity_tokens=256, enable_prefix_caching=False))
    a, b = seq("a", 96, 64), seq("b", 96, 64)
    core.add(a)
    core.add(b)
    first = core.step()
    assert first.started == [a]
    assert core.prompts["p"].waiting == 1 and core.prompts["p"].running == 1
    steps = [first, *drain(core)]
    a_end = next(i for i, r in enumerate(steps) if a in r.finished)
    b_start = next(i for i, r in enumerate(steps) if b in r.started)
    assert b_start == a_end + 1                        # admitted as soon as a's blocks free
    with pytest.raises(ValueError, match="needs 400 tokens"):
        core.add(seq("huge", 300, 100))
    with pytest.raises(ValueError, match="prompt token"):
        core.add(seq("empty", 0, 3))


def test_prefix_cache_skips_shared_blocks():
    core = SimCore(params())
    core.add(seq("a", 1024, 4, shared=60))             # 60 of 64 blocks shared
    drain(core)
    assert core.prompts["p"].prefill == 1024
    core.add(seq("b", 1024, 4, shared=60))
    drain(core)
    assert core.prompts["p"].prefill == 1024 + 4 * 16  # only the 4 new blocks computed
    assert core.prompts["p"].cached == 60 * 16
    assert (core.cache_queries, core.cache_hits) == (2048, 960)


def test_fully_cached_prompt_still_computes_a_block():
    core = SimCore(params())
    core.add(seq("a", 256, 2, shared=16))
    core.add(seq("b", 256, 2, shared=16))
    steps = drain(core)
    assert steps[0].prefill_tokens == 512              # both admitted before a's blocks existed
    core.add(seq("c", 256, 2, shared=16))
    assert core.step().prefill_tokens == 16


def test_prefix_cache_lru_eviction():
    # 24 blocks: room for one 16-block prompt (+2 decode blocks) and a bit.
    core = SimCore(params(kv_capacity_tokens=24 * 16))
    old = seq("old", 256, 2, shared=0)
    core.add(old)
    drain(core)
    assert core.kv.cached() == 16
    core.add(seq("new", 256, 2))                       # needs 17 blocks, 8 are free
    drain(core)
    assert core.kv.evictions == 9
    core.add(SimSeq("again", "p", 256, list(old.hashes), 2))
    drain(core)
    # the tail of "old" went first, so its head can still be hit
    assert core.prompts["p"].cached == 7 * 16


def test_prefix_caching_off():
    core = SimCore(params(enable_prefix_caching=False))
    for r in ("a", "b"):
        core.add(seq(r, 512, 2, shared=32))
        drain(core)
    assert core.prompts["p"].prefill == 1024 and core.kv.cached() == 0
    assert core.cache_queries == 0


@pytest.mark.parametrize("where", ["waiting", "prefill", "decode"])
def test_abort_frees_everything(where):
    core = SimCore(params(max_num_seqs=1))
    first, s = seq("first", 32, 30), seq("s", 1024, 30)
    if where != "waiting":
        first = None
    else:
        core.add(first)
    core.add(s)
    core.step()
    if where == "decode":
        for _ in range(3):
            core.step()
    assert core.abort(s)
    assert not core.abort(s)
    c = core.prompts["p"]
    assert c.waiting == 0 and (c.running == (1 if first else 0))
    drain(core)
    assert core.kv.available() == core.kv.num_blocks
    expect = 30 if first else 0
    # decode: the 1,024-token prompt took 2 steps; 2 more steps made 3 tokens in all
    assert c.decode_tokens(core.steps) == expect + (3 if where == "decode" else 0)


def test_decoding_is_constant_work_per_step():
    core = SimCore(params())
    for i in range(100):
        core.add(seq(f"r{i}", 16, 1000))
    core.step()
    assert core.decoding == 100
    # the steady-state step touches no sequence: only the ends dict and counters
    ends_before = dict(core._ends)
    res = core.step()
    assert res.started == [] and res.finished == [] and core._ends == ends_before
