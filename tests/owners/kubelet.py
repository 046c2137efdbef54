"""A stand-in for the kubelet's pod-resources server, which cannot run here (no kubelet, no
container runtime on this machine: docs/testing.md).

It is a real gRPC server of `v1.PodResourcesLister`, built from the same generated stubs as the
agent's client (from the kubelet's api.proto), listening on a unix socket as the kubelet does. The
tests set what it answers: the pods and their device allocations, or an error status; and they
stop it and start it again on the same path, as a kubelet restart does.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures

import grpc

from xtrace_agent.owners import api_pb2, api_pb2_grpc


class FakeKubelet(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, socket_path: str):
        self.socket_path = socket_path
        self.pods: list[api_pb2.PodResources] = []
        self.error: grpc.StatusCode | None = None
        self.delay = 0.0  # seconds List takes: a stuck kubelet
        self.calls = 0
        self._lock = threading.Lock()
        self._server: grpc.Server | None = None

    # what it answers ----------------------------------------------------------------------------
    def set(self, allocations: dict[tuple[str, str], dict[str, dict[str, list[str]]]]) -> None:
        """{(namespace, pod): {container: {resource: [device ids]}}}; containers may hold nothing."""
        pods = []
        for (namespace, name), containers in allocations.items():
            pod = api_pb2.PodResources(name=name, namespace=namespace)
            for cname, resources in containers.items():
                c = pod.containers.add(name=cname)
                c.cpu_ids.extend([2, 3])  # what a real answer carries beside devices
                for resource, ids in resources.items():
                    c.devices.add(resource_name=resource, device_ids=ids,
                                  topology=api_pb2.TopologyInfo(nodes=[api_pb2.NUMANode(ID=0)]))
            pods.append(pod)
        with self._lock:
            self.pods = pods

    def List(self, request, context):  # noqa: N802 (the service's method name)
        time.sleep(self.delay)
        with self._lock:
            self.calls += 1
            if self.error is not None:
                context.abort(self.error, "pod resources API is not enabled (test)")
            return api_pb2.ListPodResourcesResponse(pod_resources=self.pods)

    def GetAllocatableResources(self, request, context):  # noqa: N802
        return api_pb2.AllocatableResourcesResponse()

    # lifecycle ----------------------------------------------------------------------------------
    def start(self) -> FakeKubelet:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        api_pb2_grpc.add_PodResourcesListerServicer_to_server(self, server)
        if server.add_insecure_port(f"unix://{self.socket_path}") == 0:
            raise RuntimeError(f"cannot listen on {self.socket_path}")
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait()
            self._server = None
        if os.path.exists(self.socket_path):
            os.unlink(self.socket_path)
