"""One metric model shared by every collector and every sink."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


class Sample(NamedTuple):
    """One value of one series at one time. `timestamp` is in seconds (float) since the epoch."""

    name: str
    labels: dict[str, str]
    value: float
    timestamp: float

    def series_key(self) -> tuple:
        """Identity of the series this sample belongs to (name plus sorted labels)."""
        return (self.name, *sorted(self.labels.items()))


@dataclass
class Report:
    """What one collection interval produced, handed to every sink alike."""

    timestamp: float
    samples: list[Sample] = field(default_factory=list)  # the data
    # the agent's self-metrics as of `timestamp` (the pipeline adds them): pushed and printed with
    # the data; /metrics reads the live values at scrape time instead
    health: list[Sample] = field(default_factory=list)

    def everything(self) -> list[Sample]:
        """The data and the self-metrics (a new list): what remote write sends and stdout's JSON shows."""
        return self.samples + self.health
