"""Helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import os


def children_of(pid: int) -> dict[int, str]:
    """pid -> state letter (R, S, Z...) of the direct children of ``pid``, read from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # comm may contain spaces and parentheses: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[1]) == pid:
            out[int(entry)] = fields[0]
    return out
