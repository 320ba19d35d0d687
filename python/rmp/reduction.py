"""``rmp.reduction``: how objects are pickled for other processes.

The reducer registry is process-global state that stdlib objects register into (connections,
sockets, SemLocks), so rmp shares the stdlib's ``ForkingPickler`` and its ``_extra_reducers``
instead of keeping a second registry (DESIGN.md, "Interop seams").
"""

from multiprocessing.reduction import (  # noqa: F401
    ACKNOWLEDGE,
    HAVE_SEND_HANDLE,
    AbstractReducer,
    DupFd,
    ForkingPickler,
    dump,
    recv_handle,
    recvfds,
    register,
    send_handle,
    sendfds,
)

__all__ = [
    "send_handle",
    "recv_handle",
    "ForkingPickler",
    "register",
    "dump",
    "DupFd",
    "sendfds",
    "recvfds",
]
