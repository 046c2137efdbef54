"""Conflicts between monitors: two agents that would fight over the same node resource.

Two monitors conflict when their node selectors could select the same node and either both
attach XDP to an interface both could name (XDP allows one program per interface: the second
would fail, or replace the first), or both listen on the same host port (host network). The
older monitor (by creationTimestamp, then name) keeps running; the newer one is refused with a
message naming the older one, so `kubectl describe` says what to change.
"""

from __future__ import annotations

import fnmatch
import re
from typing import NamedTuple

from xtrace_operator.model import Monitor


class Claim(NamedTuple):
    """What a monitor takes on each node it selects (kept in the operator's in-memory index)."""

    namespace: str
    name: str
    created: str
    mode: str
    interfaces: tuple[str, ...]
    node_selector: tuple[tuple[str, str], ...]
    port: int

    @classmethod
    def of(cls, monitor: Monitor) -> Claim:
        return cls(monitor.namespace, monitor.name, monitor.created, monitor.mode, monitor.interfaces,
                   tuple(sorted(monitor.node_selector.items())), monitor.port)

    @property
    def key(self) -> tuple[str, str]:
        return self.namespace, self.name

    @property
    def order(self) -> tuple[str, str, str]:
        return self.created or "~", self.namespace, self.name  # "~" sorts after any timestamp


def selectors_overlap(a: dict[str, str], b: dict[str, str]) -> bool:
    """Equality selectors exclude each other only when they require different values of one key."""
    return all(b[k] == v for k, v in a.items() if k in b)


def find(mine: Claim, others: list[Claim]) -> str | None:
    """The Conflict message for `mine`, or None when no older monitor claims what it needs."""
    for other in sorted(others, key=lambda c: c.order):
        if other.key == mine.key or other.order >= mine.order:
            continue
        if not selectors_overlap(dict(mine.node_selector), dict(other.node_selector)):
            continue
        who = f"XTraceMonitor {other.namespace}/{other.name}"
        if mine.mode == other.mode == "xdp":
            pairs = sorted({(b, a) for a in mine.interfaces for b in other.interfaces if interface_overlap(a, b)})
            if pairs:
                shared = ", ".join(theirs if theirs == ours else f"{theirs} (overlaps {ours})"
                                   for theirs, ours in pairs)
                return (f"{who} already attaches XDP to {shared} on the same nodes; "
                        f"change interfaces or nodeSelector, or delete one of them")
        if mine.port == other.port:
            return (f"{who} already uses host port {mine.port} on the same nodes; "
                    f"set a different spec.port or disjoint nodeSelectors")
    return None


def interface_overlap(a: str, b: str) -> bool:
    """Whether two interface names or globs could name the same interface (conservative for two globs)."""
    wild = re.compile(r"[*?\[]")
    if not wild.search(a) or not wild.search(b):
        return fnmatch.fnmatchcase(a, b) or fnmatch.fnmatchcase(b, a)
    # Two globs: compare the literal text before the first and after the last wildcard.
    pa, pb = wild.split(a)[0], wild.split(b)[0]
    sa, sb = re.split(r".*[*?\]]", a)[-1], re.split(r".*[*?\]]", b)[-1]
    return (pa.startswith(pb) or pb.startswith(pa)) and (sa.endswith(sb) or sb.endswith(sa))
