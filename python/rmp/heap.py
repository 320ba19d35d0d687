"""Shared memory for ``Value``, ``Array`` and the synchronization primitives.

The counterpart of CPython's ``multiprocessing.heap``. Memory comes from *arenas*: anonymous
``memfd`` segments mapped shared (``rmp._core.Segment``), which have no name, so nothing can
leak in ``/dev/shm`` when a process is SIGKILLed. Small objects are sub-allocated from shared
arenas, so a thousand ``Value`` objects cost one descriptor and one mapping, not a thousand.

A forked child inherits every arena mapped. A spawn or forkserver child receives an arena's
descriptor (``DupFd``) when an object living in it is pickled for the child, and maps each
arena once however many objects of it arrive.
"""

import collections
import mmap
import os
import threading
import weakref

from . import _core, reduction, util

__all__ = ["Arena", "BufferWrapper", "Heap"]

#: Blocks are aligned (and sizes rounded) to a cache line: no two objects share a line, so a
#: process spinning on one lock never slows the holder of another object's line, nor the
#: holder of this lock writing the data it guards (measured: two processes incrementing a
#: Value under its lock ran 1.5x slower when the value and its lock shared a line).
ALIGNMENT = 64


def _roundup(n, alignment):
    return (n + alignment - 1) & ~(alignment - 1)


class Arena:
    """One shared segment that blocks are cut from.

    ``token`` names the arena across processes, so that a child maps each arena once: the
    memfd's device and inode numbers, unique among files that exist (and an arena's file
    exists as long as any process maps it).
    """

    def __init__(self, size, segment=None, token=None):
        if size <= 0:
            raise ValueError("arena size must be positive")
        self.size = size
        self.segment = segment if segment is not None else _core.Segment(size)
        if token is None:
            st = os.fstat(self.segment.fileno())
            token = (st.st_dev, st.st_ino)
        self.token = token
        self.buffer = memoryview(self.segment)

    def __repr__(self):
        return "<rmp.heap.Arena token=%r size=%d fd=%d>" % (
            self.token,
            self.size,
            self.segment.fileno(),
        )


# Arenas this process mapped, by token: a second object from the same arena reuses the
# mapping. Weak, so an arena goes (unmapped, descriptor closed) with its last object.
_arenas_by_token = weakref.WeakValueDictionary()
_arenas_lock = threading.Lock()


def _after_fork_in_child():
    # Another thread may have held the lock at the fork; it does not exist in the child.
    global _arenas_lock
    _arenas_lock = threading.Lock()
    BufferWrapper._heap._after_fork_in_child()


def _after_fork_in_parent():
    BufferWrapper._heap._forked()


def _register_arena(arena):
    with _arenas_lock:
        _arenas_by_token[arena.token] = arena


def reduce_arena(arena):
    return rebuild_arena, (arena.size, arena.token, reduction.DupFd(arena.segment.fileno()))


def rebuild_arena(size, token, dupfd):
    fd = dupfd.detach()
    with _arenas_lock:
        arena = _arenas_by_token.get(token)
        if arena is not None:
            os.close(fd)
            return arena
        arena = Arena(size, _core.Segment.adopt(fd, size), token)
        _arenas_by_token[token] = arena
        return arena


reduction.register(Arena, reduce_arena)
os.register_at_fork(
    after_in_child=lambda: _after_fork_in_child(),
    after_in_parent=lambda: _after_fork_in_parent(),
)


