"""Stages of the tool-using agent (``topology/agent.toml``), named there as ``module:function``.

    stage   kind                    item
    ------  ----------------------  ---------------------------------------------------------
    start   function (entry)        {"question", "scratchpad"}
    think   LM, whole text          the same + "action": a thought line and one action line;
            input [start, tool]     route = decide: "tool" (round again) or "answer" (out);
                                    max_turns: an item going round more often fails its request
    tool    function                runs the action's tool -> {"question", "scratchpad"} with
                                    "Action: ..." and "Observation: ..." lines added
    answer  function (sink)         {"question", "answer", "steps"}

Every item keeps the request's path, so a request's result is one value.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from alto_workers.apps.agent import tools
from alto_workers.apps.agent.workload import DEFAULT_SEED, OBSERVATION, generate

EMPTY_SCRATCHPAD = "(no steps yet)"
MAX_QUESTION_CHARS = 300
_CALL = re.compile(r"^CALL (\w+):\s*(.*)$")
_ANSWER = re.compile(r"^ANSWER:\s*(.*)$")


def start(payload: Any) -> dict[str, str]:
    """A request (the question text, or ``{"question": ...}``) -> the agent's first state."""
    q = payload.get("question") if isinstance(payload, dict) else payload
    if not isinstance(q, str) or not q.strip():
        raise ValueError(f"a request is a non-empty question (text) or {{'question': text}}; got {payload!r:.80}")
    if len(q) > MAX_QUESTION_CHARS:
        raise ValueError(f"the question has {len(q)} characters, more than {MAX_QUESTION_CHARS}")
    return {"question": q.strip(), "scratchpad": EMPTY_SCRATCHPAD}


def _action_line(item: dict) -> str:
    lines = [line.strip() for line in str(item.get("action", "")).splitlines() if line.strip()]
    return lines[-1] if lines else ""


def decide(item: dict) -> str:
    """Route of ``think``: a tool call goes round to ``tool``; anything else leaves to ``answer``
    (which refuses an output that is not an answer, naming it)."""
    return "tool" if _CALL.match(_action_line(item)) else "answer"


def tool(seed: int = DEFAULT_SEED) -> Callable[[dict], dict]:
    """Handler factory: runs the call in ``item["action"]`` against the workload's town table."""
    table = generate(seed).towns

    def handler(item: dict) -> dict:
        line = _action_line(item)
        m = _CALL.match(line)
        if m is None:
            raise ValueError(f"the tool stage got an action that is not a call: {line!r:.80}")
        name, argument = m.groups()
        seen = "" if item["scratchpad"] == EMPTY_SCRATCHPAD else item["scratchpad"] + "\n"
        step = f"Action: {name}: {argument}\n{OBSERVATION}{tools.run(table, name, argument)}"
        return {"question": item["question"], "scratchpad": seen + step}

    return handler


def answer(item: dict) -> dict[str, Any]:
    line = _action_line(item)
    m = _ANSWER.match(line)
    if m is None:
        raise ValueError(f"the model's output is neither a tool call nor an answer: {line!r:.80}")
    steps = sum(line.startswith("Action: ") for line in item["scratchpad"].splitlines())
    return {"question": item["question"], "answer": m.group(1), "steps": steps}
