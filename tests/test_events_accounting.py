"""The drop and TCP accounting stages on drains built here: conservation per (interface,
direction) and reason with flows over the budget, table-full drops and untracked ones; reason
names as given (an unknown value is its number); the RTT histogram's buckets sum whole slots."""

from __future__ import annotations

import numpy as np

from xtrace_agent import drops, tcp
from xtrace_agent.stages import FlowKey
from xtrace_agent.xdp import layout
from xtrace_agent.xdp.events import RTT_SLOTS, DropsDrained, TcpDrained

REASONS = {3: "NO_SOCKET", 6: "SOCKET_RCVBUFF"}


def group_of(raw):
    i, direction = layout.split_ifindex(raw)
    return (f"eth{i}", direction)


def fk(sport, ifindex=1, dport=53):
    return FlowKey(ifindex, "10.0.0.1", "10.0.0.2", sport, dport, 17, "ethernet", 0, 0)


def totals(samples):
    flows, ifaces = {}, {}
    for s in samples:
        where = (s.labels.get("interface"), s.labels.get("direction"), s.labels.get("reason"))
        if s.name == drops.PACKETS:
            flows[where] = flows.get(where, 0) + s.value
        elif s.name == drops.IFACE_PACKETS:
            ifaces[where] = s.value
    return flows, ifaces


def test_conservation_with_budget_full_table_and_untracked():
    acct = drops.DropAccounting(max_flows=2, idle_timeout=60, directed=True)
    name = lambda v: REASONS.get(v, str(v))  # noqa: E731
    drained = DropsDrained(
        flows={(fk(1), 3): (5, 500), (fk(2), 3): (1, 100), (fk(3), 3): (2, 200), (fk(4, 1 | layout.EGRESS), 99): (1, 9)},
        untracked={(1, "non_ip", 3): (4, 40)}, full={(1, 6): (7, 70)}, lost=(2, 20))
    samples = acct.report(drops.observe(drained, group_of, name), 100.0)
    flows, ifaces = totals(samples)
    assert flows == ifaces
    assert ifaces[("eth1", "ingress", "NO_SOCKET")] == 5 + 1 + 2 + 4
    assert ifaces[("eth1", "ingress", "SOCKET_RCVBUFF")] == 7
    assert ifaces[("eth1", "egress", "99")] == 1  # a value the kernel's enum does not name: its number
    by_name = {s.name: s.value for s in samples if not s.labels}
    assert by_name[drops.LOST_PACKETS] == 2
    # the next interval adds, never goes back
    samples = acct.report(drops.observe(DropsDrained({(fk(1), 3): (1, 100)}, {}, {}, (2, 20)), group_of, name), 110.0)
    flows2, ifaces2 = totals(samples)
    assert flows2 == ifaces2 and ifaces2[("eth1", "ingress", "NO_SOCKET")] == 13


def vec(retrans=0, rtts=()):
    """A flow's vector [retrans, rtt_count, rtt_sum_us] as the kernel table holds it."""
    return np.array([retrans, len(rtts), sum(rtts)], dtype=np.uint64)


def hist(rtts):
    """An interface's histogram gain [sum_us, slots...]: slot i holds srtt <= 2^i us."""
    h = np.zeros(1 + RTT_SLOTS, dtype=np.uint64)
    for us in rtts:
        h[0] += us
        h[1 + max(0, int(us - 1).bit_length())] += 1
    return h


def test_tcp_retransmits_and_histogram():
    acct = tcp.TcpAccounting(max_flows=1, idle_timeout=60, directed=False)
    rtts = (10, 16, 17, 5000, 300)
    drained = TcpDrained({fk(1): vec(3, rtts[:3]), fk(2): vec(2, rtts[3:4])}, {1: vec(1, rtts[4:])}, 0, {1: hist(rtts)})
    samples = acct.report(tcp.observe(drained, group_of, (("eth1", "ingress"),)), 100.0)
    s = {(x.name, *sorted(x.labels.items())): x.value for x in samples}
    g = (("interface", "eth1"),)
    assert s[(tcp.IFACE_RETRANS, *g)] == 6
    assert sum(x.value for x in samples if x.name == tcp.RETRANS) == 6  # one flow, the rest in `other`
    le = {x.labels["le"]: x.value for x in samples if x.name == tcp.RTT + "_bucket"}
    assert le["0.000016"] == 2 and le["0.000064"] == 3 and le["0.001024"] == 4 and le["0.016384"] == 5
    assert le["+Inf"] == s[(tcp.RTT + "_count", *g)] == 5
    assert abs(s[(tcp.RTT + "_sum", *g)] - (10 + 16 + 17 + 5000 + 300) / 1e6) < 1e-12


def test_text_output_lists_drops_after_the_flows():
    from xtrace_agent.samples import Report, Sample
    from xtrace_agent.sinks.text import FlowText

    acct = drops.DropAccounting(max_flows=10, idle_timeout=60, directed=False)
    samples = acct.report(drops.observe(DropsDrained({(fk(7), 3): (2, 120)}, {}, {}, (0, 0)), group_of,
                                        REASONS.get), 1.0)
    flow = {"interface": "eth1", "src_ip": "10.0.0.1", "dst_ip": "10.0.0.2", "src_port": "7", "dst_port": "53",
            "protocol": "17", "traffic_type": "ethernet"}
    samples += [Sample("xtrace_network_packets_total", flow, 5, 1.0), Sample("xtrace_network_bytes_total", flow, 300, 1.0)]
    lines = FlowText(with_interface=False).lines(Report(1.0, samples))
    assert lines == ["10.0.0.1:7 -> 10.0.0.2:53 proto=17 packets=5 bytes=300",
                     "drop 10.0.0.1:7 -> 10.0.0.2:53 proto=17 packets=2 bytes=120 reason=NO_SOCKET"]


def test_every_sample_is_a_defined_data_metric_with_its_labels():
    from xtrace_agent import datametrics as dm

    seen = set()
    for directed in (False, True):
        d = drops.DropAccounting(max_flows=1, idle_timeout=60, directed=directed)
        samples = d.report(drops.observe(DropsDrained({(fk(1), 3): (1, 10), (fk(2), 3): (1, 10)},
                                                      {(1, "non_ip", 6): (1, 1)}, {}, (0, 0)),
                                         group_of, REASONS.get, (("eth1", "ingress"),)), 1.0)
        t = tcp.TcpAccounting(max_flows=1, idle_timeout=60, directed=directed)
        samples += t.report(tcp.observe(TcpDrained({fk(1): vec(1, (5,)), fk(2): vec(0, (9,))}, {}, 0, {1: hist((5, 9))}),
                                        group_of, (("eth1", "ingress"),)), 1.0)
        for s in samples:
            assert dm.BY_NAME[s.name].allows(s.labels), s
            seen.add(s.name)
    assert seen == {m.name for m in dm.BY_NAME.values() if m.source in ("drops", "tcp")}