class Heap:
    """A per-process allocator over arenas.

    Sizes are rounded to ``ALIGNMENT``; freed blocks go to a free list per rounded size and
    are reused first; new blocks are cut from the current arena; requests larger than half
    an arena get an arena of their own, released when the block is freed. A forked child
    starts a fresh heap (new arenas), as CPython's does, so parent and child never cut the
    same bytes.

    A freed block is reused only if no other process can still be using it: not if it was
    pickled for another process, nor if a fork happened while it was allocated (the child
    inherited it). Those blocks are left unused for good: reusing one would hand the memory of
    a lock or a value a child still holds to a new, unrelated object. CPython's
    semaphores are kernel objects that live as long as anyone uses them; this keeps the same
    guarantee for rmp's, at the cost of the bytes of the shared objects a process frees.
    """

    _ARENA_SIZE = 1 << 20

    def __init__(self, arena_size=None):
        self._lastpid = os.getpid()
        self._lock = threading.Lock()
        self._arena_size = arena_size or max(self._ARENA_SIZE, mmap.PAGESIZE)
        self._arena = None  # the arena new small blocks are cut from
        self._next = 0  # first free offset in it
        self._free = {}  # rounded size -> [(arena, start)]
        self._arenas = []  # arenas holding live or free small blocks
        self._generation = 0  # forks of this process so far (see the class comment)
        # Frees that found the lock taken: the garbage collector can run a block's finalizer
        # in the middle of malloc() on the same thread, and waiting for the lock there would
        # wait forever. They are done by the next call that holds the lock.
        self._pending = collections.deque()

    def _reinit_after_fork(self):
        self.__init__(self._arena_size)

    def _after_fork_in_child(self):
        self._lock = threading.Lock()

    def _forked(self):
        self._generation += 1

    def _new_arena(self, size):
        arena = Arena(size)
        _register_arena(arena)
        return arena

    def malloc(self, size):
        """Returns a zero-filled block ``(arena, start, stop)`` of at least ``size`` bytes."""
        if size < 0:
            raise ValueError(f"Size {size:n} out of range")
        if size > 1 << 62:
            raise OverflowError(f"Size {size:n} too large")
        if os.getpid() != self._lastpid:
            self._reinit_after_fork()
        rounded = _roundup(max(size, 1), ALIGNMENT)
        with self._lock:
            self._free_pending()
            if rounded > self._arena_size // 2:
                arena = self._new_arena(_roundup(rounded, mmap.PAGESIZE))
                return (arena, 0, rounded)
            blocks = self._free.get(rounded)
            if blocks:
                arena, start = blocks.pop()
                arena.buffer[start : start + rounded] = bytes(rounded)
                return (arena, start, start + rounded)
            if self._arena is None or self._next + rounded > self._arena.size:
                self._arena = self._new_arena(self._arena_size)
                self._arenas.append(self._arena)
                self._next = 0
            start = self._next
            self._next += rounded
            return (self._arena, start, start + rounded)

    def free(self, info):
        """Returns a block to the heap (``info``: ``[block, generation, shared]`` kept by its
        ``BufferWrapper``). Blocks of another process's heap (inherited across fork), and
        blocks another process may be using, are left alone."""
        if os.getpid() != self._lastpid:
            return
        if not self._lock.acquire(False):
            self._pending.append(info)
            return
        try:
            self._free_pending()
            self._free_block(info)
        finally:
            self._lock.release()

    def _free_pending(self):
        pending = self._pending
        while pending:
            self._free_block(pending.popleft())

    def _free_block(self, info):
        """Under the lock."""
        (arena, start, stop), generation, shared = info
        if arena.size != self._arena_size or arena not in self._arenas:
            # A dedicated arena: dropping the last reference unmaps it (in this process; a
            # child that mapped it keeps its own mapping).
            return
        if shared or generation != self._generation:
            return
        self._free.setdefault(stop - start, []).append((arena, start))


class BufferWrapper:
    """A block of shared memory that is freed when this object is garbage collected in the
    process that allocated it. Pickles (while spawning, or through a queue/pipe with the
    resource sharer) as its arena's descriptor and offsets."""

    _heap = Heap()

    def __init__(self, size):
        if size < 0:
            raise ValueError(f"Size {size:n} out of range")
        heap = BufferWrapper._heap
        block = heap.malloc(size)
        self._state = (block, size)
        # [block, fork generation at allocation, pickled for another process]
        self._info = [block, heap._generation, False]
        util.Finalize(self, heap.free, args=(self._info,))
        # Out of the cyclic GC's view (it refers to no object that could lead back to it): a
        # collection runs the weakref callbacks of its garbage (this Finalize among them)
        # before the garbage's finalizers, so a wrapper found to be garbage with its lock
        # would free the block while, say, a generator suspended in `with lock:` has yet to
        # release it, and a new lock could get the same block. Untracked, the wrapper is
        # freed only when its owner drops it, after every finalizer.
        _core.gc_untrack(self)

    def create_memoryview(self):
        (arena, start, _stop), size = self._state
        return arena.buffer[start : start + size]

    @property
    def segment(self):
        return self._state[0][0].segment

    @property
    def offset(self):
        return self._state[0][1]

    def __reduce__(self):
        info = getattr(self, "_info", None)
        if info is not None:
            info[2] = True  # another process may use it from now on: never reuse it
        return _rebuild_wrapper, self._state


def _rebuild_wrapper(block, size):
    w = BufferWrapper.__new__(BufferWrapper)
    w._state = (block, size)
    return w
