"""The kubelet's pod-resources API (v1): which containers on this node hold which devices.

The kubelet serves `v1.PodResourcesLister` over gRPC on a unix socket,
`/var/lib/kubelet/pod-resources/kubelet.sock`. `List` names every pod, its containers and, per
container, the device plugin resources allocated to it (`resource_name`, `device_ids`). The
stubs beside this module are generated from the kubelet's own api.proto (`make podresources-stubs`).

A failure is a `PodResourcesError` whose `kind` says what the caller should tell the user:
`unreachable` (no socket, nobody listening, a timeout) or `error` (the kubelet answered with a
status: an older kubelet without v1, the feature gate off, a permission problem).
"""

from __future__ import annotations

import os
from typing import NamedTuple

from xtrace_agent import environ

DEFAULT_SOCKET = "/var/lib/kubelet/pod-resources/kubelet.sock"
# The kubelet's own client allows 16 MiB (pkg/kubelet/apis/podresources: defaultPodResourcesMaxSize);
# gRPC's default of 4 MiB is reached by a node with a few thousand containers holding devices.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# The kubelet answers List from its memory in milliseconds; longer means it is stuck. The call runs
# in the collection loop (one interval late by at most this, and the table backs off while it fails).
TIMEOUT_SECONDS = 2.0
FAILURE_KINDS = ("unreachable", "error")  # PodResourcesError.kind


class Allocation(NamedTuple):
    """One device id allocated to one container, as the kubelet reports it."""

    namespace: str
    pod: str
    container: str
    resource: str  # the device plugin's resource name, e.g. "nvidia.com/sriov_rdma_vf"
    device_id: str  # what the plugin calls the device: a PCI address, an index, ...


class PodResourcesError(Exception):
    """The kubelet could not be asked (`kind` "unreachable") or answered an error (`kind` "error")."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


class PodResourcesClient:
    """A client of one kubelet socket. One channel, made again after a failure: a restarted kubelet
    makes a new socket, and gRPC's own reconnect backoff (up to two minutes) would hide it."""

    def __init__(self, socket_path: str = DEFAULT_SOCKET, timeout: float = TIMEOUT_SECONDS):
        self.socket_path = socket_path
        self.timeout = timeout
        self._channel = None
        self._stub = None

    def _connect(self):
        # gRPC's C core logs to stderr on its own (a kubelet restart prints a GOAWAY line per
        # channel): the agent logs each pod-resources problem once itself. Read at first import.
        os.environ.setdefault(environ.GRPC_VERBOSITY.name, environ.GRPC_VERBOSITY.default)
        import grpc

        from xtrace_agent.owners import api_pb2_grpc

        if self._stub is None:
            self._channel = grpc.insecure_channel(
                f"unix://{os.path.abspath(self.socket_path)}",
                options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                         ("grpc.enable_http_proxy", 0)])  # a unix socket: never through a proxy
            self._stub = api_pb2_grpc.PodResourcesListerStub(self._channel)
        return self._stub

    def list(self) -> list[Allocation]:
        """Every device allocation on the node; raises PodResourcesError."""
        import grpc

        from xtrace_agent.owners import api_pb2

        if not os.path.exists(self.socket_path):
            self.close()
            raise PodResourcesError("unreachable", f"no kubelet pod-resources socket at {self.socket_path}")
        try:
            response = self._connect().List(api_pb2.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            self.close()
            code = e.code() if hasattr(e, "code") else None
            detail = (e.details() if hasattr(e, "details") else "") or ""
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise PodResourcesError(
                    "unreachable", f"kubelet pod-resources socket {self.socket_path}: "
                                   f"{code.name.lower()}: {detail}".rstrip(": ")) from None
            name = code.name if code else "UNKNOWN"
            raise PodResourcesError("error", f"kubelet pod-resources List answered {name}: {detail}") from None
        return allocations(response)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        self._channel = self._stub = None


def allocations(response) -> list[Allocation]:
    """Flatten a ListPodResourcesResponse to one Allocation per device id.

    Fields a kubelet leaves empty (a pod without a namespace from an old kubelet, a device entry
    without ids) are kept as they are or skipped: the table decides what they mean.
    """
    out = []
    for pod in response.pod_resources:
        for container in pod.containers:
            for devices in container.devices:
                for device_id in devices.device_ids:
                    if device_id:
                        out.append(Allocation(pod.namespace, pod.name, container.name,
                                              devices.resource_name, device_id))
    return out
