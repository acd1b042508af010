"""The ``aggregate`` stage kind: the runtime side of :class:`alto_workers.aggregate.Aggregator`.

The runtime routes every item of one group to this instance (keyed routing on
``path[:key_depth]`` in the request's epoch); this adapter feeds the aggregator the
DATA/END/DROP it receives and emits one item per completed group, with the group's
path, so aggregations nest. Markers above the key depth are forwarded unchanged.
"""

from __future__ import annotations

from typing import Any

from alto_bus.runtime.stage import KeyedStage, StageLogic
from alto_bus.deploy.topology import StageConfig, TopologyError
from alto_bus.runtime.kinds import REQUIRED, StageKind
from alto_workers.aggregate import DROPPED, Aggregator, make_operator
from alto_workers.barrier import BarrierStage
from alto_workers.join import ByInput


class AggregateStage(KeyedStage):
    """Feeds the aggregator whole items and markers; emits one item per completed group."""

    def __init__(self, key_depth: int, op: str, options: dict | None = None,
                 join: tuple[int, tuple[str, ...]] | None = None) -> None:
        operator = make_operator(op, options or {})
        if join is not None:  # several inputs: (fork depth, input names)
            operator = ByInput(operator, *join)
        self.agg = Aggregator(key_depth, operator)
        super().__init__(self.agg)

    def on_item(self, path: list, payload: Any, epoch: int) -> None:
        self._emit(self.guarded(self.agg.data, epoch, path, payload), epoch)

    def on_group_end(self, path: list, n: int, epoch: int) -> None:
        self._emit(self.guarded(self.agg.end, epoch, path, n), epoch)

    def on_group_drop(self, path: list, epoch: int) -> None:
        self._emit(self.guarded(self.agg.drop, epoch, path), epoch)

    def _emit(self, done: list[tuple[tuple, Any]], epoch: int) -> None:
        for group, output in done:
            if output is DROPPED:
                self.out.drop(list(group), epoch)
            else:
                self.out.data(list(group), 0, output, True, epoch)


def build_stage(config: StageConfig) -> StageLogic:
    fields = config.fields
    if fields["op"] == "barrier":
        return BarrierStage(config.key_depth or 1)
    # A per-item operator (filter) has no key depth: it keeps paths as they are.
    outside = tuple(i for i in config.inputs if i not in config.loop_inputs)
    join = (config.merge_depth, outside) if config.merge_depth is not None else None
    return AggregateStage(config.key_depth or 1, fields["op"], fields.get("options"), join)


FIELDS = {
    "key": ((str,), None),           # "request", or the upstream stage whose items are groups
    "op": ((str,), REQUIRED),        # collect, count, sum, all, any, top_k, filter, barrier, module:function
    "options": ((dict,), None),      # the operator's options (k, score, field, where, ...)
    "eps": ((int, float), 0.25),     # bounded load: skip instances over (1 + eps) x mean
}


def check(values: dict, input: str | None, label: str, check_handlers: bool) -> bool:
    """The operator exists and takes its options; a keyed one has a key. Never fans out."""
    if input is None:
        raise TopologyError(f"{label}: field 'input': an aggregate stage needs an input stage")
    if values["eps"] < 0:
        raise TopologyError(f"{label}: field 'eps' must be >= 0, got {values['eps']}")
    try:
        op = make_operator(values["op"], values["options"] or {})
    except ImportError as exc:
        raise TopologyError(f"{label}: field 'op': {exc}") from None
    except ValueError as exc:
        field = "options" if values["options"] and "option" in str(exc) else "op"
        raise TopologyError(f"{label}: field '{field}': {exc}") from None
    values["per_item"] = bool(op.per_item)
    values["keeps_paths"] = bool(getattr(op, "keeps_paths", False))
    if values["key"] is None and not op.per_item:
        raise TopologyError(f"{label}: missing required field 'key' ('request' or an upstream stage)")
    return False


KIND = StageKind("aggregate", FIELDS, build=build_stage, check=check, keyed=True)
