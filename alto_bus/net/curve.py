"""Authenticated links: CURVE key pairs, who may connect, and a log of who was refused.

With ``[security]`` in the topology every socket that can cross a host is a CURVE
socket. The servers (the broker's control, gateway and results sockets, every
instance's inbox) accept a peer only if its public key is allowed; everything else is
refused during the handshake, before a single frame reaches the application, and the
refusal is logged.

- Key files are ZeroMQ certificates (the format of ``zmq.auth`` / czmq):
  ``NAME.key`` holds the public key, ``NAME.key_secret`` the pair. ``alto keys NAME``
  makes both. A topology names public files; the secret is the ``_secret`` sibling,
  read only on the host that needs it.
- Allowed: every public key in the ``allowed_keys`` directory (clients, extra
  workers), plus the keys the topology itself names (the broker's, the instances').
- An instance's inbox is a server with the instance's own key; its public key travels
  with its advertised address (``tcp://host:port curve:KEY``) in the routing table, so
  senders know whom they dial and each host may have a key of its own.
- One :class:`Guard` per ZeroMQ context answers ZAP (the authentication protocol
  libzmq asks servers' questions on) and watches handshakes: a key that is not allowed,
  a peer that does not speak CURVE, a client that dialled with the wrong server key.
  Each refusal is logged at WARNING (at most one line per peer and reason every
  ``LOG_EVERY`` seconds, with the count of those not logged) and counted.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.utils.z85
from zmq.utils.monitor import parse_monitor_message

from alto_bus.net.waker import Waker

log = logging.getLogger("alto.keys")

SECRET_SUFFIX = "_secret"
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
LOG_EVERY = 10.0
KEY_MARK = " curve:"   # separates an advertised address from its server's public key

_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
           | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_MONITOR_STOPPED)
_PROTOCOL_ERRORS = {getattr(zmq, n): n[len("PROTOCOL_ERROR_"):] for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}


class KeyFileError(ValueError):
    """A key file or directory is missing or wrong; the message names it."""


# -- key files ----------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyPair:
    public: bytes     # Z85, 40 characters
    secret: bytes
    path: str         # the secret file it came from (for messages)

    def __repr__(self) -> str:  # never print a secret
        return f"KeyPair(public={self.public.decode()!r}, path={self.path!r})"


def secret_path(public: str | Path) -> Path:
    """``keys/a.key`` -> ``keys/a.key_secret`` (a secret path is returned as it is)."""
    p = Path(public)
    return p if p.name.endswith(SECRET_SUFFIX) else p.with_name(p.name + SECRET_SUFFIX)


def create(directory: str | Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """Write ``NAME.key`` (public) and ``NAME.key_secret`` (mode 600) in ``directory``."""
    directory = Path(directory)
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"{name!r} is not a key name (letters, digits, -, _)")
    directory.mkdir(parents=True, exist_ok=True)
    public_file, secret_file = directory / f"{name}.key", directory / f"{name}.key{SECRET_SUFFIX}"
    if not force:
        for f in (public_file, secret_file):
            if f.exists():
                raise KeyFileError(f"{f}: already exists (use --force to replace it)")
    public, secret = zmq.curve_keypair()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    head = f"#   ****  Generated on {stamp} by alto keys  ****\n#   ZeroMQ CURVE "
    public_file.write_text(f"{head}Public Certificate\n#   Exchange securely, or use a secure mechanism to verify "
                           f"the contents\n#   of this file after exchange.\n\nmetadata\ncurve\n"
                           f"    public-key = \"{public.decode()}\"\n")
    fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{head}**Secret** Certificate\n#   DO NOT PROVIDE THIS FILE TO OTHER USERS nor change its "
                f"permissions.\n\nmetadata\ncurve\n    public-key = \"{public.decode()}\"\n"
                f"    secret-key = \"{secret.decode()}\"\n")
    os.chmod(secret_file, 0o600)
    return public_file, secret_file


def _read_cert(path: Path) -> dict[str, bytes]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such key file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{path}: is a directory, not a key file") from None
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the key file: {exc.strerror}") from None
    found: dict[str, bytes] = {}
    for line in text.splitlines():
        line = line.strip()
        for name in (b"public-key", b"secret-key"):
            if line.startswith(name) and b"=" in line:
                found[name.decode()] = line.split(b"=", 1)[1].strip(b" \t'\"")
    for name, value in found.items():
        if not _is_z85_key(value):
            raise KeyFileError(f"{path}: the {name} is not a CURVE key (40 Z85 characters)")
    return found


def _is_z85_key(value: bytes) -> bool:
    try:
        return len(value) == 40 and len(zmq.utils.z85.decode(value)) == 32
    except (ValueError, KeyError, TypeError):
        return False


def load_public(path: str | Path) -> bytes:
    """The public key in a certificate file (public or secret)."""
    path = Path(path)
    cert = _read_cert(path)
    if "public-key" not in cert:
        raise KeyFileError(f"{path}: no public key in this file (make one with `alto keys NAME`)")
    return cert["public-key"]


def load_pair(path: str | Path) -> KeyPair:
    """A key pair from ``NAME.key_secret`` (``NAME.key`` names the same pair)."""
    path = secret_path(path)
    cert = _read_cert(path)
    secret = cert.get("secret-key")
    if secret is None:
        raise KeyFileError(f"{path}: no secret key in this file (a secret key file is NAME.key_secret)")
    public = zmq.curve_public(secret)
    if cert.get("public-key", public) != public:
        raise KeyFileError(f"{path}: its public key does not belong to its secret key")
    try:
        mode = path.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: a secret key file readable by others (mode %o); chmod 600 it", path, mode & 0o777)
    except OSError:
        pass
    return KeyPair(public, secret, str(path))


def load_allowed(directory: str | Path) -> dict[bytes, str]:
    """Every public key in ``directory`` (files ``*.key``): key -> file name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise KeyFileError(f"{directory}: no such directory of allowed keys")
    allowed = {}
    for f in sorted(directory.glob("*.key")):
        allowed[load_public(f)] = f.name
    return allowed


