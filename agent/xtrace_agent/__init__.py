"""XTrace agent: per-node XDP flow counting and RDMA counter sampling, pushed to VictoriaMetrics."""

__version__ = "0.1.0"
