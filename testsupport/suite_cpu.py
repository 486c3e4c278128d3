"""A pytest plugin: the CPU time each test takes, its own and its children's, and the whole run's.

    .venv/bin/python -m pytest -p testsupport.suite_cpu --cpu-report suite-cpu.json

Run it without ``-n`` (one process): a test's children (servers, browsers, commands) are counted
when they end, so they land on the test that stopped them. The report lists every test with its
seconds of CPU (``self``, ``children``) and of wall time, the heaviest first, and the totals: the
work the suite needs, whatever the number of cores it is spread over.
"""

from __future__ import annotations

import json
import resource
import time
from pathlib import Path
from typing import Any

import pytest

_rows: list[dict[str, Any]] = []


def _cpu() -> tuple[float, float]:
    """CPU seconds (user + system) of this process, and of its children that have ended."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--cpu-report", type=Path, help="write each test's CPU seconds here (JSON)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    own, children = _cpu()
    started = time.perf_counter()
    yield
    own_after, children_after = _cpu()
    _rows.append(
        {
            "test": item.nodeid,
            "self_s": round(own_after - own, 2),
            "children_s": round(children_after - children, 2),
            "wall_s": round(time.perf_counter() - started, 2),
        }
    )


def pytest_sessionfinish(session: pytest.Session) -> None:
    out = session.config.getoption("--cpu-report")
    if out is None:
        return
    own, children = _cpu()
    rows = sorted(_rows, key=lambda row: -(row["self_s"] + row["children_s"]))
    report = {
        "tests": len(rows),
        "cpu_s": {"self": round(own, 1), "children": round(children, 1)},
        "cpu_s_in_tests": round(sum(r["self_s"] + r["children_s"] for r in rows), 1),
        "wall_s_in_tests": round(sum(r["wall_s"] for r in rows), 1),
        "heaviest": rows,
    }
    out.write_text(json.dumps(report, indent=1) + "\n")