# -- CURVE socket options -----------------------------------------------------------------


def with_key(address: str, public: bytes) -> str:
    """An advertised address that carries its server's public key."""
    return f"{address}{KEY_MARK}{public.decode()}"


def split_key(address: str) -> tuple[str, bytes | None]:
    """``"tcp://h:p curve:KEY"`` -> ``("tcp://h:p", KEY)``; plain addresses -> ``(address, None)``."""
    addr, mark, key = address.partition(KEY_MARK)
    return (addr, key.encode()) if mark else (address, None)


@dataclass(frozen=True)
class CurveServer:
    """Options for a socket that accepts peers: only allowed keys get in."""

    pair: KeyPair
    allowed: frozenset[bytes]
    label: str

    def apply(self, sock: zmq.Socket, address: str | None) -> str | None:
        guard = Guard.of(sock.context)
        sock.setsockopt(zmq.ZAP_DOMAIN, guard.domain(self.allowed, self.label).encode())
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.pair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.pair.secret)
        guard.watch(sock, self.label, server=True)
        return address


@dataclass(frozen=True)
class CurveClient:
    """Options for a socket that dials a server whose public key it knows."""

    pair: KeyPair
    server_key: bytes | None   # None: the address carries it (an instance's inbox)
    label: str = ""

    def apply(self, sock: zmq.Socket, address: str | None) -> str | None:
        server_key = self.server_key
        if address is not None:
            address, carried = split_key(address)
            server_key = carried or server_key
        if server_key is None:
            raise KeyFileError(f"{self.label or 'a CURVE socket'}: no server key for {address} "
                               "(the peer advertised an address without its key: is CURVE on for it?)")
        sock.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.pair.public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.pair.secret)
        Guard.of(sock.context).watch(sock, f"{self.label or 'connection'} to {address}", server=False)
        return address


@dataclass(frozen=True)
class Curve:
    """One process's keys: its own pair, the broker's public key, whom it lets in."""

    pair: KeyPair
    broker: bytes
    allowed: frozenset[bytes] = field(default_factory=frozenset)

    def server(self, label: str) -> CurveServer:
        return CurveServer(self.pair, self.allowed, label)

    def to_broker(self, label: str = "broker") -> CurveClient:
        return CurveClient(self.pair, self.broker, label)

    def to_peer(self, label: str = "instance") -> CurveClient:
        return CurveClient(self.pair, None, label)

    def advertise(self, address: str) -> str:
        return with_key(address, self.pair.public)

    def with_allowed(self, allowed: list[bytes] | frozenset[bytes]) -> Curve:
        """The same keys letting in ``allowed`` (an instance learns them from the broker)."""
        return Curve(self.pair, self.broker, frozenset(allowed) | {self.broker, self.pair.public})


