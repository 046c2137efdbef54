"""Where remote-write blocks wait while the receiver is down: a directory, or memory without one.

A block is one ready-to-send body (a compressed WriteRequest) plus its sample count. Blocks
leave in the order they came (oldest first).

`max_bytes` holds at every instant for everything the spool stores, `rescued.sz` included: room
is made (the oldest blocks evicted and handed back to the caller, which keeps their newest
values, see remote_write.py) *before* a block is written, and a block larger than
`block_limit` is split by the caller first, so one block never overshoots the limit.

On disk every block is one file `<sequence>-<samples>.sz`, written to a temporary name and
renamed, so a crash leaves whole blocks or none. Bodies hold only samples and labels: no
credential ever reaches the spool. The directory and files are private to the agent (0700/0600).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections import deque
from typing import NamedTuple

from xtrace_agent.config import MEMORY_SPOOL_BYTES, SpoolConfig
from xtrace_agent.errors import AgentFailure

RESCUED = "rescued.sz"


class Block(NamedTuple):
    key: int
    body: bytes
    samples: int


class MemorySpool:
    """Blocks in memory: survives receiver outages, not agent restarts."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        # a quarter of the limit: eviction frees room in steps small enough to keep most of the spool
        self.block_limit = max(1, max_bytes // 4)
        self._blocks: deque[Block] = deque()
        self._seq = 0
        self.bytes = 0  # everything stored: blocks and rescued values
        self.rescued_bytes = 0
        self.samples = 0

    def __len__(self) -> int:
        return len(self._blocks)

    @property
    def persistent(self) -> bool:
        """Whether what it holds outlives the process (rescued values are saved on close, and replayed)."""
        return False

    def append(self, body: bytes, samples: int) -> list[Block]:
        """Add a block; returns the blocks evicted first to make room (this one if it can never fit)."""
        self._seq += 1
        block = Block(self._seq, body, samples)
        if len(body) > self.max_bytes - self.rescued_bytes:
            return [block]
        evicted = []
        while self.bytes + len(body) > self.max_bytes and self._blocks:
            evicted.append(self._pop())
        self._add(block)
        return evicted

    def evict_oldest(self) -> Block | None:
        """Remove and return the oldest block (to make room for the rescued values)."""
        return self._pop() if self._blocks else None

    def oldest(self) -> Block | None:
        return self._load(self._blocks[0]) if self._blocks else None

    def remove(self, key: int) -> None:
        if self._blocks and self._blocks[0].key == key:
            self._pop()

    def save_rescued(self, body: bytes) -> None:  # nothing outlives the process here
        pass

    def load_rescued(self) -> bytes | None:
        return None

    def clear_rescued(self) -> None:
        pass

    # storage hooks, replaced on disk -------------------------------------------------------
    def _add(self, block: Block) -> None:
        self._blocks.append(block)
        self.bytes += len(block.body)
        self.samples += block.samples

    def _pop(self) -> Block:
        block = self._load(self._blocks.popleft())
        self.bytes -= self._size(block)
        self.samples -= block.samples
        return block

    def _load(self, block: Block) -> Block:
        return block

    def _size(self, block: Block) -> int:
        return len(block.body)


class DiskSpool(MemorySpool):
    """Blocks as files in `path`: what an agent restart during an outage replays."""

    def __init__(self, path: str, max_bytes: int):
        super().__init__(max_bytes)
        self.path = path
        self._sizes: dict[int, int] = {}
        try:
            os.makedirs(path, mode=0o700, exist_ok=True)
            names = os.listdir(path)
        except OSError as e:
            raise AgentFailure(f"spool: cannot use directory {path}: {e.strerror}: set spool.path") from None
        found = []
        for name in names:
            full = os.path.join(path, name)
            stem, _, ext = name.partition(".")
            seq, _, samples = stem.partition("-")
            if ext == "sz" and seq.isdigit() and samples.isdigit():
                found.append((int(seq), int(samples), os.path.getsize(full)))
            elif name.endswith(".tmp"):
                os.unlink(full)  # a write cut short by a crash
        for seq, samples, size in sorted(found):
            self._blocks.append(Block(seq, b"", samples))
            self._sizes[seq] = size
            self.bytes += size
            self.samples += samples
            self._seq = seq
        rescued = os.path.join(path, RESCUED)
        if os.path.exists(rescued):
            self.rescued_bytes = os.path.getsize(rescued)
            self.bytes += self.rescued_bytes

    @property
    def persistent(self) -> bool:
        return True

    def _file(self, block: Block) -> str:
        return os.path.join(self.path, f"{block.key:020d}-{block.samples}.sz")

    def _write(self, name: str, body: bytes) -> None:
        tmp = name + ".tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(body)
        os.replace(tmp, name)

    def _add(self, block: Block) -> None:
        self._write(self._file(block), block.body)
        self._blocks.append(Block(block.key, b"", block.samples))  # bodies stay on disk
        self._sizes[block.key] = len(block.body)
        self.bytes += len(block.body)
        self.samples += block.samples

    def _load(self, block: Block) -> Block:
        if block.body:
            return block
        try:
            with open(self._file(block), "rb") as f:
                return block._replace(body=f.read())
        except FileNotFoundError:  # removed behind our back: an empty block sends nothing
            return block

    def _pop(self) -> Block:
        block = super()._pop()
        self._sizes.pop(block.key, None)
        try:
            os.unlink(self._file(block))
        except FileNotFoundError:
            pass
        return block

    def _size(self, block: Block) -> int:
        return self._sizes.get(block.key, len(block.body))

    def save_rescued(self, body: bytes) -> None:
        """Replace rescued.sz; the caller made room for `body` (bytes - rescued_bytes + len(body) fits).

        The old file goes first, so the two never sit on disk together: its values were loaded at
        start and are part of `body`."""
        self.clear_rescued()
        if body:
            self._write(os.path.join(self.path, RESCUED), body)
            self.rescued_bytes = len(body)
            self.bytes += len(body)

    def load_rescued(self) -> bytes | None:
        try:
            with open(os.path.join(self.path, RESCUED), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def clear_rescued(self) -> None:
        try:
            os.unlink(os.path.join(self.path, RESCUED))
        except FileNotFoundError:
            pass
        self.bytes -= self.rescued_bytes
        self.rescued_bytes = 0


def open_spool(cfg: SpoolConfig, name: str, url: str) -> MemorySpool:
    """The spool of one target: a directory of its own under `cfg.path` (named after the target and
    a digest of its redacted URL, so two targets never share one), or memory without a path."""
    if not cfg.path:
        return MemorySpool(min(cfg.max_bytes, MEMORY_SPOOL_BYTES))
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    return DiskSpool(os.path.join(cfg.path, f"{safe}-{digest}"), cfg.max_bytes)
