"""The held-out sysfs corpus (real captures from other projects, quirks kept) through the binary.

The corpus lives beside the repository (shared/heldout/sysfs-infiniband.tar.xz) and is not
copied into it. The expected facts below are the ones its SOURCE.md documents, not values
read off our own output.
"""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(os.path.dirname(ROOT), "shared", "heldout", "sysfs-infiniband.tar.xz")
AGENT = os.path.join(os.path.dirname(sys.executable), "xtrace-agent")
ROOTS = ("procfs", "node_exporter", "gpud", "captures/gpud-pr943-h100-mlx5_1", "captures/telegraf-readme-roce-bond")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    if not os.path.exists(CORPUS):
        pytest.skip("held-out sysfs corpus not present beside the repository (shared/heldout)")
    out = tmp_path_factory.mktemp("heldout")
    subprocess.run(["tar", "-xJf", CORPUS, "-C", str(out), "--no-same-owner"], check=True)
    return out / "sysfs-infiniband"


def report(corpus, root: str) -> dict[tuple, float]:
    r = subprocess.run([AGENT, "-m", "nccl", "--sysfs", str(corpus / root / "sys"), "--count", "1",
                        "--interval", "0.1", "--output", "json", "--http-listen", ""],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    (line,) = r.stdout.splitlines()
    return {(s["name"], s["labels"].get("device"), s["labels"].get("port"), s["labels"].get("counter")): s["value"]
            for s in json.loads(line)["samples"]}


@pytest.mark.parametrize("root", ROOTS)
def test_every_root_reads_without_error(corpus, root):
    values = report(corpus, root)
    assert any(k[0] == "xtrace_rdma_port_info" for k in values)


def test_saturated_counters_are_flagged_not_pushed(corpus):
    v = report(corpus, "captures/gpud-pr943-h100-mlx5_1")
    dev = ("mlx5_1", "1")
    # 4-octet words x 4 (SOURCE.md: port_xmit_data raw value 205143497464492)
    assert v[("xtrace_rdma_port_transmit_bytes_total", *dev, None)] == 205143497464492 * 4
    for counter in ("link_downed", "port_xmit_discards", "port_xmit_wait"):  # 255, 65535, 2^32-1
        assert v[("xtrace_rdma_counter_saturated", *dev, counter)] == 1
        assert ("xtrace_rdma_port_counter_total", *dev, counter) not in v


def test_iwarp_without_pma_is_absent_not_zero(corpus):
    v = report(corpus, "node_exporter")
    assert not [k for k in v if k[1] == "i40iw0" and k[0] == "xtrace_rdma_port_transmit_bytes_total"]
    assert v[("xtrace_rdma_counter_saturated", "mlx4_0", "1", "port_xmit_wait")] == 1


def test_roce_bond_congestion_counters(corpus):
    v = report(corpus, "captures/telegraf-readme-roce-bond")
    for counter in ("np_cnp_sent", "np_ecn_marked_roce_packets", "rp_cnp_handled", "rp_cnp_ignored",
                    "rx_icrc_encapsulated"):
        assert ("xtrace_rdma_hw_counter_total", "mlx5_bond_0", "1", counter) in v


def test_files_without_newline_and_blank_lines(corpus):
    v = report(corpus, "procfs")  # mlx4_0 port 2 link_layer is "InfiniBand\n\n"
    assert any(k[0] == "xtrace_rdma_port_info" and k[1] == "mlx4_0" and k[2] == "2" for k in v)
    g = report(corpus, "gpud")  # no trailing newline anywhere
    assert g[("xtrace_rdma_port_rate_bytes_per_second", "mlx5_0", "1", None)] == 400e9 / 8
