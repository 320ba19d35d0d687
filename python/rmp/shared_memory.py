"""``rmp.shared_memory``: named shared memory, the stdlib's classes themselves.

``SharedMemory`` and ``ShareableList`` are name-based by definition: a segment is a POSIX
shared-memory object (``/dev/shm/<name>``) that any process, rmp's or the stdlib's, may open by
name, and whose lifetime the stdlib's resource tracker governs (a segment left behind by a
crashed creator is unlinked when the tracker's users are gone). rmp shares that tracker process
with the stdlib (see ``rmp.resource_tracker``), so the stdlib's implementation is exactly the
right one: this module *is* ``multiprocessing.shared_memory`` (it replaces itself in
``sys.modules`` on import), which keeps segments, names, ``track=`` (Python 3.13+), errors,
cleanup and even patched module globals identical across both libraries.

Everything else in rmp that needs shared memory (``Value``, ``Array``, the locks, the queues)
uses anonymous memfd segments instead (``rmp.heap``), which cannot leak at all.
"""

import sys
from multiprocessing import shared_memory as _std

sys.modules[__name__] = _std
