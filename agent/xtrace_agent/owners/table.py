"""Who holds which RDMA device: the kubelet's allocations mapped onto sysfs, kept between refreshes.

The collector asks `labels(device)` for every port it exports, every interval: that is a dict
lookup. The table itself is rebuilt (one `List` call to the kubelet and a few sysfs reads per
allocated device) only every `period` seconds, or at once when the devices change: an RDMA
device appears or goes (an exclusive-mode VF coming back to the host when its pod ends), or a
held function's net devices change (the CNI moving a VF's net device back on pod teardown). A
pod that ended is gone from the next refresh, so its labels are gone from the report after it.

Nothing here stops the agent. The kubelet unreachable, the kubelet answering an error, a device
id that maps to nothing, a device held in exclusive RDMA namespace mode: each is logged once
(when it starts, not every period), and the devices concerned export without pod labels.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import NamedTuple

from xtrace_agent import datametrics as dm
from xtrace_agent.owners import devicemap
from xtrace_agent.owners.podresources import FAILURE_KINDS, Allocation, PodResourcesClient, PodResourcesError

log = logging.getLogger("xtrace.owners")
# How stale an owner may get when no device changes: a VF handed from one pod to the next within
# this window keeps the old pod's labels until the refresh. One List call costs the kubelet a read
# of its in-memory allocations; 10 s is two intervals at the default and invisible to it.
REFRESH_SECONDS = 10.0
LABELS = dm.OWNER
# While the kubelet fails, ask it half as often each time, up to this: a stuck kubelet (every call
# waits its whole timeout) then costs the collection loop one timeout per five minutes.
MAX_BACKOFF_SECONDS = 300.0


class Owner(NamedTuple):
    namespace: str
    pod: str
    container: str  # containers of one pod holding the same device: sorted, comma-separated
    resource: str

    def labels(self) -> dict[str, str]:
        return dict(zip(LABELS, self, strict=True))

    @property
    def name(self) -> str:
        return f"{self.namespace}/{self.pod}"


class Holding(NamedTuple):
    owner: Owner
    target: devicemap.Target


def exclusive_message(owner: Owner, target: devicemap.Target) -> str:
    return (f"{target.device_id} ({owner.resource}): device held by pod {owner.name} in exclusive RDMA "
            "namespace mode: not readable from the host")


def _owners(allocations: Iterable[Allocation]) -> tuple[dict[str, Owner], set[str], set[str]]:
    """device id -> its owner; the ids more than one pod claims (no owner for them); and the
    resources that hand out shared slots (numbered per resource, so never compared across them)."""
    found: dict[str, list[Allocation]] = {}
    shared: set[str] = set()
    for a in allocations:
        if not a.namespace or not a.pod:
            continue  # not from a real kubelet; unlabelled rather than labelled wrong
        if devicemap.is_shared_slot(a.device_id):
            shared.add(a.resource)
        else:
            found.setdefault(devicemap.normalise(a.device_id), []).append(a)
    owners, contested = {}, set()
    for device_id, holders in found.items():
        pods = {(a.namespace, a.pod) for a in holders}
        if len(pods) > 1:
            contested.add(device_id)
            continue
        containers = ",".join(sorted({a.container for a in holders}))
        resources = ",".join(sorted({a.resource for a in holders}))
        owners[device_id] = Owner(holders[0].namespace, holders[0].pod, containers, resources)
    return owners, contested, shared


class OwnerTable:
    """Device -> owner, from the kubelet's last answer; see the module docstring for when it asks."""

    def __init__(self, root: str, client: PodResourcesClient, period: float = REFRESH_SECONDS,
                 clock=time.monotonic):
        self.root = root
        self.client = client
        self.period = period
        self.clock = clock
        self.by_rdma: dict[str, Owner] = {}
        self.by_netdev: dict[str, Owner] = {}
        self.holdings: list[Holding] = []
        self.refreshes = 0
        self.failures = 0
        self.failures_by_kind = dict.fromkeys(FAILURE_KINDS, 0)
        self._refreshed_at: float | None = None
        self._signature: tuple = ()
        self._said: set[tuple] = set()  # what was logged once and still holds
        self._failing: str | None = None  # the kind of the current pod-resources failure
        self._error = ""
        self._in_row = 0  # failures in a row (the backoff)

    # -- per interval: cheap -----------------------------------------------------------------
    def update(self, rdma_devices: Iterable[str]) -> bool:
        """Refresh if the period is over or the devices changed; True if it refreshed."""
        now = self.clock()
        if self._refreshed_at is None or now < self._refreshed_at:
            self.refresh()
            return True
        if self._failing:  # backing off: device changes wait too (the kubelet would not answer them)
            due = min(self.period * 2 ** min(self._in_row - 1, 16), MAX_BACKOFF_SECONDS)
            changed = False
        else:
            due = self.period
            changed = self._signature_of(rdma_devices) != self._signature
        if changed or now - self._refreshed_at >= due:
            self.refresh()
            return True
        return False

    def _signature_of(self, rdma_devices: Iterable[str]) -> tuple:
        held = tuple(devicemap.held_state(self.root, h.target) for h in self.holdings)
        return tuple(rdma_devices), held

    def labels(self, rdma_device: str) -> dict[str, str] | None:
        owner = self.by_rdma.get(rdma_device)
        return owner.labels() if owner else None

    def netdev_labels(self) -> dict[str, dict[str, str]]:
        """netdev -> owner labels for the net devices of held functions the host sees."""
        return {name: owner.labels() for name, owner in self.by_netdev.items()}

    # -- per period ----------------------------------------------------------------------------
    def refresh(self) -> None:
        self.refreshes += 1
        self._refreshed_at = self.clock()
        try:
            allocations = self.client.list()
        except PodResourcesError as e:
            self.failures += 1
            self.failures_by_kind[e.kind] = self.failures_by_kind.get(e.kind, 0) + 1
            self._in_row += 1
            self._error = str(e)
            if self._failing != e.kind:
                log.warning("pod attribution: %s; RDMA series carry no pod labels until it answers", e)
                self._failing = e.kind
            # no owner is known: no labels; what was said about devices stays said
            self.holdings, self.by_rdma, self.by_netdev = [], {}, {}
            self._signature = self._signature_of(self._devices())
            return
        if self._failing:
            log.info("pod attribution: the kubelet answers again (%s)", self.client.socket_path)
            self._failing = None
        self._in_row = 0
        self._install(allocations)

    def _install(self, allocations: list[Allocation]) -> None:
        owners, contested, shared = _owners(allocations)
        holdings: list[Holding] = []
        by_rdma: dict[str, Owner] = {}
        by_netdev: dict[str, Owner] = {}
        said = {("contested", d) for d in contested} | {("shared", r) for r in shared}
        for device_id, owner in owners.items():
            target = devicemap.resolve(self.root, device_id)
            if target.kind == devicemap.UNKNOWN:
                said.add(("unknown", owner.resource, device_id))
                continue
            holdings.append(Holding(owner, target))
            if target.exclusive:
                said.add(("exclusive", device_id, owner))
            elif target.problem:
                said.add(("problem", device_id, target.problem))
            for name in target.rdma:
                by_rdma[name] = owner
            for name in target.netdevs:
                by_netdev[name] = owner
        self._say(said, owners, holdings)
        self.holdings = sorted(holdings, key=lambda h: h.target.device_id)
        self.by_rdma, self.by_netdev = by_rdma, by_netdev
        self._signature = self._signature_of(self._devices())

    def _devices(self) -> list[str]:
        from xtrace_agent.rdma import sysfs

        return sysfs.devices(self.root)

    def _say(self, said: set[tuple], owners: dict[str, Owner], holdings: list[Holding]) -> None:
        """Log what is new since the last refresh, once; forget what no longer holds (it may recur)."""
        targets = {h.target.device_id: h for h in holdings}
        for fact in sorted(said - self._said, key=repr):
            kind = fact[0]
            if kind == "contested":
                log.warning("pod attribution: device %s is allocated to more than one pod: no pod labels",
                            fact[1])
            elif kind == "shared":
                log.info("pod attribution: %s hands out slots of a shared RDMA device (RDMA shared device "
                         "plugin): a shared device's series carry no pod labels", fact[1])
            elif kind == "unknown":
                log.warning("pod attribution: %s device %r maps to nothing XTrace reads: no pod labels",
                            fact[1], fact[2])
            elif kind == "exclusive":
                h = targets[fact[1]]
                log.warning("pod attribution: %s", exclusive_message(h.owner, h.target))
            elif kind == "problem":
                owner = owners[fact[1]]
                log.warning("pod attribution: %s held by pod %s (%s) maps to nothing: %s",
                            fact[1], owner.name, owner.resource, fact[2])
        self._said = said

    # -- for `xtrace-agent -l` -----------------------------------------------------------------
    def listing(self) -> list[str]:
        if self._failing:
            return [f"(no owners: {self._error})"]
        lines = []
        for h in self.holdings:
            o, t = h.owner, h.target
            head = f"{t.device_id:<16} {','.join(t.rdma) or '-':<12}"
            if t.exclusive:
                lines.append(f"{head} {exclusive_message(o, t)}")
            elif t.problem:
                lines.append(f"{head} held by pod {o.name} ({o.resource}): maps to nothing: {t.problem}")
            else:
                nets = ",".join(t.netdevs) or "-"
                lines.append(f"{head} pod={o.name} container={o.container} resource={o.resource} "
                             f"netdev={nets}" + (f" pf={t.physfn}" if t.physfn else ""))
        return lines or ["(no RDMA device is allocated to a pod)"]


def from_config(cfg) -> OwnerTable | None:
    """The owner table an agent config asks for (`rdma.podAttribution`), or None."""
    rdma = cfg.rdma
    if not rdma.pod_attribution:
        return None
    return OwnerTable(cfg.sysfs, PodResourcesClient(rdma.pod_resources_socket))
