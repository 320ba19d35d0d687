"""``rmp.dummy.connection``: in-process connections (the stdlib's
``multiprocessing.dummy.connection``: threads need no shared memory)."""

# ``families``: not in the stdlib's __all__ either, but its tests use it.
from multiprocessing.dummy.connection import Client, Listener, Pipe, families  # noqa: F401

__all__ = ["Client", "Listener", "Pipe"]
