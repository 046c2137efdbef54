"""The send side: our TC program on the egress hook of the interfaces we watch.

tcx (Linux 6.6+) is used where the kernel has it: a BPF link appended after the programs already
on the hook, so another tool's programs keep their place and run first; the link is ours alone
and closes with our process, so nothing is left behind even after a crash. Without tcx, a
direct-action cls_bpf filter on the clsact qdisc, at our own priority and handle (XT_TC_PRIORITY,
XT_TC_HANDLE), after the filters tc numbers by default; that filter outlives the process, so a
leftover of a dead agent is found at that place and replaced, as for XDP.

Either way the program only observes (TC_ACT_UNSPEC: the next program or filter runs).
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable

from xtrace_agent import environ
from xtrace_agent.xdp import libbpf
from xtrace_agent.xdp.attach import PROG_PREFIX, AgentConflict, AttachError, boottime_ns, detach_all, owner_of

log = logging.getLogger("xtrace.xdp")

HOOK_ENV = environ.EGRESS_HOOK.name  # auto (default) | tcx | tc: force a hook (tests, a kernel that lies)
# Our filter's place on clsact egress when there is no tcx. tc numbers filters added without a
# priority from 49152 downwards (earlier = smaller = runs first), so ours runs after them.
XT_TC_PRIORITY = 0xC0DE
XT_TC_HANDLE = 0x7874  # "xt"
NO_HOOK = ("egress needs tcx (Linux 6.6+) or the clsact qdisc (sch_clsact), and this kernel has neither: "
           "drop egress from xdp.directions")


class NoEgressHook(AttachError):
    """The kernel can attach no TC program on egress: neither tcx nor clsact."""


def tcx_available() -> bool:
    """Whether the kernel has tcx (asked on loopback, which every namespace has)."""
    try:
        libbpf.tcx_query(1)
    except OSError as e:
        if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
            return False
        raise
    return True


class EgressAttachments:
    """Our TC program on egress, by ifindex."""

    def __init__(self, prog_fds: dict[str, int], prog_ids: dict[str, int], eth: str, ipoib: str,
                 on_attach: Callable[[int], None] = lambda ifindex: None, hook: str | None = None):
        self._fds = prog_fds
        self._ids = prog_ids
        self._names = (eth, ipoib)
        self._on_attach = on_attach
        self.hook = hook or environ.EGRESS_HOOK.get()
        if self.hook not in ("auto", "tcx", "tc"):
            raise AttachError(f"{HOOK_ENV}={self.hook!r}: expected auto, tcx or tc")
        self._attached: dict[int, tuple[str, str, int]] = {}  # ifindex -> (hook, ifname, prog id; tcx: link fd)
        self._links: dict[int, int] = {}  # ifindex -> tcx link fd

    def resolve(self) -> str:
        """The hook this kernel gives us ('tcx' or 'tc'); NoEgressHook when it has neither."""
        if self.hook == "auto":
            try:
                self.hook = "tcx" if tcx_available() else "tc"
            except OSError as e:
                raise NoEgressHook(f"cannot ask the kernel for tcx: {e.strerror}") from None
        return self.hook

    def attach(self, ifname: str, ifindex: int, infiniband: bool) -> str:
        """Attach on the interface's egress; returns the hook used ('tcx' or 'tc')."""
        name = self._names[1 if infiniband else 0]
        fd, our_id = self._fds[name], self._ids[name]
        hook = self.resolve()
        self._on_attach(ifindex)  # the untracked entries first: the first packet must find them
        if hook == "tcx":
            self._check_tcx(ifname, ifindex)
            try:
                link = libbpf.tcx_attach(fd, ifindex)
            except OSError as e:
                raise self._error(ifname, ifindex, e) from None
            self._links[ifindex] = link
        else:
            self._attach_tc(ifname, ifindex, fd)
        self._attached[ifindex] = (hook, ifname, our_id)
        return hook

    def _check_tcx(self, ifname: str, ifindex: int) -> None:
        """Another live XTrace agent's program on the hook means another agent counts here."""
        try:
            ids = libbpf.tcx_query(ifindex)
        except OSError as e:
            raise self._error(ifname, ifindex, e) from None
        for prog_id in ids:
            if prog_id in self._ids.values() or not libbpf.prog_name_by_id(prog_id).startswith(PROG_PREFIX):
                continue
            owner = owner_of(prog_id)
            if owner is not None and owner.alive(boottime_ns()):
                raise AgentConflict(
                    f"{ifname} egress is watched by another XTrace agent ({owner.who()}, program {prog_id}): "
                    "one agent per interface; stop that agent or choose another interface")

    def _attach_tc(self, ifname: str, ifindex: int, fd: int) -> None:
        try:
            cur = libbpf.tc_query(ifindex, XT_TC_HANDLE, XT_TC_PRIORITY)
        except OSError as e:
            raise self._error(ifname, ifindex, e) from None
        if cur:
            cur_name = libbpf.prog_name_by_id(cur)
            if not cur_name.startswith(PROG_PREFIX):
                raise AttachError(f"{ifname}: the egress filter at priority {XT_TC_PRIORITY} is another tool's "
                                  f"(program {cur}, {cur_name or '?'}); XTrace never replaces it")
            owner = owner_of(cur)
            if cur not in self._ids.values() and owner is not None and owner.alive(boottime_ns()):
                raise AgentConflict(f"{ifname} egress is watched by another XTrace agent ({owner.who()}, "
                                    f"program {cur}): one agent per interface")
        try:
            libbpf.tc_attach(fd, ifindex, XT_TC_HANDLE, XT_TC_PRIORITY, replace=bool(cur))
        except OSError as e:
            raise self._error(ifname, ifindex, e) from None
        if cur and cur not in self._ids.values():
            log.warning("%s: replaced egress program %d left by a previous XTrace agent that is gone", ifname, cur)

    def _error(self, ifname: str, ifindex: int, e: OSError) -> AttachError:
        if e.errno == errno.ENODEV:
            return AttachError(f"{ifname}: interface not found (ifindex {ifindex})")
        if e.errno in (errno.EPERM, errno.EACCES):
            return AttachError(f"{ifname}: no permission to attach on egress (needs CAP_NET_ADMIN and CAP_BPF)")
        if self.hook == "tc" and e.errno in (errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
            return NoEgressHook(NO_HOOK)
        return AttachError(f"{ifname}: cannot attach on egress ({self.hook}): {e.strerror}")

    def _ours(self, ifindex: int, hook: str, prog_id: int) -> bool:
        """Whether our program is still on the interface's egress (checked in the kernel)."""
        try:
            if hook == "tcx":
                return prog_id in libbpf.tcx_query(ifindex)
            return libbpf.tc_query(ifindex, XT_TC_HANDLE, XT_TC_PRIORITY) == prog_id
        except OSError:
            return False

    def detach(self, ifindex: int) -> None:
        """Remove exactly our program; never raises for a link that is gone."""
        entry = self._attached.pop(ifindex, None)
        link = self._links.pop(ifindex, None)
        if link is not None:
            os.close(link)  # the link was ours alone: closing it detaches our program, nothing else
        if entry is None or entry[0] != "tc" or not self._ours(ifindex, "tc", entry[2]):
            return
        try:
            libbpf.tc_detach(ifindex, XT_TC_HANDLE, XT_TC_PRIORITY)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
                log.warning("%s: cannot remove our egress filter: %s", entry[1], e.strerror)

    def attached(self) -> dict[int, str]:
        """ifindex -> hook, where our program is still on egress."""
        for ifindex, (hook, _, prog_id) in list(self._attached.items()):
            if not self._ours(ifindex, hook, prog_id):
                self.detach(ifindex)
        return {ifindex: entry[0] for ifindex, entry in self._attached.items()}

    def close(self) -> None:
        detach_all(self.detach, self._attached, "egress")
