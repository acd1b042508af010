"""What a vLLM server's ``/metrics`` (Prometheus text) says about its load and cache.

The ``openai`` engine polls it so a stage on a remote vLLM server reports KV use and
prefix-cache hits like an in-process engine. Names are vLLM 0.32's
(``vllm/v1/metrics/loggers.py``); Prometheus adds ``_total`` to counters, and both
spellings are accepted. A server that is not vLLM has none of these names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class ServerFigures:
    kv_capacity_tokens: int = 0   # 0: the server does not say
    kv_used_tokens: int = 0
    kv_usage: float = 0.0         # fraction in 0..1 (averaged over the server's engines)
    cache_queries: int = 0        # prompt tokens looked up in the prefix cache (monotonic)
    cache_hits: int = 0
    running: int = 0              # requests running on the server now (every client's)
    waiting: int = 0


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample line; malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if m is None:
            continue
        try:
            value = float(m.group(3))
        except ValueError:
            continue
        out.append((m.group(1), dict(_LABEL.findall(m.group(2) or "")), value))
    return out


def parse_vllm_metrics(text: str) -> ServerFigures | None:
    """The figures in a vLLM ``/metrics`` page, or None when it is not vLLM's."""
    by_name: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, value in samples(text):
        if name.startswith("vllm:"):
            by_name.setdefault(name, []).append((labels, value))
    if not by_name:
        return None

    def total(*names: str) -> float:
        for n in names:
            if n in by_name:
                return sum(v for _, v in by_name[n])
        return 0.0

    # KV capacity per engine (data-parallel servers have several): blocks x block size,
    # from the cache-config info gauge; usage is a per-engine fraction.
    capacity: dict[str, int] = {}
    for labels, _ in by_name.get("vllm:cache_config_info", []):
        try:
            capacity[labels.get("engine", "0")] = int(labels["num_gpu_blocks"]) * int(labels["block_size"])
        except (KeyError, ValueError):
            continue
    usage = by_name.get("vllm:kv_cache_usage_perc", [])
    used = sum(v * capacity.get(labels.get("engine", "0"), 0) for labels, v in usage)
    return ServerFigures(
        kv_capacity_tokens=sum(capacity.values()),
        kv_used_tokens=int(round(used)),
        kv_usage=sum(v for _, v in usage) / len(usage) if usage else 0.0,
        cache_queries=int(total("vllm:prefix_cache_queries_total", "vllm:prefix_cache_queries")),
        cache_hits=int(total("vllm:prefix_cache_hits_total", "vllm:prefix_cache_hits")),
        running=int(total("vllm:num_requests_running")),
        waiting=int(total("vllm:num_requests_waiting")),
    )


def metrics_url(base_url: str) -> str:
    """vLLM serves ``/metrics`` at its root, beside ``/v1``."""
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root + "/metrics"
