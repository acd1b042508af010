"""What a newcomer sends: a bare question to a one-field prompt, and text the shell unquoted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from alto_workers.factool.handlers import build_verdict
from alto_workers.lm.worker import PromptError, Template


def test_a_bare_value_fills_a_one_field_prompt_and_a_map_is_kept():
    t = Template("Q: {question}")
    assert t.as_map("Who wrote Hamlet?") == {"question": "Who wrote Hamlet?"}
    assert t.render("Who wrote Hamlet?") == "Q: Who wrote Hamlet?"
    assert t.as_map({"question": "x", "id": 3}) == {"question": "x", "id": 3}


def test_a_bare_value_for_a_prompt_of_several_fields_is_refused_naming_them():
    with pytest.raises(PromptError, match=r"needs a map with the fields \['claim', 'passages'\]"):
        Template("{claim} {passages}").as_map("just text")


def test_an_unreadable_verdict_says_why_its_factuality_is_null():
    result = build_verdict([{"_path": [1, 0], "claim": "c", "verdict": "lorem ipsum", "passages": []}])
    (claim,) = result["claims"]
    assert claim["factual"] is None and "outside the bundled workload" in claim["reason"]


def test_submit_of_unquoted_text_gets_a_hint_before_any_connection():
    out = subprocess.run([sys.executable, "-m", "alto_bus", "submit", "--gateway", "tcp://127.0.0.1:9",
                          "hello"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "not JSON" in out.stderr and "'\"hello\"'" in out.stderr
