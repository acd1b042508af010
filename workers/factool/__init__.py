"""The FacTool-style fact-verification application served by alto_bus.

* :mod:`.workload`  seeded questions, scripted LM outputs for every stage, and a corpus
* :mod:`.prompts`   the four prompt templates ("answer", "claims", "queries", "verify")
* :mod:`.handlers`  the non-LM glue stages (evidence grouping, the per-request verdict)
* :mod:`.reference` a single-process reference of the whole pipeline's results
"""
