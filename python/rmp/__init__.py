"""rmp: a drop-in, Rust-accelerated replacement for CPython's ``multiprocessing``.

``import rmp as multiprocessing`` (or ``from rmp import Process``) and the code keeps working.
The namespace is built from the default context, exactly as CPython builds its own. Linux only.
"""

import sys

from . import context

__version__ = "0.1.0"

__all__ = [x for x in dir(context._default_context) if not x.startswith("_")]
globals().update((name, getattr(context._default_context, name)) for name in __all__)

SUBDEBUG = 5
SUBWARNING = 25


def __getattr__(name):
    # The Rust extension is loaded on first use (a spawned child that never needs it does not
    # load it); `rmp._core` still works before that.
    if name == "_core":
        import importlib

        return importlib.import_module("rmp._core")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# As in CPython: children import the parent's main module as __mp_main__.
if "__main__" in sys.modules:
    sys.modules["__mp_main__"] = sys.modules["__main__"]