def client_curve(key: str | Path, broker_key: str | Path) -> Curve:
    """A client's (or operator's) keys: its own pair and the broker's public key."""
    return Curve(load_pair(key), load_public(broker_key))


def process_curve(key: str | Path, broker_key: str | Path, allowed_keys: str | Path | None,
                  also_allowed: tuple[bytes, ...] = ()) -> Curve:
    """The keys of a broker or an instance: its pair, the broker's key, who may connect."""
    pair = load_pair(key)
    broker = load_public(broker_key)
    allowed = set(load_allowed(allowed_keys)) if allowed_keys is not None else set()
    allowed.update((broker, pair.public, *also_allowed))
    return Curve(pair, broker, frozenset(allowed))


def topology_curve(topology: Any, role: str, host: str | None = None) -> Curve | None:
    """The keys a process of ``topology`` (with a ``[security]`` table) runs with.

    ``role``: ``"broker"`` (the broker's pair; also what the launcher queries status
    with) or ``"worker"`` (the pair of the instances on ``host``). Allowed: every key in
    ``allowed_keys`` plus every key the topology names. None when security is off.
    """
    sec = topology.security
    if sec is None:
        return None
    hosts = {h.name: h for h in topology.hosts}
    if role == "broker":
        own = sec.broker_key
    elif role == "worker":
        own = sec.host_key(hosts.get(host)) if host is not None else sec.worker_key
    else:
        raise ValueError(f"unknown role {role!r}")
    named = {load_public(sec.broker_key), load_public(sec.worker_key),
             *(load_public(h.key) for h in topology.hosts if h.key)}
    return process_curve(own, sec.broker_key, sec.allowed_keys, tuple(named))


# -- the guard: ZAP answers and the refusal log ---------------------------------------------


