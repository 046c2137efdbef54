"""Sinks deliver Reports: stdout, remote write, the /metrics endpoint, pod status (stages.Sink).

A failing sink never blocks the collector or another sink: the pipeline isolates each call.
"""
