"""``rmp.shared_memory``: named segments shared with the stdlib by name, cleaned up by the
shared resource tracker when their creator crashes, and the stdlib's errors on bad input."""

from __future__ import annotations

import multiprocessing
import multiprocessing.shared_memory as std_shm
import os
import subprocess
import sys
import textwrap

import pytest

import rmp
import rmp.shared_memory as rmp_shm

pytestmark = pytest.mark.timeout(60)


def test_module_is_the_stdlibs():
    # Name-based segments must interoperate: the same classes, the same tracker, the same
    # module globals (code that patches them affects both).
    assert rmp_shm is std_shm
    assert rmp.shared_memory is std_shm
    assert rmp_shm.SharedMemory is std_shm.SharedMemory


def _write_through(name, payload):
    shm = rmp_shm.SharedMemory(name=name)
    try:
        shm.buf[: len(payload)] = payload
    finally:
        shm.close()


def _bump_list(name):
    sl = rmp_shm.ShareableList(name=name)
    try:
        sl[0] += 1
        sl[1] = "changed"
    finally:
        sl.shm.close()


def test_child_opens_parents_segment_by_name(start_method):
    ctx = rmp.get_context(start_method)
    shm = rmp_shm.SharedMemory(create=True, size=4096)
    try:
        p = ctx.Process(target=_write_through, args=(shm.name, b"rmp child"))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert bytes(shm.buf[:9]) == b"rmp child"
    finally:
        shm.close()
        shm.unlink()


def test_shareable_list_in_a_child(start_method):
    ctx = rmp.get_context(start_method)
    sl = rmp_shm.ShareableList([41, "original", 2.5, None])
    try:
        p = ctx.Process(target=_bump_list, args=(sl.shm.name,))
        p.start()
        p.join(30)
        assert p.exitcode == 0
        assert list(sl) == [42, "changed", 2.5, None]
    finally:
        sl.shm.close()
        sl.shm.unlink()


def test_stdlib_child_and_rmp_child_share_one_segment():
    shm = rmp_shm.SharedMemory(create=True, size=64)
    try:
        p = multiprocessing.get_context("spawn").Process(
            target=_write_through, args=(shm.name, b"std")
        )
        p.start()
        p.join(30)
        assert p.exitcode == 0
        q = rmp.get_context("spawn").Process(target=_write_through, args=(shm.name, b"R"))
        q.start()
        q.join(30)
        assert q.exitcode == 0
        assert bytes(shm.buf[:3]) == b"Rtd"
    finally:
        shm.close()
        shm.unlink()


_CRASH = textwrap.dedent(
    """
    import os, signal, sys
    import rmp
    from rmp import shared_memory

    def leak(conn):
        shm = shared_memory.SharedMemory(create=True, size=1 << 16)
        conn.send(shm.name)
        conn.recv()  # wait until the parent saw the segment
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__main__":
        ctx = rmp.get_context(sys.argv[1])
        a, b = ctx.Pipe()
        p = ctx.Process(target=leak, args=(b,))
        p.start()
        name = a.recv()
        print(name, os.path.exists("/dev/shm/" + name.lstrip("/")), flush=True)
        a.send("go")
        p.join(30)
        print(p.exitcode, flush=True)
    """
)


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_segment_of_a_crashed_creator_is_cleaned_up(tmp_path, method):
    script = tmp_path / "crash.py"
    script.write_text(_CRASH)
    out = subprocess.run(
        [sys.executable, str(script), method],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    lines = out.stdout.split("\n")
    name, existed = lines[0].split()
    assert existed == "True", out
    assert lines[1] == "-9", out
    # The interpreter has exited, and with it the last user of its resource tracker, which
    # unlinks what the killed child left behind (and says so).
    assert not os.path.exists("/dev/shm/" + name.lstrip("/")), out
    assert "leaked shared_memory" in out.stderr, out.stderr


def test_bad_input_raises_the_stdlibs_errors():
    with pytest.raises(FileNotFoundError):
        rmp_shm.SharedMemory(name="rmp-test-no-such-segment")
    with pytest.raises(ValueError):
        rmp_shm.SharedMemory(create=True, size=0)
    with pytest.raises(ValueError):
        rmp_shm.SharedMemory(create=True, size=-1)
