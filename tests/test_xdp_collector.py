"""The XDP source and the accounting stage after it, on a fake kernel program (no root needed).

The fake stands in for the kernel only; the real program is exercised in tests/kernel/.
"""

import socket

import pytest

from xtrace_agent import datametrics as dm
from xtrace_agent import selfmetrics as sm
from xtrace_agent.collectors.xdp import XdpCollector
from xtrace_agent.config import AgentConfig, XdpConfig
from xtrace_agent.errors import UsageError
from xtrace_agent.flows import FlowAccounting
from xtrace_agent.health import Health
from xtrace_agent.readiness import Kind
from xtrace_agent.sinks.text import FlowText, flow_line
from xtrace_agent.stages import Drained, FlowKey, Program

LO = socket.if_nametoindex("lo")


class FakeEgress:
    def resolve(self):
        return "tcx"


class FakeProgram(Program):
    """stages.Program without a kernel."""

    headers = "fake (no kernel headers)"

    def __init__(self):
        self.pending: list[Drained] = []
        self._attached: dict[str, dict[int, str]] = {"ingress": {}, "egress": {}}
        self.egress = FakeEgress()

    def claim(self, interval):
        pass

    def attach(self, ifname, ifindex, infiniband, mode, direction="ingress"):
        mode = "generic" if direction == "ingress" else "tcx"
        self._attached[direction][ifindex] = mode
        return mode

    def attached(self, direction="ingress"):
        return dict(self._attached[direction])

    def detach(self, ifindex, direction="ingress"):
        self._attached[direction].pop(ifindex, None)

    def drain(self):
        return self.pending.pop(0) if self.pending else Drained({}, {}, {})

    def unattributed(self):
        return (0, 0)

    def close(self):
        for links in self._attached.values():
            links.clear()


def drained(flows, untracked=None, sampled=0, sampling=1):
    """A drain as the kernel reports it: interface totals are every entry's raw counts."""
    untracked = untracked or {}
    totals: dict[int, list[int]] = {}
    for fk, (p, b) in flows.items():
        cur = totals.setdefault(fk.ifindex, [0, 0])
        cur[0] += p // sampling
        cur[1] += b // sampling
    for (ifindex, _), (p, b) in untracked.items():
        cur = totals.setdefault(ifindex, [0, 0])
        cur[0] += p
        cur[1] += b
    return Drained(flows, untracked, {k: tuple(v) for k, v in totals.items()}, sampled)


def flow(sport, proto=17, ttype="ethernet", opcode=0, qp=0, src="10.0.0.1"):
    return FlowKey(LO, src, "10.0.0.2", sport, 9999, proto, ttype, opcode, qp)


def pipeline(**xdp):
    fake = FakeProgram()
    cfg = AgentConfig(interfaces=("lo",), xdp=XdpConfig(**xdp))
    health = Health()
    source = XdpCollector(cfg, health, program_loader=lambda _: fake)
    source.start()
    accounting = FlowAccounting(cfg, health)
    return source, accounting, fake, health


def values(report):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in report.samples}


def test_cumulative_samples_and_old_text_format():
    source, accounting, fake, health = pipeline()
    fake.pending = [drained({flow(1): (2, 200)}, {(LO, "malformed"): (1, 60)}),
                    drained({flow(1): (1, 100), flow(4791, ttype="roce", opcode=4, qp=17): (1, 80)})]
    accounting.report(source.collect(1.0), 1.0)
    report = accounting.report(source.collect(2.0), 2.0)
    text = FlowText(with_interface=False).lines(report)
    assert text[:2] == ["10.0.0.1:1 -> 10.0.0.2:9999 proto=17 packets=3 bytes=300",
                        "10.0.0.1:4791 -> 10.0.0.2:9999 proto=17 packets=1 bytes=80 traffic_type=roce rdma_opcode=4 "
                        "dest_qp=17"]
    assert text[2] == "other:0 -> other:0 proto=0 packets=1 bytes=60 traffic_type=other"  # the malformed frame
    v = values(report)
    assert v[("xtrace_interface_packets_total", (("interface", "lo"),))] == 5
    assert v[("xtrace_xdp_untracked_bytes_total", (("interface", "lo"), ("reason", "malformed")))] == 60
    roce = [s for s in report.samples if s.labels.get("traffic_type") == "roce"]
    assert {s.labels["rdma_opcode"] for s in roce} == {"4"} and {s.labels["dest_qp"] for s in roce} == {"17"}
    assert health.get(sm.XDP_MALFORMED) == 1
    source.close()


