"""Kernel flow keys -> accumulator rows, in arrays: how a steady interval finds its flows' rows.

A drained key is a fixed-width record (48 bytes for struct flow_key); here it is its words (uint64,
`words_of`) and a 64-bit hash of them (`hash_words`). The index holds the keys it was given, their
full words and rows, and an open-addressing table (linear probing, at most half full) of entry
numbers by hash: all keys probe together, one array operation per probe step (about two steps at
that load), then one comparison of the whole words; no Python step per key. (A searchsorted over
sorted hashes costs about four times as much at 100k keys: its binary searches miss the cache.)
The comparison makes a hash collision harmless: a key whose hash another key already holds is
never indexed and takes the slow path (decoded, looked up by FlowId) each time, as a new key does.

Changes wait until the next find(): keys added and rows dropped in one interval cost one sort
then, not one per flow; a row dropped and then given new keys is settled first, so a reused row
never keeps the keys of the flow it held before.
"""

from __future__ import annotations

import numpy as np

# odd 64-bit multipliers, one per key word (a key longer than eight words reuses them in turn)
_MULTIPLIERS = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93,
                         0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53, 0x94D049BB133111EB, 0xBF58476D1CE4E5B9],
                        np.uint64)
_FOLD, _MIX, _FOLD2 = np.uint64(32), np.uint64(0xBF58476D1CE4E5B9), np.uint64(29)


def words_of(keys: np.ndarray) -> np.ndarray:
    """Fixed-width records (any dtype) as a C-contiguous uint64 array [n, words], zero-padded to 8 bytes."""
    size = keys.dtype.itemsize
    raw = np.ascontiguousarray(keys).view(np.uint8).reshape(len(keys), size)
    if size % 8:
        padded = np.zeros((len(keys), size + 8 - size % 8), np.uint8)
        padded[:, :size] = raw
        raw = padded
    return raw.view(np.uint64)


def hash_words(words: np.ndarray) -> np.ndarray:
    """A 64-bit hash per row: the words times odd multipliers summed (mod 2**64, one einsum), then
    folded and mixed so that every bit reaches the low bits the table's slots are taken from."""
    multipliers = np.resize(_MULTIPLIERS, words.shape[1])
    h = np.einsum("nw,w->n", words, multipliers)
    h ^= h >> _FOLD
    h *= _MIX
    h ^= h >> _FOLD2
    return h


class KeyIndex:
    """Rows by kernel key (words and hash as `words_of`/`hash_words` make them)."""

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self._hash = np.zeros(0, np.uint64)  # per entry: its key's hash, words and row
        self._words: np.ndarray | None = None
        self._rows = np.zeros(0, np.int64)
        self._slots = np.full(1, -1, np.int64)  # the table: entry number or -1, a power of two long
        self._added: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._dropped: set[int] = set()

    def __len__(self) -> int:
        self._settle()
        return len(self._hash)

    def find(self, hashes: np.ndarray, words: np.ndarray) -> np.ndarray:
        """The row of every key (-1 for a key not indexed), as an int64 array."""
        self._settle()
        n = len(hashes)
        entry = np.full(n, -1, np.int64)
        if not len(self._hash) or not n:
            return entry
        slots, known, size = self._slots, self._hash, len(self._slots)
        home = (hashes & np.uint64(size - 1)).astype(np.int64)
        e = slots[home]  # -1 (empty) indexes the last entry: a "hit" there still gives entry -1
        hit = known[e] == hashes
        entry = np.where(hit, e, -1)
        todo = np.flatnonzero((e >= 0) & ~hit)  # met another key's slot: probe on
        step = 1
        while len(todo):
            e = slots[(home[todo] + step) & (size - 1)]
            hit = known[e] == hashes[todo]
            entry[todo[hit]] = e[hit]
            todo = todo[(e >= 0) & ~hit]
            step += 1
        void = np.dtype((np.void, words.shape[1] * 8))  # the whole key compared as one value
        alike = (entry >= 0) & (self._words.view(void).ravel()[entry] == words.view(void).ravel())
        return np.where(alike, self._rows[entry], -1)

    def add(self, hashes: np.ndarray, words: np.ndarray, rows: np.ndarray) -> None:
        """Index keys (none already indexed) under their rows, from the next find() on."""
        if not len(rows):
            return
        if self._dropped and not self._dropped.isdisjoint(rows.tolist()):
            self._settle()  # a dropped row that holds a new flow: its old keys go first
        self._added.append((hashes, words, rows))

    def drop_row(self, row: int) -> None:
        """Forget every key of a row (its flow stopped)."""
        self._dropped.add(row)

    def _settle(self) -> None:
        if not self._added and not self._dropped:
            return
        hashes, rows = self._hash, self._rows
        words = self._words
        if words is None and not self._added:  # rows dropped from an empty index: nothing to drop
            self._dropped = set()
            return
        if self._added:
            parts = [(hashes, words, rows)] if words is not None else []
            parts += self._added
            hashes, words, rows = (np.concatenate(c) for c in zip(*parts, strict=True))
        if self._dropped:
            kept = ~np.isin(rows, np.fromiter(self._dropped, np.int64, len(self._dropped)))
            hashes, words, rows = hashes[kept], words[kept], rows[kept]
        # of keys sharing a hash the first indexed stays (the others are never found)
        _, first = np.unique(hashes, return_index=True)
        first.sort()
        self._hash, self._words, self._rows = hashes[first], words[first], rows[first]
        self._added, self._dropped = [], set()
        self._slots = self._table(self._hash)

    @staticmethod
    def _table(hashes: np.ndarray) -> np.ndarray:
        """The probe table of these (distinct) hashes: each entry in the first free slot from its
        hash on; several entries wanting one free slot: one takes it, the others probe on."""
        size = 1 << max(4, (2 * len(hashes)).bit_length())  # more than twice the entries
        slots = np.full(size, -1, np.int64)
        todo = np.arange(len(hashes))
        at = (hashes & np.uint64(size - 1)).astype(np.int64)
        while len(todo):
            free = slots[at] < 0
            slots[at[free]] = todo[free]  # of entries wanting one slot, one write lands
            placed = slots[at] == todo
            todo, at = todo[~placed], (at[~placed] + 1) & (size - 1)
        return slots
