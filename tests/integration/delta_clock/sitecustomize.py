"""Test-only: when ``ALTO_TEST_DELTA_LOG`` names a file prefix, every process that puts
this folder on its ``PYTHONPATH`` logs when each output comes out of the vLLM engine's
``generate()`` (``CLOCK_MONOTONIC``, machine-wide), one JSON line ``[prompt, time,
tokens]`` per output, into ``<prefix>.<pid>``. test_vllm_streaming_spread.py compares
these times with the outputs' arrival at the next stage.
"""

import os

if os.environ.get("ALTO_TEST_DELTA_LOG"):
    import json
    import time

    from alto_workers.lm import vllm_engine

    _generate = vllm_engine.VllmEngine.generate

    async def _timed_generate(self, request_id, prompt, params, **kwargs):
        with open(f"{os.environ['ALTO_TEST_DELTA_LOG']}.{os.getpid()}", "a", buffering=1) as log:
            async for out in _generate(self, request_id, prompt, params, **kwargs):
                log.write(json.dumps([prompt, time.monotonic(), len(out.token_ids)]) + "\n")
                yield out

    vllm_engine.VllmEngine.generate = _timed_generate
