"""xdp/keyindex.py: kernel keys -> rows in arrays. Never a wrong row: a key is found under the
row it was indexed with, or not at all (-1), whatever the hashes collide on and however rows are
dropped and reused; with real hashes every indexed key is found."""

import random

import numpy as np

from xtrace_agent.xdp.keyindex import KeyIndex, hash_words, words_of

KEY = np.dtype([("ifindex", "<u4"), ("src", "S16"), ("dst", "S16"), ("ports", "<u4"), ("rest", "<u4"),
                ("qp", "<u4")])  # 48 bytes, as struct flow_key


def keys(ids: list[int]) -> np.ndarray:
    out = np.zeros(len(ids), KEY)
    out["ifindex"] = [i % 3 + 1 for i in ids]
    out["src"] = [i.to_bytes(16, "little") for i in ids]
    out["ports"] = [i * 7919 % 65536 for i in ids]
    return out


def test_words_pad_odd_widths_and_hashes_tell_keys_apart():
    odd = np.zeros(3, np.dtype([("a", "<u4"), ("b", "u1")]))
    odd["a"], odd["b"] = [1, 2, 3], [9, 9, 9]
    w = words_of(odd)
    assert w.shape == (3, 1) and w[:, 0].tolist() == [1 | 9 << 32, 2 | 9 << 32, 3 | 9 << 32]
    many = words_of(keys(list(range(50_000))))
    assert many.shape == (50_000, 6) and len(np.unique(hash_words(many))) == 50_000


def test_random_adds_drops_and_reuse_match_a_dict_and_collisions_only_hide_keys():
    rng = random.Random(7)
    for weak in (False, True):  # weak: hashes of 3 bits, so different keys collide all the time
        index, expected = KeyIndex(), {}
        free = list(range(200))
        for _ in range(60):
            ids = rng.sample(range(400), rng.randint(0, 60))
            k = keys(ids)
            w = words_of(k)
            h = w[:, 0] % np.uint64(8) if weak else hash_words(w)
            rows = index.find(h, w).tolist()
            for key, row in zip(ids, rows, strict=True):
                if weak and row == -1:
                    continue  # a collision hides a key; it is never found under another row
                assert row == expected.get(key, -1), (weak, key)
            new = [i for i, (key, row) in enumerate(zip(ids, rows, strict=True)) if row == -1 and key not in expected]
            given = []
            for i in new:  # rows dropped just before may be handed out again at once
                if not free:
                    break
                given.append(i)
                expected[ids[i]] = free.pop(0)
            at = np.asarray(given, np.int64)
            index.add(h[at], w[at], np.asarray([expected[ids[i]] for i in given], np.int64))
            for key in rng.sample(sorted(expected), min(len(expected), rng.randint(0, 12))):
                row = expected.pop(key)
                index.drop_row(row)
                free.insert(0, row)  # the next flow takes the row of the one that stopped
        if not weak:
            assert len(index) == len(expected)


def test_a_dropped_row_given_to_a_new_flow_keeps_none_of_the_old_keys():
    index = KeyIndex()
    old, new = keys([1, 2]), keys([3])
    wo, wn = words_of(old), words_of(new)
    index.add(hash_words(wo), wo, np.array([5, 6]))
    assert index.find(hash_words(wo), wo).tolist() == [5, 6]
    index.drop_row(5)
    index.add(hash_words(wn), wn, np.array([5]))  # row 5 reused before anything settled
    assert index.find(hash_words(wo), wo).tolist() == [-1, 6]
    assert index.find(hash_words(wn), wn).tolist() == [5]
    index.clear()
    assert index.find(hash_words(wn), wn).tolist() == [-1] and len(index) == 0


def test_rows_dropped_before_any_key_was_indexed_are_nothing_to_drop():
    """Flows the dict path made (Accumulator.add) retire before add_table() ever indexed a key."""
    index = KeyIndex()
    index.drop_row(3)
    w = words_of(keys([1, 2]))
    assert index.find(hash_words(w), w).tolist() == [-1, -1] and len(index) == 0
    index.add(hash_words(w), w, np.array([3, 4]))
    assert index.find(hash_words(w), w).tolist() == [3, 4]