def conservation(report) -> dict[str, tuple[int, int]]:
    """Per interface: (flows + other) - interface total, in packets and bytes."""
    out: dict[str, list[int]] = {}
    for s in report.samples:
        i = 0 if s.name.endswith("packets_total") else 1
        if s.name in ("xtrace_network_packets_total", "xtrace_network_bytes_total"):
            out.setdefault(s.labels["interface"], [0, 0])[i] += s.value
        elif s.name in ("xtrace_interface_packets_total", "xtrace_interface_bytes_total"):
            out.setdefault(s.labels["interface"], [0, 0])[i] -= s.value
    return {k: tuple(v) for k, v in out.items()}


def test_budget_overflow_and_untracked_packets_are_in_other_and_conserved():
    source, accounting, fake, health = pipeline(max_flows=1)
    fake.pending = [drained({flow(1): (5, 500), flow(2): (1, 10)}, {(LO, "table_full"): (2, 120),
                                                                    (LO, "non_ip"): (1, 60)})]
    report = accounting.report(source.collect(1.0), 1.0)
    others = [s for s in report.samples if s.labels.get("src_ip") == "other" and s.name.endswith("packets_total")]
    assert [s.value for s in others] == [1 + 2 + 1]
    assert health.get(sm.FLOWS_FOLDED) == 1
    assert health.get(sm.XDP_TABLE_FULL) == 2
    assert conservation(report) == {"lo": (0, 0)}


def test_sampled_counts_are_exported_and_table_full_is_scaled():
    source, accounting, fake, health = pipeline(sampling=10)
    fake.pending = [drained({flow(1): (30, 3000)}, {(LO, "unsampled"): (25, 2500), (LO, "table_full"): (1, 100)},
                            sampled=3, sampling=10)]
    report = accounting.report(source.collect(1.0), 1.0)
    v = values(report)
    assert v[("xtrace_interface_packets_total", (("interface", "lo"),))] == 3 + 25 + 1
    assert health.get(sm.XDP_SAMPLED) == 3
    other = [s.value for s in report.samples if s.name == "xtrace_network_packets_total"
             and s.labels["src_ip"] == "other"]
    assert other == [10]  # the one sampled packet of a new flow stands for 10


def test_flow_gauges_are_the_last_interval_and_can_be_turned_off():
    source, accounting, fake, _ = pipeline()
    fake.pending = [drained({flow(1): (2, 200)}), drained({flow(1): (3, 300)}), drained({})]
    names = []
    for t in (1.0, 2.0, 3.0):
        report = accounting.report(source.collect(t), t)
        names.append({(s.name, s.labels.get("src_port")): s.value for s in report.samples
                      if s.name.startswith("xtrace_network_flow_")})
    assert names[0] == {("xtrace_network_flow_packets", "1"): 2, ("xtrace_network_flow_bytes", "1"): 200}
    assert names[1] == {("xtrace_network_flow_packets", "1"): 3, ("xtrace_network_flow_bytes", "1"): 300}
    assert names[2] == {}  # moved nothing in that interval: no gauge (as the old tool)
    source, accounting, fake, _ = pipeline(flow_gauges=False)
    fake.pending = [drained({flow(1): (2, 200)})]
    report = accounting.report(source.collect(1.0), 1.0)
    assert not [s for s in report.samples if s.name.startswith("xtrace_network_flow_")]


