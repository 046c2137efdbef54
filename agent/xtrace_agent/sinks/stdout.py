"""Prints each report: the old tool's text lines (sinks/text.py), or one JSON document per line."""

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
        "samples": [{"name": s.name, "labels": s.labels, "value": _number(s.value)} for s in report.everything()],
    }, separators=(", ", ": "))


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte. A report can exceed a pipe's buffer, and a signal arriving while we wait
    for the reader must not cut it: io's buffered writer was seen to drop the unwritten rest."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class StdoutSink:
    """Writes reports to a stream; a closed stream (`| head`) disables the sink, never the agent.

    `text`: the mode's formatter (pipeline.MODES), which turns a report's samples into lines."""

    def __init__(self, output: str = "text", text=None, stream: TextIO | None = None):
        if output == "text" and text is None:
            raise ValueError("text output needs the mode's formatter")
        self.output = output
        self.text = text
        self.stream = stream or sys.stdout
        self.closed = False

    def write(self, report: Report) -> None:
        if self.closed:
            return
        if self.output == "json":
            text = json_line(report) + "\n"
        else:
            text = "".join(f"{line}\n" for line in self.text.lines(report))
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
