"""``rmp.cluster``: the Pool API on a cluster engine, one line away from the local Pool.

``rmp.get_context("ray").Pool(...)`` is a pool whose workers are Ray actors, on whatever
cluster ``ray.init()`` connects to (``RAY_ADDRESS``, or ``ray.init(address=...)`` called
first; a local Ray instance otherwise). ``RMP_POOL_BACKEND=ray`` in the environment makes
the top-level ``rmp.Pool`` (the default context's) that pool, so an unchanged program runs
on the cluster.

Why a context: in the stdlib a context says *where and how workers start* (fork, spawn,
forkserver), and ``Pool`` is one of its methods; a cluster engine is one more answer to that
question, so it slots in where a program already chooses it, and everything that takes a
context keeps its shape. A cluster context starts no processes of its own: its ``Process``
raises, so that code written for local processes (``ProcessPoolExecutor(mp_context=)``,
``Manager()``) fails clearly instead of silently running on this machine. Its other
primitives (``Queue``, ``Lock``, ``Value``...) are rmp's local ones, shared between processes
of this machine only; cluster workers cannot reach them.

Ray is an optional dependency (``pip install 'rmp-multiprocessing[ray]'``); ``import rmp``
and ``import rmp.cluster`` never import it.
"""

import importlib.util

from ..context import BaseContext

__all__ = ["RayContext", "BACKENDS"]

# Backend name -> the module that must be importable, and what to install for it.
BACKENDS = {"ray": ("ray", "rmp-multiprocessing[ray]")}


class _NoProcess:
    """The ``Process`` of a cluster context: it refuses, saying what to use instead."""

    def __init__(self, *args, **kwds):
        raise ValueError(
            "the 'ray' context runs Pool tasks on a Ray cluster and starts no processes of "
            "its own: use rmp.get_context() (or 'fork', 'spawn', 'forkserver') for Process, "
            "Manager and ProcessPoolExecutor"
        )


class RayContext(BaseContext):
    """The context whose ``Pool`` runs on Ray (``rmp.get_context("ray")``)."""

    _name = "ray"
    Process = _NoProcess

    def Pool(
        self,
        processes=None,
        initializer=None,
        initargs=(),
        maxtasksperchild=None,
        *,
        task_timeout=None,
        ray_remote_args=None,
    ):
        """A pool of ``processes`` Ray actors (default: the cluster's CPUs), with the local
        Pool's API and fault behaviour. ``ray_remote_args``: extra ``ray.remote`` options for
        each worker actor (``{"num_gpus": 1}``, ``{"resources": {...}}``...)."""
        self._check_available()
        from .ray import Pool

        return Pool(
            processes,
            initializer,
            initargs,
            maxtasksperchild,
            context=self,
            task_timeout=task_timeout,
            ray_remote_args=ray_remote_args,
        )

    def _check_available(self):
        module, extra = BACKENDS[self._name]
        if importlib.util.find_spec(module) is None:
            raise ModuleNotFoundError(
                "rmp.get_context(%r) needs %s, which is not installed: "
                "pip install '%s'" % (self._name, module.capitalize(), extra),
                name=module,
            )


_contexts = {"ray": RayContext()}


def get_context(name):
    """The cluster context called ``name`` (ValueError if there is none; ModuleNotFoundError,
    saying what to install, if its engine is missing)."""
    try:
        ctx = _contexts[name]
    except KeyError:
        raise ValueError("cannot find context for %r" % name) from None
    ctx._check_available()
    return ctx
