"""The XTrace operator: turns an XTraceMonitor into a ConfigMap, a ServiceAccount and an agent DaemonSet."""

GROUP = "xtrace.io"
VERSION = "v1alpha1"
PLURAL = "xtracemonitors"
KIND = "XTraceMonitor"
