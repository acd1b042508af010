"""Applications served by alto_bus beside the fact-verification pipeline (issue 14).

Each is a package with a seeded workload (``workload``), the handlers its topology names
(``handlers``) and a single-process reference that computes each request's exact result
(``reference``); the topology is ``topology/<name>.toml`` and ``scripts/run_app.py <name>``
runs it.

* :mod:`.rag`        two retrievers in parallel (BM25, dense), joined and reranked, an LM answer by sentence
* :mod:`.agent`      an LM that calls tools in a loop until it answers or hits ``max_turns``
* :mod:`.mapreduce`  long documents: chunks -> LM summaries -> per-document reduce -> final LM summary
"""
