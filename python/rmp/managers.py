"""``rmp.managers``: managers and proxies, on rmp's connections, processes and pool.

The manager logic is the running CPython's own ``multiprocessing/managers.py``, run as a
module of the ``rmp`` package, so that its relative imports bind to rmp: its server listens
with ``rmp.connection.Listener``, its proxies call through ``rmp.connection.Client`` (Rust
framing, wire-compatible with the stdlib's), ``start()`` runs the server in an rmp process
of the manager's context, and ``SyncManager``'s ``Pool`` is ``rmp.pool.Pool``. The behaviour
(registry, tokens, reference counting, proxies, the wire protocol) is therefore the running
Python's, version for version, and a stdlib client can talk to an rmp manager and the other
way round. Its exceptions are the stdlib's own objects (``RemoteError``).

Running the file here, rather than importing ``multiprocessing.managers``, gives rmp a copy
of the module's state of its own (the classes' registries, the ``listener_client`` table):
the stdlib's managers are left untouched.
"""

import multiprocessing.managers as _std
import os


def _run_stdlib_managers(namespace):
    path = os.path.join(os.path.dirname(_std.__file__), "managers.py")
    with open(path, "rb") as f:
        code = compile(f.read(), path, "exec")
    own = {k: namespace[k] for k in ("__doc__", "__file__")}
    namespace["__package__"] = "rmp"  # `from . import connection` -> rmp.connection
    exec(code, namespace)
    namespace.update(own)


_run_stdlib_managers(globals())

# The stdlib's exception class itself, so that ``except multiprocessing.managers.RemoteError``
# catches what rmp raises (the module's code looks the name up when it raises).
RemoteError = _std.RemoteError

del _run_stdlib_managers
