"""A stage that spawns a process of its own when it loads, as an LM stage's vLLM engine
core does: a ``sleep`` left in the instance's process group, its pid appended to the file
named by ``ALTO_TEST_SPAWNED`` (tests of what an instance leaves behind when it dies)."""

from __future__ import annotations

import os
import subprocess

_helper = subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL)
with open(os.environ["ALTO_TEST_SPAWNED"], "a") as f:
    f.write(f"{os.getpid()} {_helper.pid}\n")


def upper(text: str) -> str:
    return text.upper()
