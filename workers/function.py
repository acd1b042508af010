"""The ``function`` stage kind: any Python callable named ``module:function``.

With ``options`` in the topology, ``handler`` names a factory that is called once with
them and returns the callable (for handlers that load something first).
"""

from __future__ import annotations

from alto_bus.stage import FunctionStage
from alto_bus.topology import StageConfig, import_object


def build_stage(config: StageConfig) -> FunctionStage:
    fn = import_object(config.fields["handler"])
    options = config.fields.get("options")
    if options is not None:
        fn = fn(**options)
    return FunctionStage(fn)
