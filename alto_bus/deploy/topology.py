"""The topology file: TOML schema and validation, before anything starts.

A topology is a graph of stages (DESIGN.md, "Graphs"; alto_bus/deploy/graph.py). The
entry stage (no ``input``) takes client requests; each other stage takes the items of the
stage or stages named by its ``input``; the one stage that feeds no other (the sink) gives
the request's result. Every error names the file, the table and the field.
"""

from __future__ import annotations

import importlib
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from alto_bus.deploy import graph
from alto_bus.net.sockets import check_address
from alto_bus.runtime.kinds import REQUIRED, UnknownKind, known_kinds, stage_kind


class TopologyError(ValueError):
    """The topology cannot be run; the message names the file, the stage and the field."""


_MISSING = REQUIRED
# Stage and pool names appear in metric labels, logs, URLs and frames (where "@gateway"
# names the gateway): plain words only.
NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")

# name: (types, default). A default of _MISSING means the field is required.
BROKER_FIELDS: dict[str, tuple[tuple[type, ...], Any]] = {
    "control": ((str,), "tcp://127.0.0.1:0"),
    "gateway": ((str,), "tcp://127.0.0.1:0"),
    "results": ((str,), "tcp://127.0.0.1:0"),
    "advertise": ((str,), None),
    "heartbeat_interval": ((int, float), 0.5),
    "heartbeat_liveness": ((int,), 4),
    "request_timeout": ((int, float), 120.0),
    "max_inflight": ((int,), 20000),
    # What the gateway keeps for a client that does not read its answers, before it cuts it off.
    "client_backlog_bytes": ((int,), 64 * 1024 * 1024),
    "client_backlog_answers": ((int,), 200_000),
    # Ticks between whole loads reports; in between only changed loads go (1: all every tick).
    "loads_full_every": ((int,), 120),
    # Gateway processes (the broker's own and gateways - 1 beside it): requests and results spread over them.
    "gateways": ((int,), 1),
    # Instances per group of a large stateless stage: each sender routes among one group and gets its loads (0: off).
    "load_subset": ((int,), 32),
}

COMMON_STAGE_FIELDS: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((str,), _MISSING),
    "kind": ((str,), _MISSING),
    "input": ((str, list), None),       # a stage name, or several: a merge (or, on an aggregate, a join)
    "route": ((str,), None),            # "module:f": f(item[, path]) names the consumers that get the item
    "max_turns": ((int,), None),        # in a loop: how many times an item may go round
    "replicas": ((int,), 1),
    "inbox": ((str,), "tcp://127.0.0.1:0"),
    "advertise": ((str,), None),
    "queue": ((int,), 1000),            # frames queued for one instance (its inbox, each sender's link) before it counts as full
    "concurrency": ((int,), 256),       # async handler calls in flight per instance
    "flush_ms": ((int, float), 1.0),    # max time a message waits in a coalescing batch
    "batch_bytes": ((int,), 64 * 1024), # frame size at which a batch is sent at once
    "hosts": ((list,), None),           # [[host]] names its instances may run on (default: any)
    "gpus": ((int,), None),             # GPUs per instance (default: tensor_parallel_size of a vllm stage, else 0)
    "retries": ((int,), 0),             # times a request's items held by a dead instance are sent again
}

# A pool: LM instances shared by the LM stages that name it, one engine each.
POOL_FIELDS: dict[str, tuple[tuple[type, ...], Any]] = {
    "name": ((str,), _MISSING),
    "engine": ((str,), _MISSING),
    "model": ((str,), None),
    "engine_args": ((dict,), None),
    "replicas": ((int,), 1),
    "policy": ((str,), "prompt-aware"),   # prompt-aware, least-loaded, round-robin, affinity, or registered
    "policy_args": ((dict,), None),
    "script": ((str,), None),
    "script_args": ((dict,), None),
    "seed": ((int,), None),
    "inbox": ((str,), "tcp://127.0.0.1:0"),
    "advertise": ((str,), None),
    "concurrency": ((int,), 1024),
    "flush_ms": ((int, float), 1.0),
    "batch_bytes": ((int,), 64 * 1024),
    "queue": ((int,), 1000),
    "hosts": ((list,), None),            # [[host]] names its members may run on (default: any)
    "gpus": ((int,), None),              # GPUs per member (default: the vllm engine's tensor_parallel_size)
    # engine "openai": remote servers, one member each (member i talks to members[i])
    "members": ((list,), None),          # their base URLs, e.g. "http://10.0.0.5:8000/v1"
    "api_key_env": ((str,), None),       # the environment variable holding their API key
    "chat": ((bool,), False),            # /chat/completions instead of /completions
}
# Fields an LM stage on a pool takes from the pool, not from its own table.
POOL_OWNED = ("engine", "model", "engine_args", "script", "script_args", "replicas",
              "base_url", "api_key_env", "chat")

