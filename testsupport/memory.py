"""Resident memory of a process and of a process tree (gunicorn's master and workers).

Read from ``/proc`` (Linux), so no extra package is needed. VmHWM is the peak since the
process started (or since ``reset_peaks``), VmRSS what it holds now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def proc_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process, in kB (0 if it is gone)."""
    values = {"VmHWM": 0, "VmRSS": 0}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in values:
                values[key] = int(rest.split()[0])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return values


def rss_mb(pid: int) -> float:
    """Resident memory of one process now, in MB."""
    return proc_status(pid)["VmRSS"] / 1024


def children_by_parent() -> dict[int, list[int]]:
    """Every running process id, grouped by its parent's id (from ``/proc/*/stat``)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children = children_by_parent()
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def memory_mb(root: int) -> dict[str, Any]:
    """Sum of VmHWM (peak) and VmRSS (now) over ``root``'s process tree, in MB."""
    per = {pid: proc_status(pid) for pid in process_tree(root)}
    return {
        "processes": len(per),
        "peak_mb": round(sum(s["VmHWM"] for s in per.values()) / 1024, 1),
        "rss_mb": round(sum(s["VmRSS"] for s in per.values()) / 1024, 1),
        "per_process_peak_mb": [round(s["VmHWM"] / 1024, 1) for s in per.values()],
    }


def reset_peaks(root: int) -> None:
    """Start VmHWM again from the current RSS (Linux: ``echo 5 > /proc/PID/clear_refs``)."""
    for pid in process_tree(root):
        try:
            Path(f"/proc/{pid}/clear_refs").write_text("5")
        except OSError:
            pass
