"""CPU seconds and resident memory of a process tree, from Linux /proc (no dependencies).

Shared by the Keras measurement callback (``anchor_callbacks.py``) and by
``tools/vs_rslearn.py``, which polls the benchmarked process trees from outside.
"""

from __future__ import annotations

import os

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_cpu_s(pid: int) -> float:
    """utime + stime of one process in seconds (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, ValueError, IndexError):
        return 0.0


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        pid = stack.pop()
        out.append(pid)
        stack.extend(children.get(pid, []))
    return out


def process_rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return 0.0


def tree_rss_mb(root: int) -> float:
    """Summed VmRSS of ``root`` and its descendants in MB (shared pages counted twice)."""
    return sum(process_rss_mb(p) for p in tree_pids(root))


def tree_cpu_s(root: int) -> dict[int, float]:
    """CPU seconds of every process of the tree, by pid."""
    return {p: process_cpu_s(p) for p in tree_pids(root)}