def test_every_self_metric_exists_at_zero_in_the_first_report():
    source, accounting, fake, health = pipeline()
    report = accounting.report(source.collect(1.0), 1.0)
    v = values(report)
    first = health.samples(1.0) + report.samples
    have = {s.name for s in first}
    # the registries say which metrics the xdp source records, and which exist before anything happened
    expected = [m for registry in (sm.BY_NAME, dm.BY_NAME) for m in registry.values()
                if m.source == "xdp" and m.at_start]
    assert len(expected) >= 20  # a filter gone wrong would make this test vacuous
    assert sorted(m.name for m in expected if m.name not in have) == []
    counters = {m.name for m in expected if m.kind == "counter"}
    assert [s for s in first if s.name in counters and s.value != 0] == []  # nothing happened yet
    assert v[("xtrace_xdp_untracked_packets_total", (("interface", "lo"), ("reason", "table_full")))] == 0
    assert v[("xtrace_network_packets_total", (("dst_ip", "other"), ("dst_port", "0"), ("interface", "lo"),
                                               ("protocol", "0"), ("src_ip", "other"), ("src_port", "0"),
                                               ("traffic_type", "other")))] == 0


def test_ipv6_endpoints_are_bracketed():
    labels = {"interface": "eth0", "src_ip": "fd00::1", "dst_ip": "fd00::2", "src_port": "5", "dst_port": "6",
              "protocol": "17", "traffic_type": "ethernet"}
    assert flow_line(labels, 1, 2, with_interface=True) == \
        "[fd00::1]:5 -> [fd00::2]:6 proto=17 packets=1 bytes=2 interface=eth0"


def test_a_glob_that_matches_nothing_is_reported_not_ready():
    fake = FakeProgram()
    cfg = AgentConfig(interfaces=("lo", "xtnomatch*"), from_file=True)
    c = XdpCollector(cfg, Health(), program_loader=lambda _: fake)
    c.start()
    assert c.health.reasons() == {"xdp:xtnomatch*": "no interface matches"}
    c.close()
    strict = XdpCollector(AgentConfig(interfaces=("xtnomatch*",)), Health(), program_loader=lambda _: fake)
    with pytest.raises(UsageError, match="no interface matches 'xtnomatch\\*'"):
        strict.start()


def test_links_are_read_under_the_injected_sysfs_root(tmp_path):
    from xtrace_agent import netdev

    lo = tmp_path / "class" / "net" / "lo"
    lo.mkdir(parents=True)
    (lo / "type").write_text("32\n")
    (lo / "operstate").write_text("down\n")
    (lo / "mtu").write_text("2044\n")
    li = netdev.link("lo", str(tmp_path))
    assert (li.ifindex, li.link_type, li.state, li.mtu) == (LO, "infiniband", "down", 2044)
    assert netdev.link("lo").link_type == "loopback"


def test_a_live_owner_is_told_from_a_dead_one(monkeypatch):
    """The owner record in the program's `state` map (the kernel side is in tests/kernel/test_conservation.py)."""
    import os

    from xtrace_agent.xdp import attach

    now = attach.boottime_ns()
    me = dict(pid=os.getpid(), pidns=attach.pidns(), start_time=attach.start_time(), heartbeat_ns=now,
              interval_ns=5 * 10**9)
    assert attach.Owner(**me).alive(now)
    assert not attach.Owner(**{**me, "start_time": me["start_time"] + 1}).alive(now)  # pid reused since
    assert not attach.Owner(**{**me, "pid": 0}).alive(now)  # loaded, never claimed
    # an owner in another pid namespace (another pod): its heartbeat decides
    other = {**me, "pidns": me["pidns"] + 1, "pid": 1}
    assert attach.Owner(**other).alive(now + 20 * 10**9)
    assert not attach.Owner(**other).alive(now + 26 * 10**9)  # 3 intervals + 10 s without a report
    # ... unless it is this pod's previous container: a restart must not wait for the heartbeat
    monkeypatch.setenv("POD_NAME", "xtrace-agent-x1")
    monkeypatch.setenv("POD_NAMESPACE", "obs")
    assert not attach.Owner(**other, pod=attach.pod_id()).alive(now)
    assert attach.Owner(**other, pod=attach.pod_id({"POD_NAME": "another", "POD_NAMESPACE": "obs"})).alive(now)


