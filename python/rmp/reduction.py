"""``rmp.reduction``: how objects are pickled for other processes.

The reducer registry is process-global state that stdlib objects register into (connections,
sockets, SemLocks), so rmp shares the stdlib's ``ForkingPickler`` and its ``_extra_reducers``
instead of keeping a second registry (DESIGN.md, "Interop seams").
"""

from multiprocessing import reduction as _std
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


def __getattr__(name):
    # Pickles refer to the stdlib's private rebuild helpers by module path
    # (``multiprocessing.reduction._rebuild_socket``...): resolve them when this module stands
    # in for the stdlib's.
    if name.startswith("_") and not name.startswith("__"):
        return getattr(_std, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
