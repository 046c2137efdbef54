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
    """What one collection interval produced: samples for every sink, text lines for stdout."""

    timestamp: float
    samples: list[Sample] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