class Guard(threading.Thread):
    """Per ZeroMQ context: answers ZAP requests and logs refused handshakes."""

    _guards: dict[int, Guard] = {}
    _lock = threading.Lock()

    @classmethod
    def of(cls, ctx: zmq.Context) -> Guard:
        key = ctx.underlying
        with cls._lock:
            guard = cls._guards.get(key)
            if guard is None or not guard.is_alive():
                guard = cls._guards[key] = Guard(ctx)
                guard.start()
            return guard

    def __init__(self, ctx: zmq.Context) -> None:
        super().__init__(name="alto-guard", daemon=True)
        self.ctx = zmq.Context.shadow(ctx.underlying)
        self.zap = self.ctx.socket(zmq.REP)
        self.zap.setsockopt(zmq.LINGER, 0)
        try:
            self.zap.bind(ZAP_ENDPOINT)  # before any CURVE server binds: no unauthenticated window
        except zmq.ZMQError as exc:
            self.zap.close()
            raise RuntimeError(f"cannot answer ZAP on this context ({exc}): another authenticator runs") from None
        self.domains: dict[str, tuple[frozenset[bytes], str]] = {}
        self.refused: Counter[str] = Counter()       # label -> refusals
        self.accepted: Counter[str] = Counter()
        self._pending: list[tuple[str, str, bool]] = []
        self._waker = Waker()  # a socket to watch was queued: the guard's poll takes it
        self._monitors = 0
        self._logged: dict[tuple[str, str], list[float]] = {}   # (label, reason) -> [last, suppressed]
        self._lock2 = threading.Lock()
        self._owed: tuple[bytes, bytes] | None = None  # the ZAP request not answered yet

    def domain(self, allowed: frozenset[bytes], label: str) -> str:
        """A ZAP domain whose peers must hold one of ``allowed``."""
        with self._lock2:
            for name, (keys, lab) in self.domains.items():
                if keys == allowed and lab == label:
                    return name
            name = f"alto-{len(self.domains) + 1}"
            self.domains[name] = (allowed, label)
            return name

    def watch(self, sock: zmq.Socket, label: str, *, server: bool) -> None:
        """Report failed handshakes of ``sock`` (call from the socket's own thread)."""
        with self._lock2:
            self._monitors += 1
            endpoint = f"inproc://alto-guard-{id(self):x}-{self._monitors}"
            sock.monitor(endpoint, _EVENTS)
            self._pending.append((endpoint, label, server))
        self._waker.wake()

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.zap, zmq.POLLIN)
        poller.register(self._waker.fileno(), zmq.POLLIN)
        monitors: dict[zmq.Socket, tuple[str, bool]] = {}
        try:
            while True:
                events = dict(poller.poll())
                if self._waker.fileno() in events:
                    self._waker.clear()
                    with self._lock2:
                        pending, self._pending = self._pending, []
                    for endpoint, label, server in pending:
                        mon = self.ctx.socket(zmq.PAIR)
                        mon.setsockopt(zmq.LINGER, 0)
                        mon.connect(endpoint)
                        monitors[mon] = (label, server)
                        poller.register(mon, zmq.POLLIN)
                if self.zap in events:
                    try:
                        self._answer()
                    except Exception:  # every CURVE handshake waits on the guard: it must carry on
                        log.exception("the ZAP guard failed on a request; refusing it")
                        self._reply_owed(b"500", b"internal error")
                for mon in [m for m in monitors if m in events]:
                    if not self._monitor_event(mon, *monitors[mon]):
                        poller.unregister(mon)
                        mon.close()
                        del monitors[mon]
        except zmq.ContextTerminated:
            pass
        finally:
            for mon in monitors:
                mon.close(linger=0)
            self.zap.close(linger=0)
            self._waker.close()

    def _answer(self) -> None:
        frames = self.zap.recv_multipart()
        if len(frames) < 6:
            log.warning("dropped a malformed ZAP request (%d frames)", len(frames))
            return
        version, request_id, domain, address, _identity, mechanism, *credentials = frames
        self._owed = (version, request_id)  # a REP socket must answer before it reads again
        status, text = b"400", b"not allowed"
        entry = self.domains.get(domain.decode(errors="replace"))
        peer = address.decode(errors="replace") or "?"
        if mechanism == b"NULL" and not domain:
            status, text = b"200", b"OK"  # a plain socket of this process that set no domain
        elif entry is None:
            self._refuse("?", peer, f"unknown ZAP domain {domain!r}")
        elif mechanism != b"CURVE" or not credentials or len(credentials[0]) != 32:
            self._refuse(entry[1], peer, f"mechanism {mechanism.decode(errors='replace')} instead of CURVE")
        else:
            key = zmq.utils.z85.encode(credentials[0])
            if key in entry[0]:
                status, text = b"200", b"OK"
                self.accepted[entry[1]] += 1
            else:
                self._refuse(entry[1], peer, f"key {key.decode()} is not allowed")
        self._reply_owed(status, text)

    def _reply_owed(self, status: bytes, text: bytes) -> None:
        if self._owed is not None:
            version, request_id = self._owed
            self._owed = None
            self.zap.send_multipart([version, request_id, status, text, b"", b""])

    def _monitor_event(self, mon: zmq.Socket, label: str, server: bool) -> bool:
        try:
            event = parse_monitor_message(mon.recv_multipart())
        except (ValueError, zmq.ZMQError):
            return True
        kind, value = event["event"], event["value"]
        if kind == zmq.EVENT_MONITOR_STOPPED:
            return False
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            if server:
                return True  # ZAP said no; _answer logged it with the peer and key
            self._refuse(label, event["endpoint"].decode(errors="replace"),
                         f"the server refused this process's key (ZAP status {value}); "
                         "is its public key in the server's allowed_keys?")
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            name = _PROTOCOL_ERRORS.get(value, str(value))
            why = {"ZMTP_MECHANISM_MISMATCH": "the peer does not use CURVE (plain tcp?)",
                   "ZMTP_CRYPTOGRAPHIC": "the keys do not match (wrong server key?)"}.get(name, "protocol error")
            self._refuse(label, event["endpoint"].decode(errors="replace"), f"{why} [{name}]")
        else:  # the peer hung up mid-handshake (a plain peer often does, when it sees CURVE)
            self._refuse(label, event["endpoint"].decode(errors="replace"),
                         f"the handshake failed ({os.strerror(value) if value > 0 else value}): "
                         "the peer left during it; it may not use CURVE")
        return True

    def _refuse(self, label: str, peer: str, reason: str) -> None:
        self.refused[label] += 1
        now = time.monotonic()
        slot = self._logged.get((label, reason))
        if slot is not None and now - slot[0] < LOG_EVERY:
            slot[1] += 1
            return
        more = f" ({int(slot[1])} more since the last line)" if slot and slot[1] else ""
        self._logged[(label, reason)] = [now, 0]
        log.warning("refused a connection: %s, peer %s: %s%s", label, peer, reason, more)


def refusals() -> dict[str, int]:
    """Refused handshakes per label, over every context of this process."""
    total: Counter[str] = Counter()
    for guard in list(Guard._guards.values()):
        total.update(guard.refused)
    return dict(total)
