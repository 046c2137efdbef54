"""Pod attribution: which pod holds which RDMA device, from the kubelet's pod-resources API.

podresources.py  the gRPC client of the kubelet's PodResourcesLister (v1; stubs generated from
                 the kubelet's api.proto, committed beside it)
devicemap.py     a device plugin's device id -> the RDMA and net devices sysfs shows for it
table.py         the owner table the rdma collector reads every interval and refreshes per period
"""
