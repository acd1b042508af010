"""The references' command line: print a workload's statistics for a seed and a size."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def summary_main(argv: list[str] | None, app: str, default_n: int, default_seed: int,
                 summarize: Callable[[int, int], dict[str, Any]]) -> int:
    ap = argparse.ArgumentParser(prog=f"python -m alto_workers.apps.{app}.reference",
                                 description=f"Statistics of the {app} workload as the pipeline sees it.")
    ap.add_argument("--seed", type=int, default=default_seed)
    ap.add_argument("--n", type=int, default=default_n, help="requests (%(default)s)")
    args = ap.parse_args(argv)
    for key, value in summarize(args.seed, args.n).items():
        print(f"{key}: {value}")
    return 0
