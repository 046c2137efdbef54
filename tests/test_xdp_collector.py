"""The XDP collector's bookkeeping, on a fake kernel program (no root needed).

The fake stands in for the kernel only; the real program is exercised in tests/kernel/.
"""

import socket

from xtrace_agent.collectors.xdp import XdpCollector, text_line
from xtrace_agent.config import AgentConfig, XdpConfig
from xtrace_agent.health import Health
from xtrace_agent.xdp.program import Drained, FlowKey

LO = socket.if_nametoindex("lo")


class FakeProgram:
    def __init__(self):
        self.pending: list[Drained] = []
        self._attached: dict[int, str] = {}

    def attach(self, ifname, ifindex, infiniband, mode):
        self._attached[ifindex] = "generic"
        return "generic"

    def attached(self):
        return dict(self._attached)

    def detach(self, ifindex):
        self._attached.pop(ifindex, None)

    def drain(self):
        return self.pending.pop(0) if self.pending else Drained({}, {}, {})

    def close(self):
        self._attached.clear()


def flow(sport, proto=17, ttype="ethernet", opcode=0, qp=0, src="10.0.0.1"):
    return FlowKey(LO, src, "10.0.0.2", sport, 9999, proto, ttype, opcode, qp)


def collector(**xdp):
    fake = FakeProgram()
    cfg = AgentConfig(interfaces=("lo",), xdp=XdpConfig(**xdp))
    c = XdpCollector(cfg, Health(), program_loader=lambda _: fake)
    c.start()
    return c, fake


def test_cumulative_samples_and_old_text_format():
    c, fake = collector()
    fake.pending = [Drained({flow(1): (2, 200)}, {LO: (3, 260)}, {"malformed": 1}),
                    Drained({flow(1): (1, 100), flow(4791, ttype="roce", opcode=4, qp=17): (1, 80)}, {LO: (2, 180)}, {})]
    c.collect(1.0)
    report = c.collect(2.0)
    assert "10.0.0.1:1 -> 10.0.0.2:9999 proto=17 packets=3 bytes=300" in report.text
    assert "10.0.0.1:4791 -> 10.0.0.2:9999 proto=17 packets=1 bytes=80 traffic_type=roce rdma_opcode=4 dest_qp=17" \
        in report.text
    values = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in report.samples}
    assert values[("xtrace_interface_packets_total", (("interface", "lo"),))] == 5
    roce = [s for s in report.samples if s.labels.get("traffic_type") == "roce"]
    assert {s.labels["rdma_opcode"] for s in roce} == {"4"} and {s.labels["dest_qp"] for s in roce} == {"17"}
    assert c.health.get("xtrace_xdp_malformed_packets_total") == 1
    c.close()


def test_budget_overflow_is_an_other_flow_and_counted():
    c, fake = collector(max_flows=1)
    fake.pending = [Drained({flow(1): (5, 500), flow(2): (1, 10)}, {LO: (6, 510)}, {})]
    report = c.collect(1.0)
    others = [s for s in report.samples if s.labels.get("src_ip") == "other" and s.name.endswith("packets_total")]
    assert [s.value for s in others] == [1]
    assert c.health.get("xtrace_flows_folded_total") == 1
    c.close()


def test_ipv6_endpoints_are_bracketed():
    key = ("eth0", "fd00::1", "fd00::2", "5", "6", "17", "ethernet", None, None)
    assert text_line(key, 1, 2, with_interface=True) == "[fd00::1]:5 -> [fd00::2]:6 proto=17 packets=1 bytes=2 interface=eth0"


def test_a_glob_that_matches_nothing_is_reported_not_ready():
    from xtrace_agent.errors import UsageError

    fake = FakeProgram()
    cfg = AgentConfig(interfaces=("lo", "xtnomatch*"), from_file=True)
    c = XdpCollector(cfg, Health(), program_loader=lambda _: fake)
    c.start()
    assert c.health.reasons() == {"xdp:xtnomatch*": "no interface matches"}
    c.close()
    strict = XdpCollector(AgentConfig(interfaces=("xtnomatch*",)), Health(), program_loader=lambda _: fake)
    try:
        strict.start()
    except UsageError as e:
        assert "no interface matches 'xtnomatch*'" in str(e)
    else:
        raise AssertionError("a glob matching nothing on the command line is a usage error")
