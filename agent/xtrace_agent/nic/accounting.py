"""The NIC accounting: raw NIC readings (nic.source.NicReading) turned into the named series and the raw
table's, with monotonic totals.

The table's names are mapped once per string set (nic.names.plan). Every counter goes through the RDMA
counters' CounterTracker, so what is pushed never goes backwards across a driver reload (a drop is a
reset) and mlx5's 32-bit firmware counters are wrap-corrected; a level (PCIe stalled share) is pushed
as read, and so is the raw table.

Pod attribution (docs/pod-attribution.md): a netdev of a device a pod holds (the netdevs of its RDMA
device, or a held function's own net devices) carries the owner's labels on every series, and its
counters count from that owner's first report, exactly as the device's RDMA series do
(ports.PortAccounting): a new owner starts new series at 0, a pod's end returns the netdev to its
unlabelled series with the hardware's total.
"""

from __future__ import annotations

from xtrace_agent.nic import dump, names
from xtrace_agent.nic.source import NicReading
from xtrace_agent.rdma.counters import CounterTracker
from xtrace_agent.samples import Sample


class NicAccounting:
    def __init__(self, raw: names.RawSelection = names.NO_RAW):
        self.raw = raw
        self.tracker = CounterTracker()
        self._plans: dict[tuple[str, ...], names.Plan] = {}
        # pod attribution: netdev -> its owner's label values; a held netdev's counts since its owner's first report
        self._owner_of: dict[str, tuple] = {}
        self._held: set[str] = set()
        self._since: dict[tuple[str, str], int] = {}

    def _plan(self, table: dump.Table) -> names.Plan:
        plan = self._plans.get(table.names)
        if plan is None:
            if len(self._plans) > 64:  # string sets change rarely; never let renames grow this
                self._plans.clear()
            plan = self._plans[table.names] = names.plan(table.names, self.raw)
        return plan

    def _counter(self, netdev: str, stat: str, raw: int, width=names.W64) -> int | None:
        value = self.tracker.update((netdev, stat), raw, width).value
        if value is None or netdev not in self._held:
            return value
        return value - self._since.setdefault((netdev, stat), value)

    def _owner(self, netdev: str, labels: dict[str, str] | None) -> dict[str, str]:
        """The netdev's owner labels ({} when no pod holds it); a new owner restarts its counts."""
        key = tuple(labels.values()) if labels else ()
        if self._owner_of.get(netdev, ()) != key:
            self._owner_of[netdev] = key
            self._since = {k: v for k, v in self._since.items() if k[0] != netdev}
        if key:
            self._held.add(netdev)
        else:
            self._held.discard(netdev)
        return labels or {}

    def samples(self, readings: list[NicReading], out: list[Sample],
                owners: dict[str, dict[str, str]] | None = None,
                netdev_owners: dict[str, dict[str, str]] | None = None) -> None:
        """`owners`: RDMA device -> owner labels; `netdev_owners`: netdev -> owner labels (a held
        function's net devices). A netdev takes its RDMA device's owner, else its own."""
        owners, netdev_owners = owners or {}, netdev_owners or {}
        for r in readings:
            netdev, ts = r.target.netdev, r.timestamp
            owner = self._owner(netdev, owners.get(r.target.device) or netdev_owners.get(netdev))
            base = {**r.target.labels(), **owner}
            if r.table is not None:
                plan, values = self._plan(r.table), r.table.values
                for entry in plan.named:
                    raw = values[entry.index]
                    value = raw if entry.gauge else self._counter(netdev, entry.stat, raw, entry.width)
                    if value is not None:
                        out.append(Sample(entry.metric, {**base, **dict(entry.labels)}, value * entry.scale, ts))
                for index, stat in plan.raw:
                    out.append(Sample(names.RAW, {**base, "stat": stat}, values[index], ts))
            if r.carrier_changes is not None:
                value = self._counter(netdev, "carrier_changes", r.carrier_changes)
                out.append(Sample(names.CARRIER_CHANGES, dict(base), value, ts))
            for direction, raw in sorted((r.pause or {}).items()):
                value = self._counter(netdev, f"standard_pause_{direction}", raw)
                out.append(Sample(names.STANDARD_PAUSE, {**base, "direction": direction}, value, ts))


class NicStats:
    """Source and accounting in one (captured bundles, tests, the benchmark): collect() reads the
    targets and appends their samples to a Report."""

    def __init__(self, root: str = "/sys", ethtool_dir: str | None = None,
                 raw: names.RawSelection = names.NO_RAW, clock=None):
        from xtrace_agent.nic.source import NicSource
        self.source = NicSource(root, ethtool_dir, **({"clock": clock} if clock else {}))
        self.accounting = NicAccounting(raw)

    def collect(self, targets, report) -> None:
        self.accounting.samples(self.source.read(targets), report.samples)

    def close(self) -> None:
        self.source.close()
