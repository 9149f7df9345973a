"""The two-process test helper fails a hung run at its deadline instead of waiting forever."""

import time

import pytest

from gloo_spawn import spawn


def _hangs(rank):
    time.sleep(3600)


def _raises(rank):
    raise ValueError(f"rank {rank} failed")


def test_a_hung_run_fails_at_its_deadline():
    start = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match=r"ranks \[0, 1\] still running after 3 s"):
        spawn(_hangs, args=(), deadline_s=3)
    assert time.monotonic() - start < 60


def test_a_worker_error_is_raised():
    with pytest.raises(Exception, match="rank . failed"):
        spawn(_raises, args=())
