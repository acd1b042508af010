"""Which gateway a client sends each request to, and which of its gateways are alive.

A bus may run several gateways (``gateways`` in ``[broker]``); each admits and answers
only its own requests. :class:`GatewaySet` keeps, per gateway, how many of this client's
requests are pending there, when it was last heard from, when to ping it next and the
run its PONGs name. Pure logic on a clock the caller passes in: alto_bus.client owns the
sockets and calls it under its lock (the choice is made in the submitting threads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from alto_bus.net.sockets import check_address

# While requests are pending at a gateway (or it is taken for gone) the client pings it
# this often, or three times within the silence if that is shorter.
PING_INTERVAL = 1.0
# A gateway taken for gone is pinged ever less often, up to this (seconds): pings to a
# peer that is away queue up in its socket (and reach it when it is back), so a long
# outage must not pile up a ping per second.
PROBE_MAX = 10.0


def parse_gateways(gateway: str | Sequence[str], where: str = "Client gateway") -> tuple[str, ...]:
    """The addresses in ``gateway``: one address, several joined by commas (what a launch
    publishes as ``addresses["gateway"]``), or a sequence of them; ValueError names a bad one."""
    if isinstance(gateway, str):
        addresses = [a.strip() for a in gateway.split(",")] if "," in gateway else [gateway]
    elif isinstance(gateway, Sequence) and not isinstance(gateway, (bytes, bytearray)):
        addresses = list(gateway)
    else:
        raise ValueError(f"{where}: address must be a string (several: comma-separated) "
                         f"or a sequence of strings, got {gateway!r}")
    if not addresses:
        raise ValueError(f"{where}: no address given")
    n = len(addresses)
    for i, address in enumerate(addresses):
        check_address(address, where if n == 1 else f"{where} {i + 1} of {n} ({gateway!r})")
    if len(set(addresses)) < n:
        twice = next(a for i, a in enumerate(addresses) if a in addresses[:i])
        raise ValueError(f"{where}: {twice!r} is given twice in {gateway!r}")
    return tuple(addresses)


class GatewaySet:
    """Per-gateway bookkeeping of one client. Gateways are numbered as given."""

    def __init__(self, addresses: Sequence[str], silence: float, now: float) -> None:
        if not silence > 0:
            raise ValueError(f"gateway_silence must be a positive number of seconds, got {silence!r}")
        n = len(addresses)
        self.addresses = tuple(addresses)
        self.silence = silence
        self.every = min(PING_INTERVAL, silence / 3)  # a few pings within the silence
        self.pending = [0] * n        # this client's requests pending at each gateway
        self.heard = [now] * n        # the last frame from each (or when it got work after none)
        self.down = [False] * n       # taken for gone: no new requests until it answers
        self._next_ping = [now] * n
        self._probe = [self.every] * n  # the next pause between pings to it while it is gone
        self._boot: list[Any] = [None] * n
        self._turn = 0                # where the next tie-break starts

    def __len__(self) -> int:
        return len(self.addresses)

    def choose(self) -> int | None:
        """The live gateway with the fewest pending requests, ties taken in turn; None if
        every gateway is taken for gone."""
        pending, down, n = self.pending, self.down, len(self.pending)
        if n == 1:
            return None if down[0] else 0
        best, fewest = None, 0
        for k in range(n):
            g = (self._turn + k) % n
            if not down[g] and (best is None or pending[g] < fewest):
                best, fewest = g, pending[g]
        if best is not None:
            self._turn = best + 1
        return best

    def admitted(self, g: int, now: float) -> None:
        """A request was sent to ``g``. Silence counts only while something is pending,
        so the first one after an idle spell starts the clock afresh."""
        if self.pending[g] == 0:
            self.heard[g] = now
        self.pending[g] += 1

    def ended(self, g: int) -> None:
        self.pending[g] -= 1

    def cleared(self, g: int | None = None) -> None:
        """Every request pending at ``g`` (None: at every gateway) has ended at once."""
        for k in range(len(self.pending)) if g is None else (g,):
            self.pending[k] = 0

    def heard_from(self, g: int, now: float) -> bool:
        """A frame came from ``g``: True if it was taken for gone and is live again."""
        self.heard[g] = now
        if self.down[g]:
            self.down[g] = False
            self._probe[g] = self.every
            return True
        return False

    def pings_due(self, now: float) -> list[int]:
        """The gateways to ping now: those with requests pending, to see they are alive,
        and those taken for gone, to see when they are back; each once per ``every``."""
        due = []
        for g in range(len(self.pending)):
            if (self.pending[g] or self.down[g]) and now >= self._next_ping[g]:
                if self.down[g]:
                    self._next_ping[g] = now + self._probe[g]
                    self._probe[g] = min(2 * self._probe[g], max(PROBE_MAX, self.every))
                else:
                    self._next_ping[g] = now + self.every
                due.append(g)
        return due

    def silent(self, now: float) -> list[tuple[int, float]]:
        """``(gateway, seconds silent)`` for each gateway that has requests pending and has
        sent nothing for over ``silence``; each is taken for gone from now on (the caller
        fails its requests and calls :meth:`cleared`)."""
        gone = []
        for g in range(len(self.pending)):
            if self.pending[g] and now - self.heard[g] > self.silence:
                self.down[g] = True
                gone.append((g, now - self.heard[g]))
        return gone

    def restarted(self, g: int, boot: Any) -> bool:
        """``g``'s PONG named run ``boot``: True if it had named another one before (that
        run, and what it held, is gone)."""
        changed = self._boot[g] is not None and boot != self._boot[g]
        self._boot[g] = boot
        return changed

    def silence_text(self, g: int, seconds: float) -> str:
        return f"the gateway at {self.addresses[g]} has not answered for {seconds:.1f} s (gone, or not a gateway)"

    def none_live_text(self, now: float) -> str:
        """Why a request is refused when every gateway is taken for gone (names them all)."""
        if len(self.addresses) == 1:
            return f"no gateway answers: {self.silence_text(0, now - self.heard[0])}"
        each = ", ".join(f"{a} ({now - h:.1f} s)" for a, h in zip(self.addresses, self.heard))
        return f"no gateway answers: every gateway has been silent for over {self.silence:g} s: {each}"