def test_traffic_while_another_program_replaced_ours_is_exported_as_unobserved(tmp_path):
    """The driver's rx counters (a sysfs tree standing in for /sys) count what our program missed."""
    from xtrace_agent.xdp.attach import AttachError

    lo = tmp_path / "class" / "net" / "lo"
    (lo / "statistics").mkdir(parents=True)
    for attr, value in (("type", 772), ("operstate", "unknown"), ("mtu", 65536)):
        (lo / attr).write_text(f"{value}\n")

    def driver_counted(packets):
        (lo / "statistics" / "rx_packets").write_text(f"{packets}\n")
        (lo / "statistics" / "rx_bytes").write_text(f"{packets * 100}\n")

    class Replaced(FakeProgram):
        refuse = False

        def attach(self, ifname, ifindex, infiniband, mode, direction="ingress"):
            if self.refuse:
                raise AttachError(f"{ifname} already has another tool's XDP program (id 7, name other)")
            return super().attach(ifname, ifindex, infiniband, mode, direction)

    fake = Replaced()
    cfg = AgentConfig(interfaces=("lo",), sysfs=str(tmp_path), from_file=True)
    health = Health()
    source = XdpCollector(cfg, health, program_loader=lambda _: fake)
    source.start()
    accounting = FlowAccounting(cfg, health)
    driver_counted(100)
    accounting.report(source.collect(1.0), 1.0)
    fake._attached["ingress"].clear()  # another tool took the interface
    fake.refuse = True
    accounting.report(source.collect(2.0), 2.0)  # noticed: from now on the driver's counts are looked at
    assert health.get(sm.XDP_ATTACHED, {"interface": "lo", "mode": "generic"}) == 0
    driver_counted(150)
    accounting.report(source.collect(3.0), 3.0)
    driver_counted(170)
    fake.refuse = False  # ours is back
    report = accounting.report(source.collect(4.0), 4.0)
    v = values(report)
    assert v[("xtrace_xdp_unobserved_packets_total", (("interface", "lo"),))] == 70
    assert v[("xtrace_xdp_unobserved_bytes_total", (("interface", "lo"),))] == 7000
    driver_counted(500)
    report = accounting.report(source.collect(5.0), 5.0)
    assert values(report)[("xtrace_xdp_unobserved_packets_total", (("interface", "lo"),))] == 70


def test_both_directions_are_separate_groups_each_conserved_and_labelled():
    """With egress on, every flow and interface series carries `direction`, and flows + `other`
    equal the interface total per direction; the text lines say the direction."""
    from xtrace_agent.xdp.layout import EGRESS

    source, accounting, fake, health = pipeline(directions=("ingress", "egress"))
    out = FlowKey(LO | EGRESS, "10.0.0.2", "10.0.0.1", 9999, 1, 17, "ethernet", 0, 0)
    fake.pending = [drained({flow(1): (2, 200), out: (3, 330)}, {(LO | EGRESS, "non_ip"): (1, 60),
                                                                  (LO, "malformed"): (1, 50)})]
    report = accounting.report(source.collect(1.0), 1.0)
    v = values(report)
    assert v[("xtrace_interface_packets_total", (("direction", "egress"), ("interface", "lo")))] == 4
    assert v[("xtrace_interface_bytes_total", (("direction", "ingress"), ("interface", "lo")))] == 250
    assert v[("xtrace_xdp_untracked_packets_total", (("direction", "egress"), ("interface", "lo"),
                                                     ("reason", "non_ip")))] == 1
    assert health.get(sm.XDP_ATTACHED, {"interface": "lo", "mode": "tcx", "direction": "egress"}) == 1
    assert health.get(sm.FLOWS_TRACKED, {"interface": "lo", "direction": "egress"}) == 1
    per_group: dict = {}
    for s in report.samples:
        if s.name.startswith(("xtrace_network_", "xtrace_interface_")) and s.name.endswith("_total"):
            assert s.labels["direction"] in ("ingress", "egress"), s
            sign = -1 if s.name.startswith("xtrace_interface_") else 1
            group = (s.labels["interface"], s.labels["direction"], s.name.endswith("packets_total"))
            per_group[group] = per_group.get(group, 0) + sign * s.value
    assert per_group and set(per_group.values()) == {0}
    text = FlowText(with_interface=False).lines(report)
    assert text.index("10.0.0.2:9999 -> 10.0.0.1:1 proto=17 packets=3 bytes=330 direction=egress") < \
        text.index("10.0.0.1:1 -> 10.0.0.2:9999 proto=17 packets=2 bytes=200 direction=ingress")
    source.close()


