"""The one error of starting a topology: a host (or this machine) cannot run its share."""

from __future__ import annotations


class NodeError(RuntimeError):
    """This host cannot run its share; the message names the host (and file)."""


LaunchError = NodeError  # the name ``alto launch`` callers know (scripts, tests)
