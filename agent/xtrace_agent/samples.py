"""One metric model shared by every collector and every sink."""

from __future__ import annotations

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


class Report:
    """What one collection interval produced, handed to every sink alike.

    `flows` (xdp mode) holds the flow series in columns (columns.FlowBlock): the remote-write sink
    queues and encodes those as they are (batches()); `samples` makes them into Sample objects,
    in the order they always had, only for a sink that reads it (stdout, /metrics)."""

    __slots__ = ("timestamp", "_samples", "health", "flows")

    def __init__(self, timestamp: float, samples: list[Sample] | None = None, health: list[Sample] | None = None,
                 flows=None):
        self.timestamp = timestamp
        self._samples = [] if samples is None else samples  # the data not in `flows`
        # the agent's self-metrics as of `timestamp` (the pipeline adds them): pushed and printed with
        # the data; /metrics reads the live values at scrape time instead
        self.health = [] if health is None else health
        self.flows = flows

    @property
    def samples(self) -> list[Sample]:
        """The data: the flows' samples (made on each call, not kept), then the rest."""
        if self.flows is None:
            return self._samples
        return self.flows.samples() + self._samples

    @samples.setter
    def samples(self, value: list[Sample]) -> None:
        self._samples, self.flows = value, None

    def extend(self, samples: list[Sample]) -> None:
        """More data after the flows (xdp.drops and xdp.tcp samples): `samples` is made anew on each
        read while there are flow columns, so extending what it returns would lose them."""
        self._samples.extend(samples)

    def everything(self) -> list[Sample]:
        """The data and the self-metrics (a new list): what remote write sends and stdout's JSON shows."""
        return self.samples + self.health

    def batches(self) -> list:
        """everything() as the remote-write queue holds it: the flow columns (columns.Column), then
        one list of the other samples; each a sized, sliceable sequence of samples."""
        rest = self._samples + self.health
        return ([*self.flows.columns(), rest] if self.flows is not None else [rest])
