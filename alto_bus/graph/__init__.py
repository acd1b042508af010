"""Graphs of stages in one process: the reference interpreter (reference.py)."""

from alto_bus.graph.api import Graph, StageRef  # noqa: E402,F401  (the Python API: api.py)
