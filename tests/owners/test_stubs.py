"""The committed pod-resources stubs are what grpcio-tools makes from the committed api.proto, and
they describe the kubelet's service as the kubelet serves it (the method paths on the wire)."""

import os
import subprocess
import sys

AGENT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(__file__))), "agent")
STUBS = ("api_pb2.py", "api_pb2_grpc.py")


def test_committed_stubs_match_the_proto(tmp_path):
    out = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{AGENT}", f"--python_out={tmp_path}",
                          f"--grpc_python_out={tmp_path}", "xtrace_agent/owners/api.proto"],
                         capture_output=True, text=True, cwd=AGENT)
    assert out.returncode == 0, out.stderr
    for name in STUBS:
        with open(os.path.join(tmp_path, "xtrace_agent", "owners", name)) as f:
            fresh = f.read()
        with open(os.path.join(AGENT, "xtrace_agent", "owners", name)) as f:
            assert f.read() == fresh, f"{name} is stale: make podresources-stubs"


def test_service_is_the_kubelets():
    from xtrace_agent.owners import api_pb2

    service = api_pb2.DESCRIPTOR.services_by_name["PodResourcesLister"]
    assert service.full_name == "v1.PodResourcesLister"  # the kubelet's path: /v1.PodResourcesLister/List
    assert {m.name for m in service.methods} == {"List", "GetAllocatableResources", "Get"}
    devices = api_pb2.ContainerDevices.DESCRIPTOR.fields_by_name
    assert (devices["resource_name"].number, devices["device_ids"].number) == (1, 2)
