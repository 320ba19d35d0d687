"""``rmp.popen_spawn_win32``: CPython's Windows spawn Popen has no rmp counterpart.

rmp supports Linux only; the module exists so that rmp's module list mirrors CPython's, and
importing it fails the way importing CPython's fails off Windows.
"""

raise ImportError("rmp.popen_spawn_win32 is Windows-only, and rmp supports Linux only")
