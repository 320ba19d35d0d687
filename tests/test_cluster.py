"""The cluster contexts without their engines: ``import rmp`` never imports Ray, and asking
for the Ray backend without Ray installed says what to install. Each case runs in a fresh
interpreter in which ``ray`` cannot be imported (whether or not it is installed here)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import rmp

pytestmark = pytest.mark.timeout(60)

# Makes ``import ray`` (and find_spec) fail, as if Ray were not installed.
_NO_RAY = "import sys; sys.modules['ray'] = None\n"


def _run(code, env=None):
    import os

    full_env = dict(os.environ)
    full_env.update(env or {})
    out = subprocess.run(
        [sys.executable, "-c", _NO_RAY + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=50,
        env=full_env,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_rmp_never_imports_the_engine():
    # Not even when Ray is installed: checked in an interpreter that can import it.
    code = "import sys, rmp, rmp.cluster, rmp.pool; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_missing_engine_error_says_what_to_install():
    out = _run(
        """
        import rmp
        try:
            rmp.get_context("ray")
        except ModuleNotFoundError as e:
            print(e.name, "|", e)
        """
    )
    assert out.strip() == (
        "ray | rmp.get_context('ray') needs Ray, which is not installed: "
        "pip install 'rmp-multiprocessing[ray]'"
    )


def test_missing_engine_error_from_the_environment_switch():
    out = _run(
        """
        import rmp
        try:
            rmp.Pool(2)
        except ModuleNotFoundError as e:
            print(e)
        """,
        env={"RMP_POOL_BACKEND": "ray"},
    )
    assert "pip install 'rmp-multiprocessing[ray]'" in out


def test_unknown_backend_in_the_environment_is_an_error(monkeypatch):
    monkeypatch.setenv("RMP_POOL_BACKEND", "dask-maybe")
    with pytest.raises(ValueError, match="RMP_POOL_BACKEND='dask-maybe'"):
        rmp.Pool(1)


def test_the_cluster_context_is_not_a_start_method():
    assert "ray" not in rmp.get_all_start_methods()
    with pytest.raises(ValueError):
        rmp.set_start_method("ray", force=True)
    with pytest.raises(ValueError, match="cannot find context for 'nope'"):
        rmp.get_context("nope")


def test_the_cluster_context_starts_no_processes():
    from rmp.cluster import RayContext

    ctx = RayContext()  # what get_context("ray") returns, without its engine check
    assert ctx.get_start_method() == "ray"
    with pytest.raises(ValueError, match="starts no processes of its own"):
        ctx.Process(target=print)
