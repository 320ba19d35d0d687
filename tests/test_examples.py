"""The programs in ``examples/`` (plain ``import rmp as multiprocessing`` code) run unchanged
under every start method and print what they should."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"

EXPECTED = {
    "process_basic.py": [
        "hello ada from worker-0",
        "hello grace from worker-1",
        "hello linus from worker-2",
        "killed child exit code: -9",
    ],
    "pipe_pingpong.py": [
        "('echo', 1)",
        "('echo', 'two')",
        "('echo', [3, 3, 3])",
        "('echo', {'four': 4})",
        "b'bye'",
    ],
    "shared_counter.py": ["total: 10000"],
    "numpy_shared_array.py": ["matches: True"],
    "futures_executor.py": ["[0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"],
    "listener_client.py": ["client got: 10", "client exit code: 0"],
    "sync_primitives.py": ["results: [0, 10, 20] done: 3"],
    "named_shared_memory.py": ["b'HELLO'"],
    "pool_worker_crash.py": [
        "results: [0, 1, 4, 'lost', 16, 25]",
        "pool still works: [1, 2, 3]",
    ],
    "pool_tqdm.py": ["sum of cubes: 396010000 True", "with progress=: 396010000"],
    "numpy_queue.py": [
        "sums: %s" % [i * 256 * 256 for i in range(8)],
        "producer exit code: 0",
    ],
    "pool_tasks.py": [
        "scaled: [0, 10, 20, 30, 40, 50, 60, 70]",
        "words: 900",
        "unordered: [0, 10, 20, 30, 40]",
        "starmap: [32, 27]",
        "callback: [40]",
        "error: negative: -2 | cause: RemoteTraceback",
    ],
    "joinable_pipeline.py": [
        "sums: %s" % [i * 100_000 for i in range(12)],
        "workers exit codes: [0, 0, 0]",
    ],
}

# Runs an example as __main__ (so spawn and forkserver children import it as __mp_main__)
# after choosing the start method; rmp shares the stdlib's default.
_RUNNER = (
    "import multiprocessing, runpy, sys; "
    "multiprocessing.set_start_method(sys.argv[1]); "
    "sys.argv = sys.argv[2:]; "
    "runpy.run_path(sys.argv[0], run_name='__main__')"
)


def test_every_example_is_listed():
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name, method):
    if name in ("numpy_shared_array.py", "joinable_pipeline.py", "numpy_queue.py"):
        pytest.importorskip("numpy")
    if name == "pool_tqdm.py":
        pytest.importorskip("tqdm")
    out = subprocess.run(
        [sys.executable, "-c", _RUNNER, method, str(EXAMPLES / name)],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=EXAMPLES,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == EXPECTED[name], out.stderr
