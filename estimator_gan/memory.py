"""How much memory this process may use: the machine's RAM, or less when a cgroup (a
container, a batch scheduler's job) limits it. Checks that refuse a model or a batch too
large, and the pipeline's choice to keep decoded images in memory, ask here.
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional

DEFAULT_RAM = 8 << 30  # when the platform cannot say
_UNLIMITED = 1 << 60  # cgroup v1 writes "no limit" as a page-rounded 2**63


class Memory(NamedTuple):
    """`bytes` this process may use, and `source`, which says where that figure comes from."""

    bytes: int
    source: str


def physical_bytes() -> int:
    """The machine's RAM."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return DEFAULT_RAM


def _read_limit(path: str) -> Optional[int]:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and 0 < int(text) < _UNLIMITED else None


def cgroup_limit(proc_cgroup: str = "/proc/self/cgroup", root: str = "/sys/fs/cgroup") -> Optional[int]:
    """The smallest memory limit of this process's cgroup and its ancestors (v2 `memory.max`,
    v1 `memory.limit_in_bytes`), or None when none is set. Also reads the limit at the
    hierarchy's mount point, which is the process's own cgroup inside a cgroup namespace."""
    try:
        with open(proc_cgroup) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hierarchy, controllers, path = fields
        if hierarchy == "0" and not controllers:
            base, name = root, "memory.max"
        elif "memory" in controllers.split(","):
            base, name = os.path.join(root, "memory"), "memory.limit_in_bytes"
        else:
            continue
        parts = [p for p in path.strip().split("/") if p]
        for depth in range(len(parts), -1, -1):
            limit = _read_limit(os.path.join(base, *parts[:depth], name))
            if limit is not None:
                limits.append(limit)
    return min(limits) if limits else None


def available() -> Memory:
    """The memory this process may use: the cgroup limit when it is below the RAM."""
    ram = physical_bytes()
    limit = cgroup_limit()
    if limit is not None and limit < ram:
        return Memory(limit, "its cgroup's memory limit")
    return Memory(ram, "this machine's RAM")
