"""Deterministic CPU-bound work shared by the CPU floor and (later) the Pool scenarios.

What: :func:`cpu_task` is a pure-Python loop of about 1 ms on a current x86-64 core whose
result depends only on its seed, so whoever runs it (a raw forked process, a Pool worker) can
be checked against the value computed in the parent.

Why: the Pool scenarios must be read against the same work done by raw forked processes
(``floor.cpu_fork``), so both use this one function.
"""

from __future__ import annotations

TASK_STEPS = 11_000  # about 1 ms of pure-Python arithmetic per call


def cpu_task(seed: int) -> int:
    """About 1 ms of pure-Python work; the result depends only on ``seed``."""
    acc = seed & 0x7FFFFFFF
    for _ in range(TASK_STEPS):
        acc = (acc * 1103515245 + 12345) & 0x7FFFFFFF
    return acc


def checksum(values) -> int:
    """An order-sensitive 64-bit digest of a sequence of task results."""
    h = 0
    for v in values:
        h = (h * 1000003 + v) & 0xFFFFFFFFFFFFFFFF
    return h
