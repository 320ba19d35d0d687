"""``rmp.dummy.connection``: in-process connections (the stdlib's
``multiprocessing.dummy.connection``: threads need no shared memory)."""

from multiprocessing.dummy.connection import Client, Listener, Pipe

__all__ = ["Client", "Listener", "Pipe"]
