"""Device plugin ids -> what sysfs shows for them, on a tree with the links a real SR-IOV host has."""

import os

from tests.fixtures import make_pci
from xtrace_agent.owners import devicemap
from xtrace_agent.owners.devicemap import AUX, PCI, SHARED, UNKNOWN


def test_fixture_has_real_host_links(host):
    # what the mapping relies on, checked on the tree itself (not on the builder's intent)
    vf = os.path.join(host, "bus", "pci", "devices", make_pci.VF_NETNS)
    assert os.path.islink(vf) and os.path.realpath(os.path.join(vf, "physfn")) == os.path.realpath(
        os.path.join(host, "bus", "pci", "devices", make_pci.PF0))
    pf = os.path.join(host, "bus", "pci", "devices", make_pci.PF0)
    vfs = sorted(os.path.basename(os.readlink(os.path.join(pf, n))) for n in os.listdir(pf) if n.startswith("virtfn"))
    assert vfs == [make_pci.VF_NETNS, make_pci.VF_FREE, make_pci.VF_EXCLUSIVE, make_pci.VF_VFIO]
    ib = os.path.join(host, "class", "infiniband", "mlx5_2")
    assert os.path.realpath(os.path.join(ib, "device")) == os.path.realpath(vf)


def test_vf_in_a_pods_network_namespace(host):
    t = devicemap.resolve(host, make_pci.VF_NETNS)
    assert (t.kind, t.rdma, t.netdevs, t.physfn, t.exclusive, t.problem) == (
        PCI, ("mlx5_2",), (), make_pci.PF0, False, "")


def test_whole_pf_and_its_net_device(host):
    t = devicemap.resolve(host, make_pci.PF1)
    assert (t.rdma, t.netdevs, t.physfn) == (("mlx5_1",), ("ib0",), "")


def test_ids_as_plugins_spell_them(host):
    # upper case, surrounding blanks: the same function
    assert devicemap.resolve(host, f" {make_pci.VF_FREE.upper()} ").rdma == ("mlx5_3",)
    assert devicemap.resolve(host, make_pci.SF)[:3] == (AUX, make_pci.SF, ("mlx5_5",))
    assert devicemap.resolve(host, "7").kind == SHARED  # an RDMA shared device plugin slot
    assert devicemap.is_shared_slot("12") and not devicemap.is_shared_slot(make_pci.PF0)


def test_exclusive_mode_vf_is_detected(host):
    t = devicemap.resolve(host, make_pci.VF_EXCLUSIVE)
    assert t.exclusive and t.rdma == () and t.problem == ""


def test_what_maps_to_nothing_says_why(host):
    vfio = devicemap.resolve(host, make_pci.VF_VFIO)
    assert not vfio.exclusive and "vfio-pci" in vfio.problem
    gone = devicemap.resolve(host, "0000:af:00.1")
    assert gone.kind == PCI and gone.problem.startswith("no PCI function 0000:af:00.1")
    gpu = devicemap.resolve(host, "GPU-8a1c2e4f-0000-1111-2222-333344445555")
    assert gpu.kind == UNKNOWN and gpu.problem
    assert devicemap.resolve(host, "mlx5_core.sf.9").problem.startswith("no auxiliary device mlx5_core.sf.9")


def test_vf_without_infiniband_on_a_pf_without_rdma_is_not_exclusive(host):
    # an Ethernet-only NIC's VF: no RDMA anywhere, so not "held in exclusive mode"
    pf = make_pci.function(host, "0000:d8:00.0", driver="ice", bridge=("pci0000:d7", "0000:d7:00.0"))
    assert pf
    make_pci.function(host, "0000:d8:01.0", driver="iavf", physfn="0000:d8:00.0", bridge=("pci0000:d7", "0000:d7:00.0"))
    t = devicemap.resolve(host, "0000:d8:01.0")
    assert not t.exclusive and "VF of a PF without RDMA" in t.problem


def test_exclusive_vf_comes_back_when_its_pod_ends(host):
    before = devicemap.held_state(host, devicemap.resolve(host, make_pci.VF_EXCLUSIVE))
    make_pci.rdma_device(host, make_pci.function_dir(host, make_pci.VF_EXCLUSIVE), "mlx5_6")
    t = devicemap.resolve(host, make_pci.VF_EXCLUSIVE)
    assert t.rdma == ("mlx5_6",) and not t.exclusive
    assert devicemap.held_state(host, t) != before
