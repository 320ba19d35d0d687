"""Adapter for rmp's Ray backend: ``get_context(any method)`` is ``rmp.get_context("ray")``
on a local Ray instance with two CPUs (the machine's), started on first use.

What: the cluster scenarios ask for ``mod.get_context("fork").Pool(2)``; here that pool's two
workers are Ray actors. Registered with ``groups=("cluster",)``: it runs only in the cluster
scenarios, beside the stdlib's and rmp's local pools.

Why: the cluster issue asks for the per-task overhead and the efficiency of the Ray backend on
this machine, measured by the same scenario code as the local pools, so that the local/cluster
trade-off in docs/scaling.md comes from one run. The instance starts outside the measured part
(pool creation is outside it).
"""

from __future__ import annotations

import ray

import rmp


def get_context(method=None):
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    return rmp.get_context("ray")
