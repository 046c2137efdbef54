"""`ethtool -S` text dumps (what `ethtool -S eth0 > eth0.txt` writes), parsed into a statistics table.

Real dumps vary, and all of these are read:
- the `NIC statistics:` header, or none (dumps pasted from a ticket), or other group headers
  (`Standard stats for eth0:`);
- names indented by 0, 4, 5 or 6 spaces or a tab, trailing blanks, CRLF line ends, blank lines;
- bnxt's per-ring lines `[3]: rx_discards: 12` (the name is `[3]: rx_discards`, as in the kernel's
  string set), ice's dotted names `tx_priority_3_xoff.nic`;
- lines that are not statistics (a shell prompt, `no stats available`, a value that is not an
  unsigned number): skipped and counted, never guessed at;
- a name given twice keeps its first value (the kernel's index order).

Zero lines that a poster left out are simply absent: absent is not zero, and no series is made.
"""

from __future__ import annotations

from typing import NamedTuple


class Table(NamedTuple):
    """One read of a netdev's driver statistics: names (the string set) and their values, in order."""

    names: tuple[str, ...]
    values: list[int]
    skipped: int = 0  # lines that were not `name: value`


def parse(text: str) -> Table:
    names: list[str] = []
    values: list[int] = []
    seen: set[str] = set()
    skipped = 0
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        name, sep, value = line.rpartition(":")
        value = value.strip()
        name = name.strip()
        if not sep or not name:
            skipped += 1
            continue
        if not value:
            continue  # a group header: `NIC statistics:`, `Standard stats for eth0:`
        if not value.isdigit():  # the kernel's values are u64, printed %llu
            skipped += 1
            continue
        if name in seen:
            continue
        seen.add(name)
        names.append(name)
        values.append(int(value))
    return Table(tuple(names), values, skipped)


def read(path: str) -> Table | None:
    """The table in one dump file; None when there is no such file (or it cannot be read)."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return parse(f.read())
    except OSError:
        return None
