"""A stage instance: the worker (inbox, handler loop, outboxes), its control link to the
broker, the stage interface that kinds implement, the registry of stage kinds, and the pool
member that runs several LM stages on one engine."""


def __getattr__(name: str):
    # ``from alto_bus.runtime import Worker`` (the module this package replaced) keeps working,
    # without importing the worker whenever a kind imports the stage interface.
    if name in ("Worker", "WorkerError"):
        from alto_bus.runtime import worker

        return getattr(worker, name)
    raise AttributeError(name)
