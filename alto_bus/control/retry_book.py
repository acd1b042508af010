"""The broker's count of retries: which requests a departed instance of a stage with
``retries = N`` costs an attempt, and which have none left. Pure: no sockets, no clock.

When such an instance dies or leaves before finishing, the requests whose items it may
have had are not failed: their senders send their kept copies again (resend.py) through
the routing table that excludes it. Each departure counts once per request and stage,
whoever reports the request (the instance's last heartbeat, the gateway's entry link,
each sender's "resent" report); the departure that would be attempt N + 1 fails the
request as a stage without retries would, saying "after N retries".

Counts are forgotten when their request ends (``prune``); the per-departure record of
what was counted is kept for the last ``memory`` departures (a late "resent" report of an
older one counts again, which only fails a request sooner, never hides one).
"""

from __future__ import annotations

from collections.abc import Container, Iterable


class RetryBook:
    def __init__(self, limits: dict[str, int], memory: int = 1000) -> None:
        self.limits = {s: n for s, n in limits.items() if n > 0}  # stage -> retries
        self.memory = memory
        self.attempts: dict[tuple[int, str], int] = {}   # (rid, stage) -> departures so far
        self.counted: dict[int, set[int]] = {}           # departed iid -> rids it cost an attempt
        self.pending: list[int] = []                     # departed iids whose senders must resend

    def retries(self, stage: str) -> int:
        return self.limits.get(stage, 0)

    def departed(self, iid: int, stage: str, rids: Iterable[int]) -> tuple[list[int], list[int]]:
        """Instance ``iid`` of ``stage`` went, with items of ``rids``: (those sent again,
        those out of attempts), each request once per departure. The caller tells the
        senders to resend (``pending``) once the table without the instance is out."""
        limit = self.limits.get(stage, 0)
        seen = self.counted.get(iid)
        if seen is None:
            seen = self.counted[iid] = set()
            while len(self.counted) > self.memory:
                del self.counted[next(iter(self.counted))]
        retry: list[int] = []
        exhausted: list[int] = []
        for rid in sorted(set(rids)):
            if rid in seen:
                continue
            seen.add(rid)
            n = self.attempts.get((rid, stage), 0) + 1
            if n > limit:
                self.attempts.pop((rid, stage), None)
                exhausted.append(rid)
            else:
                self.attempts[(rid, stage)] = n
                retry.append(rid)
        return retry, exhausted

    def prune(self, in_flight: Container[int]) -> None:
        """Forget the counts of requests that ended."""
        if self.attempts:
            self.attempts = {k: n for k, n in self.attempts.items() if k[0] in in_flight}
