"""Which stage logic an instance runs: the embedder's, or the kind the topology names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from alto_bus.deploy.topology import StageConfig, add_handler_dir
from alto_bus.runtime.kinds import stage_kind
from alto_bus.runtime.stage import FunctionStage, StageLogic


def build_logic(config: StageConfig, handler: Callable[..., Any] | StageLogic | None,
                factory: Callable[[StageConfig], StageLogic] | None) -> StageLogic:
    """A pool's engine-sharing ``factory`` first, then an embedder's ``handler`` (a
    StageLogic as it is, a callable as a function stage), else the stage's kind."""
    add_handler_dir(config.base_dir)  # the topology's handler modules import from here
    if factory is not None:
        return factory(config)
    if isinstance(handler, StageLogic):
        return handler
    if handler is not None:
        return FunctionStage(handler)
    return stage_kind(config.kind).build(config)