# The kind whose stages may share an engine in a [[pool]] (its check_engine checks the pool).
POOL_KIND = "lm"


@dataclass(frozen=True)
class BrokerConfig:
    control: str
    gateway: str
    results: str
    advertise: str | None
    heartbeat_interval: float
    heartbeat_liveness: int
    request_timeout: float
    max_inflight: int
    client_backlog_bytes: int = 64 * 1024 * 1024
    client_backlog_answers: int = 200_000
    loads_full_every: int = 120
    gateways: int = 1
    load_subset: int = 32


@dataclass(frozen=True)
class StageConfig:
    name: str
    kind: str
    input: str | list[str] | None
    replicas: int
    inbox: str
    advertise: str | None
    queue: int
    concurrency: int
    flush_ms: float
    batch_bytes: int
    fields: dict[str, Any] = field(default_factory=dict)  # kind-specific
    route: str | None = None       # "module:f": which consumers get each item
    max_turns: int | None = None   # in a loop: an item going round more often fails its request
    # Derived by validation (alto_bus/deploy/graph.py):
    inputs: tuple[str, ...] = ()   # the stages it takes items from
    consumers: tuple[str, ...] = ()  # the stages that take its items (none: the sink, to the gateway)
    next: str | None = None        # its consumer when it has exactly one
    loop_consumer: str | None = None  # a loop's route stage: the consumer inside the loop
    loop_inputs: tuple[str, ...] = ()  # inputs from inside its loop (items coming round)
    in_loop: bool = False          # the stage is part of a loop
    merge_depth: int | None = None  # several inputs: the fork depth at which their trees join
    depth_varies: bool = False     # its paths have no fixed length (after a fanning-out loop)
    fans_out: bool = False         # each input item becomes children path + [i]
    out_depth: int = 1             # length of the paths this stage emits
    key_depth: int | None = None   # keyed routing of this stage's input on path[:key_depth]
    hosts: list[str] | None = None  # [[host]] names its instances may run on
    gpus: int | None = None         # GPUs per instance, when given
    base_dir: str | None = None     # the topology file's directory: handlers are found there too
    retries: int = 0               # its items are sent again this many times if an instance dies
    dedupe: bool = False           # derived: it or a stage upstream has retries (it may see duplicates)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StageConfig:
        tuples = ("inputs", "consumers", "loop_inputs")
        return cls(**{k: (tuple(v) if k in tuples else v) for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PoolConfig:
    name: str
    engine: str
    model: str | None
    engine_args: dict | None
    replicas: int
    policy: str
    policy_args: dict | None
    script: str | None
    script_args: dict | None
    seed: int | None
    inbox: str
    advertise: str | None
    concurrency: int
    flush_ms: float
    batch_bytes: int
    queue: int
    stages: tuple[str, ...] = ()   # the LM stages that name this pool
    hosts: list[str] | None = None  # [[host]] names its members may run on
    gpus: int | None = None         # GPUs per member, when given
    members: list[str] | None = None  # engine "openai": one remote server per member
    api_key_env: str | None = None
    chat: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PoolConfig:
        return cls(**{k: (tuple(v) if k == "stages" else v) for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Topology:
    source: str
    broker: BrokerConfig
    stages: tuple[StageConfig, ...]  # entry first, sink-most last
    pools: tuple[PoolConfig, ...] = ()
    hosts: tuple[HostConfig, ...] = ()      # [[host]]: where instances run (empty: this machine)
    security: SecurityConfig | None = None  # [security]: CURVE on every link
    http: HttpConfig | None = None          # [http]: the HTTP front door of `alto launch`
    tracing: TracingConfig | None = None    # [tracing]: OpenTelemetry for every process (tracing_config.py)

    def pool(self, name: str) -> PoolConfig:
        for p in self.pools:
            if p.name == name:
                return p
        raise TopologyError(f"{self.source}: no pool named {name!r}")

    def stage(self, name: str) -> StageConfig:
        for s in self.stages:
            if s.name == name:
                return s
        raise TopologyError(f"{self.source}: no stage named {name!r}")

    @property
    def entry(self) -> StageConfig:
        return self.stages[0]


def load(path: str | Path, *, check_handlers: bool = True) -> Topology:
    """Read and validate a topology file."""
    path = Path(path)
    add_handler_dir(path.resolve().parent)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise TopologyError(f"{path}: no such topology file") from None
    except tomllib.TOMLDecodeError as exc:
        raise TopologyError(f"{path}: not valid TOML: {exc}") from None
    return parse(raw, source=str(path), check_handlers=check_handlers, base_dir=str(path.resolve().parent))


def parse(raw: dict[str, Any], *, source: str = "<topology>", check_handlers: bool = True,
          base_dir: str | None = None) -> Topology:
    """Validate a topology given as a dict (what the TOML decodes to); ``base_dir`` is
    where its handler modules may also be found (``load`` gives the file's directory)."""
    unknown = set(raw) - {"broker", "stage", "pool", "host", "security", "http", "tracing"}
    if unknown:
        raise TopologyError(f"{source}: unknown top-level table(s) {sorted(unknown)}; "
                            "expected [broker], [http], [tracing], [[pool]] and [[stage]]")
    broker_raw = raw.get("broker", {})
    if not isinstance(broker_raw, dict):
        raise TopologyError(f"{source}: [broker] must be a table")
    broker = BrokerConfig(**_fields(broker_raw, BROKER_FIELDS, f"{source}: [broker]"))
    for name in ("control", "gateway", "results"):
        _address(getattr(broker, name), f"{source}: [broker] field '{name}'")
    if broker.heartbeat_interval <= 0 or broker.heartbeat_liveness < 1:
        raise TopologyError(f"{source}: [broker] heartbeat_interval must be > 0 and heartbeat_liveness >= 1")
    if broker.request_timeout <= 0 or broker.max_inflight < 1:
        raise TopologyError(f"{source}: [broker] request_timeout must be > 0 and max_inflight >= 1")
    if broker.client_backlog_bytes < 1 or broker.client_backlog_answers < 1:
        raise TopologyError(f"{source}: [broker] client_backlog_bytes and client_backlog_answers must be >= 1")
    if not 1 <= broker.gateways <= 64:
        raise TopologyError(f"{source}: [broker] gateways must be between 1 and 64, got {broker.gateways}")
    if broker.loads_full_every < 1:
        raise TopologyError(f"{source}: [broker] loads_full_every must be >= 1 (ticks between whole loads reports)")
    if broker.load_subset < 0:
        raise TopologyError(f"{source}: [broker] load_subset must be >= 0 (instances per sender's subset of a "
                            f"stateless stage; 0: every sender routes among all of them), got {broker.load_subset}")

    stages_raw = raw.get("stage")
    if not isinstance(stages_raw, list) or not stages_raw:
        raise TopologyError(f"{source}: no [[stage]] tables: a topology needs at least one stage")
    pools_raw = raw.get("pool", [])
    if not isinstance(pools_raw, list):
        raise TopologyError(f"{source}: [[pool]] must be an array of tables")
    pools = {p.name: p for p in (_pool(p, i, source) for i, p in enumerate(pools_raw))}
    if len(pools) != len(pools_raw):
        raise TopologyError(f"{source}: two [[pool]] tables have the same name")
    stages = [_stage(s, i, source, check_handlers, pools) for i, s in enumerate(stages_raw)]
    try:
        ordered = graph.build(stages, source, _replace)
    except graph.GraphError as exc:
        raise TopologyError(str(exc)) from None
    chain = _with_dedupe(tuple(_replace(s, base_dir=base_dir) for s in ordered))
    users = {name: tuple(s.name for s in chain if s.fields.get("pool") == name) for name in pools}
    for name, names in users.items():
        if not names:
            raise TopologyError(f"{source}: pool {name!r}: no LM stage names it (field 'pool' of an lm stage)")
    pools_out = tuple(_replace_pool(p, stages=users[p.name]) for p in pools.values())
    topo = with_http(with_hosts(Topology(source=source, broker=broker, stages=chain, pools=pools_out), raw), raw)
    return with_tracing(topo, raw)


def _with_dedupe(stages: tuple[StageConfig, ...]) -> tuple[StageConfig, ...]:
    """Mark the stages that may see an item twice: a stage with ``retries`` and every stage
    downstream of one (a re-run handler emits again what its dead instance had emitted)."""
    by_name = {s.name: s for s in stages}
    marked = {s.name for s in stages if s.retries > 0}
    todo = list(marked)
    while todo:
        for c in by_name[todo.pop()].consumers:
            if c in by_name and c not in marked:
                marked.add(c)
                todo.append(c)
    return tuple(_replace(s, dedupe=True) if s.name in marked else s for s in stages)


def _replace_pool(p: PoolConfig, **changes: Any) -> PoolConfig:
    d = p.to_dict()
    d.update(changes)
    return PoolConfig(**d)


def _pool(raw: Any, index: int, source: str) -> PoolConfig:
    label = f"{source}: pool {raw.get('name', '#' + str(index + 1))!r}" if isinstance(raw, dict) \
        else f"{source}: pool #{index + 1}"
    values = _fields(raw, POOL_FIELDS, label)
    if not NAME.fullmatch(values["name"]):
        raise TopologyError(f"{label}: field 'name' must be 1-64 letters, digits, '_', '-' or '.', "
                            f"got {values['name']!r}")
    if values["replicas"] < 1:
        raise TopologyError(f"{label}: field 'replicas' must be >= 1, got {values['replicas']}")
    _address(values["inbox"], f"{label} field 'inbox'")
    stage_kind(POOL_KIND).check_engine(values, label)
    _remote_members(raw, values, label)
    from alto_bus.scheduling import make_policy

    try:
        make_policy(values["policy"], **(values["policy_args"] or {}))
    except ValueError as exc:
        raise TopologyError(f"{label}: field 'policy': {exc}") from None
    except TypeError as exc:
        raise TopologyError(f"{label}: field 'policy_args': {exc}") from None
    return PoolConfig(**values)


def _remote_members(raw: dict, values: dict[str, Any], label: str) -> None:
    """A pool's ``members``: one member per remote server, so they say how many replicas
    (check_engine has checked each URL)."""
    members = values["members"]
    if members is None:
        return
    if values["engine"] != "openai":
        raise TopologyError(f"{label}: field 'members': remote members are OpenAI-compatible servers; "
                            f"they need engine = \"openai\", not {values['engine']!r}")
    if "replicas" in raw and raw["replicas"] != len(members):
        raise TopologyError(f"{label}: field 'replicas': {raw['replicas']} disagrees with the "
                            f"{len(members)} server(s) of field 'members' (one member each; leave "
                            "'replicas' out)")
    seen: set[str] = set()
    for m in members:
        key = m.rstrip("/")
        if key in seen:
            raise TopologyError(f"{label}: field 'members': {m!r} is listed twice (one member per server)")
        seen.add(key)
    values["replicas"] = len(members)


def _fields(raw: dict, spec: dict, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TopologyError(f"{where}: must be a table")
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise TopologyError(f"{where}: unknown field '{unknown[0]}' (known: {', '.join(sorted(spec))})")
    out = {}
    for name, (types, default) in spec.items():
        if name in raw:
            value = raw[name]
            # bool is an int in Python; a field typed int must not take true/false.
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                names = " or ".join(t.__name__ for t in types)
                raise TopologyError(f"{where}: field '{name}' must be {names}, got {value!r}")
            out[name] = value
        elif default is _MISSING:
            raise TopologyError(f"{where}: missing required field '{name}'")
        else:
            out[name] = default
    return out


def _address(value: str, where: str) -> None:
    try:
        check_address(value, where)
    except ValueError as exc:
        raise TopologyError(str(exc)) from None


def _stage(raw: Any, index: int, source: str, check_handlers: bool,
           pools: dict[str, PoolConfig] | None = None) -> StageConfig:
    label = f"{source}: stage {raw.get('name', '#' + str(index + 1))!r}" if isinstance(raw, dict) else f"{source}: stage #{index + 1}"
    if not isinstance(raw, dict):
        raise TopologyError(f"{label}: must be a table")
    kind_name = raw.get("kind")
    if not isinstance(kind_name, str):
        raise TopologyError(f"{label}: field 'kind' is {kind_name!r}; known kinds: {', '.join(known_kinds())}")
    try:
        kind = stage_kind(kind_name)
    except UnknownKind as exc:
        raise TopologyError(f"{label}: field 'kind': {exc}") from None
    spec = {**COMMON_STAGE_FIELDS, **kind.fields}
    values = _fields(raw, spec, label)
    if not NAME.fullmatch(values["name"]):
        raise TopologyError(f"{label}: field 'name' must be 1-64 letters, digits, '_', '-' or '.' "
                            f"(it names the stage in metrics, logs and URLs), got {values['name']!r}")
    if values["replicas"] < 1:
        raise TopologyError(f"{label}: field 'replicas' must be >= 1, got {values['replicas']}")
    for name in ("queue", "concurrency", "batch_bytes"):
        if values[name] < 1:
            raise TopologyError(f"{label}: field '{name}' must be >= 1, got {values[name]}")
    if values["flush_ms"] < 0:
        raise TopologyError(f"{label}: field 'flush_ms' must be >= 0, got {values['flush_ms']}")
    if values["retries"] < 0:
        raise TopologyError(f"{label}: field 'retries' must be an int >= 0 (times a request's items are sent "
                            f"again when an instance dies), got {values['retries']}")
    _address(values["inbox"].replace("{instance}", "0"), f"{label} field 'inbox'")
    if values["inbox"].startswith("ipc://") and "{instance}" not in values["inbox"] and values["replicas"] > 1:
        raise TopologyError(f"{label}: field 'inbox': {values['replicas']} replicas cannot share one ipc path; "
                            "put {instance} in it (e.g. ipc:///tmp/alto/stage-{instance})")
    common = {k: values.pop(k) for k in COMMON_STAGE_FIELDS}
    pool = values.get("pool")
    if pool is not None:
        if pool not in (pools or {}):
            raise TopologyError(f"{label}: field 'pool': no [[pool]] named {pool!r}")
        given = [f for f in POOL_OWNED if f in raw]
        if given:
            raise TopologyError(f"{label}: field '{given[0]}': a stage on pool {pool!r} takes it from the pool")
        p = pools[pool]
        values.update(engine=p.engine, model=p.model, engine_args=p.engine_args, script=p.script,
                      script_args=p.script_args)
        common["replicas"] = p.replicas
    fans_out = bool(kind.check(values, common["input"], label, check_handlers)) if kind.check else False
    route, max_turns = common.pop("route"), common.pop("max_turns")
    if route is not None and check_handlers:
        try:
            import_object(route)
        except ImportError as exc:
            raise TopologyError(f"{label}: field 'route': {exc}") from None
    if max_turns is not None and max_turns < 1:
        raise TopologyError(f"{label}: field 'max_turns' must be >= 1, got {max_turns}")
    return StageConfig(**common, fields=values, fans_out=fans_out, route=route, max_turns=max_turns)


def _replace(s: StageConfig, **changes: Any) -> StageConfig:
    d = s.to_dict()
    d.update(changes)
    return StageConfig(**d)


_handler_dirs: list[str] = []  # topology files' directories: handlers are found there too


def add_handler_dir(path: str | Path | None) -> None:
    """Let ``import_object`` find modules in ``path`` (a topology file's directory)."""
    if path and str(path) not in _handler_dirs:
        _handler_dirs.append(str(path))


def import_object(spec: str) -> Callable[..., Any]:
    """``"package.module:attr"`` -> the object; ImportError says which part failed.

    The module is looked up on ``sys.path`` first, then in the directories of the topology
    files loaded in this process (so ``alto check dir/file.toml`` works from anywhere)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ImportError(f"{spec!r} is not 'module:function'")
    try:
        module = _import(module_name)
    except Exception as exc:
        where = f" (looked on sys.path and in {', '.join(_handler_dirs)})" if _handler_dirs else ""
        raise ImportError(f"cannot import module {module_name!r} for {spec!r}: {exc}{where}") from None
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r}") from None
    return obj


def _import(module_name: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        top = module_name.split(".")[0]
        missing = [d for d in _handler_dirs if d not in sys.path]
        if exc.name != top or not missing:
            raise
        sys.path.extend(missing)  # after the installed packages: a topology cannot shadow them
        return importlib.import_module(module_name)


# Hosts, security and GPU placement live in their own module; their names are part of
# this module's interface (imported last: hosts.py uses the helpers above).
from alto_bus.deploy.hosts import (  # noqa: E402, F401
    HostConfig,
    SecurityConfig,
    gpus_per_instance,
    place_instances,
    with_hosts,
)
from alto_bus.deploy.http_config import HttpConfig, with_http  # noqa: E402, F401
from alto_bus.deploy.tracing_config import TracingConfig, with_tracing  # noqa: E402, F401
