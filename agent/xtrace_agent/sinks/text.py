"""The old tool's text lines, made from a report's samples (stdout's `text` output).

    xdp:        192.168.1.100:80 -> 192.168.1.1:12345 proto=6 packets=10 bytes=1500
    rdma/nccl:  mlx5_0 port=1 netdev=eth2 link_layer=Ethernet state=ACTIVE rate=100Gb/sec tx_bytes/s=1.20G ...

New facts are appended as `key=value` fields, never inserted, so parsers of the old format keep
working. The sources and accounting stages know nothing of this: a formatter reads the same samples
every other sink gets.
"""

from __future__ import annotations

from xtrace_agent import datametrics as dm
from xtrace_agent.flows import OTHER
from xtrace_agent.samples import Report


def _endpoint(ip: str, port: str) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def flow_line(labels: dict[str, str], packets: int, bytes_: int, with_interface: bool) -> str:
    """One flow's line; `direction=` is appended when the labels carry one (both directions counted)."""
    line = (f"{_endpoint(labels['src_ip'], labels['src_port'])} -> {_endpoint(labels['dst_ip'], labels['dst_port'])}"
            f" proto={labels['protocol']} packets={packets} bytes={bytes_}")
    ttype = labels["traffic_type"]
    if ttype == "roce":
        line += f" traffic_type=roce rdma_opcode={labels['rdma_opcode']} dest_qp={labels['dest_qp']}"
    elif ttype != "ethernet":
        line += f" traffic_type={ttype}"
    if with_interface:
        line += f" interface={labels['interface']}"
    if "direction" in labels:
        line += f" direction={labels['direction']}"
    return line


class FlowText:
    """xdp mode: per interface and direction, busiest flows first, the `other` flow last."""

    def __init__(self, with_interface: bool):
        self.with_interface = with_interface  # more than one interface watched: say which

    def lines(self, report: Report) -> list[str]:
        flows: dict[tuple, list] = {}
        dropped: dict[tuple, list] = {}  # xdp.drops: after the flows, `drop ` first, `reason=` last
        for s in report.samples:
            if s.name in (dm.NETWORK_PACKETS.name, dm.NETWORK_BYTES.name):
                into, word = flows, 1 if s.name == dm.NETWORK_PACKETS.name else 2
            elif s.name in (dm.DROP_PACKETS.name, dm.DROP_BYTES.name):
                into, word = dropped, 1 if s.name == dm.DROP_PACKETS.name else 2
            else:
                continue
            into.setdefault(tuple(s.labels.values()), [s.labels, 0, 0])[word] = int(s.value)

        def order(row):
            labels = row[0]
            return (labels["interface"], labels.get("direction", ""), labels["src_ip"] == OTHER, -row[2])
        out = [flow_line(labels, p, b, self.with_interface) for labels, p, b in sorted(flows.values(), key=order)]
        return out + [f"drop {flow_line(labels, p, b, self.with_interface)} reason={labels['reason']}"
                      for labels, p, b in sorted(dropped.values(), key=order)]


def _si(value: float) -> str:
    for unit in ("", "k", "M", "G", "T"):
        if abs(value) < 1000 or unit == "T":
            return f"{value:.0f}{unit}" if unit == "" else f"{value:.2f}{unit}"
        value /= 1000
    return f"{value:.2f}T"


# per port line: (field, metric); totals on the first line, per-second rates after
_PORT_FIELDS = (("tx_bytes", dm.RDMA_TX_BYTES.name), ("rx_bytes", dm.RDMA_RX_BYTES.name),
                ("tx_packets", dm.RDMA_TX_PACKETS.name), ("rx_packets", dm.RDMA_RX_PACKETS.name))


class PortText:
    """rdma / nccl modes: one line per port; rates from the previous report's totals."""

    def __init__(self) -> None:
        self._previous: dict[tuple[str, str], tuple[float, dict[str, float], tuple | None]] = {}

    def lines(self, report: Report) -> list[str]:
        ports: dict[tuple[str, str], dict] = {}
        for s in report.samples:
            if s.name == dm.RDMA_PORT_INFO.name:
                ports[(s.labels["device"], s.labels["port"])] = {"info": s.labels, "ts": s.timestamp,
                                                                  "totals": {}, "saturated": []}
            elif "device" in s.labels and (port := ports.get((s.labels["device"], s.labels.get("port")))):
                if s.name == dm.RDMA_COUNTER_SATURATED.name:
                    if s.value:
                        port["saturated"].append(s.labels["counter"])
                elif s.name in _METRICS:
                    port["totals"][s.name] = s.value
        return [self._line(key, port) for key, port in ports.items()]

    def _line(self, key: tuple[str, str], port: dict) -> str:
        info, ts, totals = port["info"], port["ts"], port["totals"]
        # a held device counts from its owner's first report: a new owner's line starts with totals
        held = (info.get("namespace"), info.get("pod")) if "pod" in info else None
        previous = self._previous.get(key)
        if previous is not None and previous[2] != held:
            previous = None
        self._previous[key] = (ts, totals, held)
        rate = info["rate"] if info["rate"] != "unknown" else "?"
        parts = [f"{key[0]} port={key[1]} netdev={info['netdev'] or '-'} "
                 f"link_layer={_known(info['link_layer'])} state={_known(info['state'])} "
                 f"rate={rate.split(' (')[0].replace(' ', '')}"]
        if held:
            parts.append(f"pod={held[0]}/{held[1]}")
        dt = ts - previous[0] if previous else 0.0
        for field, metric in _PORT_FIELDS:
            value = totals.get(metric)
            if value is None:
                parts.append(f"{field}=-")
            elif previous is None or dt <= 0 or previous[1].get(metric) is None:
                parts.append(f"{field}={int(value)}")  # first interval: totals
            else:
                parts.append(f"{field}/s={_si((value - previous[1][metric]) / dt)}")
        if port["saturated"]:
            parts.append(f"saturated={','.join(port['saturated'])}")
        return " ".join(parts)


_METRICS = {metric for _, metric in _PORT_FIELDS}


def _known(value: str) -> str:
    return "?" if value == "unknown" else value
