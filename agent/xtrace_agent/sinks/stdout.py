"""Prints each report: the old tool's text lines, or one JSON document per line."""

from __future__ import annotations

import json
import os
import sys
from typing import TextIO

from xtrace_agent.samples import Report


def _number(value: float) -> int | float:
    return int(value) if float(value).is_integer() else value


def json_line(report: Report) -> str:
    return json.dumps({
        "timestamp": round(report.timestamp, 3),
        "samples": [{"name": s.name, "labels": s.labels, "value": _number(s.value)} for s in report.samples],
    }, separators=(", ", ": "))


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte. A report can exceed a pipe's buffer, and a signal arriving while we wait
    for the reader must not cut it: io's buffered writer was seen to drop the unwritten rest."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class StdoutSink:
    """Writes reports to a stream; a closed stream (`| head`) disables the sink, never the agent."""

    def __init__(self, output: str = "text", stream: TextIO | None = None):
        self.output = output
        self.stream = stream or sys.stdout
        self.closed = False

    def write(self, report: Report) -> None:
        if self.closed:
            return
        text = json_line(report) + "\n" if self.output == "json" else "".join(f"{line}\n" for line in report.text)
        try:
            self.stream.flush()
            fd = self.stream.fileno()
        except (OSError, ValueError, AttributeError):
            fd = None  # not a real file (a test's StringIO)
        try:
            if fd is None:
                self.stream.write(text)
                self.stream.flush()
            else:
                _write_all(fd, text.encode())
        except (BrokenPipeError, ValueError):
            self.closed = True

    def close(self, timeout: float) -> None:
        try:
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass
