"""Single-process reference of the agent: each request's exact result, or its loop error.

It runs the loop of ``topology/agent.toml`` in one process: ``think`` (the script standing
in for the LM, given the item the LM stage would render), its route, the tool, and the
``max_turns`` rule (an item that would go round more than ``max_turns`` times ends its
request in an error from ``think``).

CLI: ``python -m alto_workers.apps.agent.reference`` prints the workload's statistics.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from alto_workers.apps.agent import handlers
from alto_workers.apps.agent.workload import DEFAULT_SEED, DEFAULT_TASKS, generate, script
from alto_workers.apps.expect import Expected

MAX_TURNS = 4      # the topology's


class Reference:
    def __init__(self, seed: int = DEFAULT_SEED, n_tasks: int = DEFAULT_TASKS, max_turns: int = MAX_TURNS) -> None:
        self.workload = generate(seed, n_tasks)
        self.max_turns = max_turns
        self.model = script(seed, n_tasks)
        self.tool = handlers.tool(seed)

    def run(self, payload: Any) -> tuple[Expected, int]:
        """(the outcome, tool calls made)."""
        try:
            state = handlers.start(payload)
        except ValueError as exc:
            return Expected(error_stage="start", error_words=str(exc)), 0
        turns = 0
        while True:
            item = {**state, "action": self.model("think", json.dumps(state, sort_keys=True))}
            if handlers.decide(item) == "answer":
                try:
                    return Expected(handlers.answer(item)), turns
                except ValueError as exc:
                    return Expected(error_stage="answer", error_words=str(exc)), turns
            turns += 1
            if turns > self.max_turns:
                return Expected(error_stage="think", error_words=f"more than max_turns {self.max_turns} times"), turns
            state = self.tool(item)

    def expected(self, payload: Any) -> Expected:
        return self.run(payload)[0]

    def requests(self, n: int) -> list[Any]:
        tasks = self.workload.tasks
        return [tasks[i % len(tasks)].question for i in range(n)]


def summary(ref: Reference) -> dict[str, Any]:
    runs = [ref.run(t.question) for t in ref.workload.tasks]
    return {
        "tasks": len(runs), "kinds": dict(Counter(t.kind for t in ref.workload.tasks)),
        "tool_calls": dict(sorted(Counter(n for e, n in runs if not e.is_error).items())),
        "max_turns_errors": sum(e.is_error for e, _ in runs), "max_turns": ref.max_turns,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m alto_workers.apps.agent.reference",
                                 description="Statistics of the agent workload as the loop sees it.")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--n", type=int, default=DEFAULT_TASKS)
    ap.add_argument("--max-turns", type=int, default=MAX_TURNS)
    args = ap.parse_args(argv)
    for key, value in summary(Reference(args.seed, args.n, args.max_turns)).items():
        print(f"{key}: {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
