"""``rmp.resource_sharer``: the stdlib's background fd-sharing server, shared.

Used to hand a descriptor to a process that was not started by us (``DupFd`` outside of
spawning). It is process-global state with a listener thread; rmp uses the stdlib's one so
that descriptors registered by stdlib and rmp objects are served by a single thread.
"""

from multiprocessing.resource_sharer import DupFd, stop  # noqa: F401

__all__ = ["stop", "DupFd"]
