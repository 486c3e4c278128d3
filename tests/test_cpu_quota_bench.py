"""tools.cpu_quota_bench: a cgroup that holds the server to a share of one CPU."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest

from tools.cpu_quota_bench import CpuQuota, table

BUSY = "import time\nend = time.time() + 1.0\nwhile time.time() < end: pass\n"


def cpu_seconds_of_busy_second(quota: CpuQuota | None) -> float:
    """CPU seconds a process spinning for one second of wall time gets."""
    command = [sys.executable, "-c", BUSY]
    started = time.perf_counter()
    done = subprocess.run(quota.wrap(command) if quota else command, check=True)
    assert done.returncode == 0 and time.perf_counter() - started >= 1.0
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime


def test_a_process_in_the_cgroup_gets_its_share_of_a_cpu() -> None:
    try:
        quota = CpuQuota(0.2).__enter__()
    except (PermissionError, RuntimeError) as exc:
        pytest.skip(f"no cgroup here: {exc}")
    try:
        before = cpu_seconds_of_busy_second(None)
        after = cpu_seconds_of_busy_second(quota)
        # A second of spinning gets at most a fifth of a second of CPU (and a period's slack).
        assert after - before <= 0.2 * 1.0 + 0.15
        assert quota.throttling()["nr_throttled"] > 0
    finally:
        quota.__exit__(None, None, None)
    assert quota.path is not None and not quota.path.exists()


def test_the_share_must_be_positive() -> None:
    with pytest.raises(ValueError, match="above 0"):
        CpuQuota(0)


def test_the_table_shows_the_startup_steps_and_their_shares() -> None:
    result = {
        "cpu_quota": 0.1,
        "detector": "centerface",
        "load_before": [0.1, 0.1, 0.1],
        "load_after": [0.2, 0.1, 0.1],
        "startup": {"steps_s": {"load the model": 3.0, "warm up": 1.0, "first answer": 2.0}},
    }
    text = table(result)
    assert "| load the model | 3.00 s (75% of the startup) |" in text
    assert "| first answer | 2.00 s |" in text and "detector: centerface" in text
