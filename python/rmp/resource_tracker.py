"""``rmp.resource_tracker``: the stdlib's resource tracker process, shared.

One tracker process per process tree cleans up named resources (POSIX shared memory,
semaphores) that a crashed process leaked. Spawned rmp children inherit the parent's tracker
descriptor exactly as stdlib children do, so rmp and stdlib objects register with the same
tracker; a second tracker would double-unlink. rmp's own shared memory is anonymous (memfd)
and never needs tracking.
"""

from multiprocessing import resource_tracker as _std
from multiprocessing.resource_tracker import (  # noqa: F401
    ResourceTracker,
    ensure_running,
    getfd,
    register,
    unregister,
)

__all__ = ["ensure_running", "register", "unregister"]


def __getattr__(name):
    # The tracker singleton and its cleanup table are the stdlib's.
    if name.startswith("_") and not name.startswith("__"):
        return getattr(_std, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
