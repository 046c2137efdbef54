"""RDMA (InfiniBand, RoCE, iWARP) port counters from sysfs: parsing (`sysfs`) and counter truth (`counters`)."""

from xtrace_agent.rdma.sysfs import list_devices

__all__ = ["list_devices"]
