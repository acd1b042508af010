"""Declare a topology in Python: ``Graph``, its stages, and the ways to run it.

A :class:`Graph` holds exactly what a topology file holds (a ``[broker]`` table, one
table per stage, pools, hosts, ...), except that a handler, a route or an operator may
be a Python callable. Every check is the topology file's (``topology.parse``), so a
declaration is refused with the same message as the same file. ``run()`` runs it in
this process; ``launched()``/``launch()`` run it as processes like ``alto launch``.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import tomllib

from alto_bus.client import Client
from alto_bus.deploy.topology import Topology, TopologyError, add_handler_dir, parse
from alto_bus.graph import specs
from alto_bus.graph.toml_text import dumps

Handler = Callable[..., Any] | str
Inputs = str | list[str] | None


class StageRef(str):
    """A stage's name, returned by :meth:`Graph.stage`; give it as another stage's ``input``."""

    graph: Graph

    def __new__(cls, name: str, graph: Graph) -> StageRef:
        ref = super().__new__(cls, name)
        ref.graph = graph
        return ref


class Graph:
    """A topology declared in Python. ``name`` prefixes its error messages, as a file's name does."""

    def __init__(self, name: str = "graph") -> None:
        self.name = name
        self.base_dir: str | None = None    # a file's directory (from_toml): its handler modules
        self._broker: dict[str, Any] = {}
        self._stages: list[dict[str, Any]] = []
        self._tables: dict[str, Any] = {}   # [[pool]], [[host]], [security], [http], [tracing]

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, stages={[s.get('name') for s in self._stages]!r})"

    # -- declaring -------------------------------------------------------------------------

    def stage(self, name: str, kind: str = "function", handler: Handler | None = None, *,
              input: Inputs = None, route: Handler | None = None, max_turns: int | None = None,
              replicas: int = 1, **fields: Any) -> StageRef:
        """Add a ``[[stage]]``: the fields are the topology file's; ``handler``, ``route`` and
        callables in ``fields`` (``op``, ``options``' values) may be Python callables."""
        table: dict[str, Any] = {"name": name, "kind": kind}
        if handler is not None:
            table["handler"] = handler
        if input is not None:
            table["input"] = self._input(name, input)
        if route is not None:
            table["route"] = route
        if max_turns is not None:
            table["max_turns"] = max_turns
        if replicas != 1:
            table["replicas"] = replicas
        table.update(fields)
        self._stages.append(table)
        return StageRef(name, self)

    def function(self, name: str, handler: Handler, *, input: Inputs = None, **fields: Any) -> StageRef:
        """A ``function`` stage: ``handler(item)`` returns an output, None (drop) or yields several."""
        return self.stage(name, "function", handler, input=input, **fields)

    def aggregate(self, name: str, *, input: Inputs, op: Handler, key: str | None = None,
                  **fields: Any) -> StageRef:
        """An ``aggregate`` stage (a join when ``input`` names several stages)."""
        more = {"key": key} if key is not None else {}
        return self.stage(name, "aggregate", input=input, op=op, **more, **fields)

    def lm(self, name: str, *, input: Inputs = None, **fields: Any) -> StageRef:
        """An ``lm`` stage (README, "LM stages": ``engine``/``pool``, ``prompt``, ``emit``, ...)."""
        return self.stage(name, "lm", input=input, **fields)

    def broker(self, **fields: Any) -> Graph:
        """Set ``[broker]`` fields (addresses, heartbeat_interval, request_timeout, ...)."""
        self._broker.update(fields)
        return self

    def pool(self, name: str, **fields: Any) -> str:
        """Add a ``[[pool]]`` of LM instances shared by the lm stages that name it."""
        self._tables.setdefault("pool", []).append({"name": name, **fields})
        return name

    def _input(self, stage: str, input: Any) -> str | list[str]:
        names = [input] if isinstance(input, str) else input
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise TopologyError(f"{self.name}: stage {stage!r}: field 'input': must be a stage name, a "
                                f"StageRef or a list of them, got {input!r}")
        for n in names:
            if isinstance(n, StageRef) and n.graph is not self:
                raise TopologyError(f"{self.name}: stage {stage!r}: field 'input': {str(n)!r} is a stage "
                                    f"of another Graph ({n.graph.name!r})")
        plain = [str(n) for n in names]
        return plain[0] if isinstance(input, str) else plain

    # -- the topology ----------------------------------------------------------------------

    def _raw(self, namer: specs.Namer) -> dict[str, Any]:
        raw: dict[str, Any] = {}
        if self._broker:
            raw["broker"] = dict(self._broker)
        raw.update({k: v for k, v in self._tables.items() if not isinstance(v, list)})
        raw["stage"] = [specs.named_fields(s, namer) for s in self._stages]
        raw.update({k: [dict(t) for t in v] for k, v in self._tables.items() if isinstance(v, list)})
        return raw

    def _parse(self, raw: dict[str, Any]) -> Topology:
        return parse(raw, source=self.name, base_dir=self.base_dir)

    def check(self) -> Topology:
        """Validate as ``alto check`` does (any callable will do); returns the Topology."""
        with specs.LocalNames() as names:
            return self._parse(self._raw(names))

    def to_dict(self) -> dict[str, Any]:
        """The topology file's content as a dict, validated; callables become "module:function"
        (a lambda or closure is an error naming its stage: another process cannot import it)."""
        raw = self._raw(specs.portable_namer(self.name))
        self._parse(raw)
        return raw

    def to_toml(self) -> str:
        """The topology file's text (validated, as ``to_dict``)."""
        return dumps(self.to_dict())

    @classmethod
    def from_dict(cls, raw: dict[str, Any], name: str = "graph") -> Graph:
        """A Graph of a topology dict (what a file decodes to), kept table for table."""
        g = cls(name)
        if not isinstance(raw, dict):
            raise TopologyError(f"{name}: a topology is a table, got {type(raw).__name__}")
        for key, value in raw.items():
            if key == "broker":
                g._broker = dict(value) if isinstance(value, dict) else value
            elif key == "stage":
                if not isinstance(value, list):
                    raise TopologyError(f"{name}: [[stage]] must be an array of tables")
                g._stages = [dict(s) if isinstance(s, dict) else s for s in value]
            else:
                g._tables[key] = value
        return g

    @classmethod
    def from_toml(cls, source: str | os.PathLike[str]) -> Graph:
        """A Graph of a topology file (a path) or of TOML text; handlers beside the file are found."""
        path = Path(source) if _names_a_file(source) else None
        try:
            text = path.read_text() if path is not None else str(source)
        except FileNotFoundError:
            raise TopologyError(f"{path}: no such topology file") from None
        name = str(path) if path is not None else "graph"
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise TopologyError(f"{name}: not valid TOML: {exc}") from None
        g = cls.from_dict(raw, name)
        if path is not None:
            g.base_dir = str(path.resolve().parent)
            add_handler_dir(g.base_dir)
        return g

    # -- running ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def run(self, *, ready_timeout: float = 30.0, timeout: float = 300.0) -> Iterator[Client]:
        """Run the graph in this process (broker on a thread, a worker per replica, loopback);
        yields a connected Client; everything is stopped and joined on exit, also on error.
        ``timeout``: the client's default request deadline."""
        from alto_bus.graph.local_run import LocalRun

        with specs.LocalNames() as names:
            topology = self._parse(self._raw(names))
            with LocalRun(topology, ready_timeout=ready_timeout, client_timeout=timeout) as local:
                assert local.client is not None
                yield local.client

    run_local = run

    @contextlib.contextmanager
    def launched(self, *, out: IO[str] | None = None, log_level: str = "WARNING",
                 timeout: float = 300.0) -> Iterator[Client]:
        """Run the graph as processes, as ``alto launch`` does (handlers must be importable);
        yields a connected Client; every process is stopped on exit."""
        from alto_bus.deploy.supervisor import Supervisor

        with self._written() as path:
            sup = Supervisor(str(path), out=out or io.StringIO(), log_level=log_level)
            try:
                with self._handler_path():
                    sup.start()
                with Client(sup.addresses["gateway"], timeout=timeout) as client:
                    yield client
            finally:
                sup.stop()

    def launch(self, *, out: IO[str] | None = None, log_level: str = "WARNING",
               http: str | None = None) -> int:
        """``alto launch`` of this graph: runs until Ctrl-C or SIGTERM; returns the exit code."""
        from alto_bus.deploy.supervisor import launch

        with self._written() as path, self._handler_path():
            return launch(path, out=out or sys.stdout, log_level=log_level, http=http)

    @contextlib.contextmanager
    def _written(self) -> Iterator[Path]:
        text = self.to_toml()  # refused here, naming this graph, before any process starts
        with tempfile.TemporaryDirectory(prefix="alto-graph-") as tmp:
            path = Path(tmp) / f"{Path(self.name).stem or 'graph'}.toml"
            path.write_text(text)
            yield path

    @contextlib.contextmanager
    def _handler_path(self) -> Iterator[None]:
        """Processes get PYTHONPATH entries for the handler modules this process imported from
        elsewhere than the working directory (a notebook's sys.path, a topology file's directory)."""
        raw = self.to_dict()
        roots = specs.import_roots(specs.spec_strings(raw["stage"])) + ([self.base_dir] if self.base_dir else [])
        old = os.environ.get("PYTHONPATH")
        have = (old or "").split(os.pathsep)
        extra = [r for r in roots if r not in have and r != os.getcwd()]
        if extra:
            os.environ["PYTHONPATH"] = os.pathsep.join([*filter(None, have), *extra])
        try:
            yield
        finally:
            if extra:
                if old is None:
                    os.environ.pop("PYTHONPATH", None)
                else:
                    os.environ["PYTHONPATH"] = old


def _names_a_file(source: str | os.PathLike[str]) -> bool:
    """A path (``os.PathLike``, a one-line string ending in .toml or naming a file), not TOML text."""
    if isinstance(source, os.PathLike):
        return True
    if "\n" in source or "=" in source:
        return False
    try:
        return source.endswith(".toml") or Path(source).is_file()
    except OSError:  # e.g. a name too long for a path
        return False