def test_a_kernel_without_an_egress_hook_is_refused_in_one_line(monkeypatch):
    """tcx unknown (EINVAL) and clsact missing (EOPNOTSUPP): the agent stops, even from a config
    file, with one line saying what is missing. The kernel calls are faked: this kernel has both."""
    import errno

    from xtrace_agent.xdp import egress, libbpf
    from xtrace_agent.xdp.egress import EgressAttachments, NoEgressHook

    def fail(code):
        def call(*args, **kwargs):
            raise OSError(code, "faked")
        return call

    monkeypatch.setattr(libbpf, "tcx_query", fail(errno.EINVAL))
    monkeypatch.setattr(libbpf, "tc_query", lambda *a: 0)
    monkeypatch.setattr(libbpf, "tc_attach", fail(errno.EOPNOTSUPP))
    links = EgressAttachments({"e": 3, "i": 4}, {"e": 30, "i": 40}, "e", "i")
    assert links.resolve() == "tc"
    with pytest.raises(NoEgressHook) as e:
        links.attach("lo", LO, False)
    assert str(e.value) == egress.NO_HOOK and "\n" not in str(e.value)

    class NoHook(FakeProgram):
        def attach(self, ifname, ifindex, infiniband, mode, direction="ingress"):
            if direction == "egress":
                raise NoEgressHook(egress.NO_HOOK)
            return super().attach(ifname, ifindex, infiniband, mode, direction)

    fake = NoHook()
    cfg = AgentConfig(interfaces=("lo",), xdp=XdpConfig(directions=("ingress", "egress")), from_file=True)
    with pytest.raises(NoEgressHook):
        XdpCollector(cfg, Health(), program_loader=lambda _: fake).start()
    assert fake.attached("ingress") == {}  # closed on the way out


def test_a_missing_interface_is_reported_for_each_direction_as_an_xdp_problem():
    from xtrace_agent.sinks.podstatus import summarize

    cfg = AgentConfig(interfaces=("xtmissing0",), xdp=XdpConfig(directions=("ingress", "egress")), from_file=True)
    c = XdpCollector(cfg, Health(), program_loader=lambda _: FakeProgram())
    c.start()
    reasons = c.health.reasons()
    assert reasons == {"xdp:xtmissing0": "interface not found", "xdp:xtmissing0 (egress)": "interface not found"}
    assert {p.kind for p in c.health.problems()} == {Kind.INTERFACE_NOT_FOUND}
    assert summarize(c.health.problems()).reason == "InterfaceNotFound"
    c.close()


@pytest.mark.parametrize("directions", [("ingress",), ("ingress", "egress")])
def test_every_sample_is_a_defined_data_metric_with_its_declared_labels(directions):
    """Names and labels as datametrics.py defines them: RoCE and other flows, budget overflow, every
    untracked reason, both directions, the gauges."""
    source, accounting, fake, _ = pipeline(max_flows=2, directions=directions)
    fake.pending = [drained({flow(1): (2, 200), flow(4791, ttype="roce", opcode=4, qp=17): (1, 80),
                             flow(3): (1, 60)}, {(LO, "malformed"): (1, 60), (LO, "table_full"): (1, 60)})]
    report = accounting.report(source.collect(1.0), 1.0)
    seen = set()
    for s in report.samples:
        metric = dm.BY_NAME.get(s.name)
        assert metric is not None and metric.source == "xdp", s
        assert metric.allows(s.labels), (s.name, sorted(s.labels))
        seen.add(s.name)
    assert seen == {m.name for m in dm.BY_NAME.values() if m.source == "xdp"}
    source.close()
