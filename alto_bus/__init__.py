"""alto_bus: serve compound AI pipelines over a ZeroMQ bus (ALTO, arXiv 2403.04311)."""

from alto_bus.client import AsyncClient, Client, Partial, RequestError
from alto_bus.runtime.worker import Worker, WorkerError
from alto_bus.runtime.stage import StageLogic
from alto_bus.graph.api import Graph

__all__ = ["AsyncClient", "Client", "Graph", "Partial", "RequestError", "StageLogic", "Worker", "WorkerError"]
__version__ = "0.1.0"
