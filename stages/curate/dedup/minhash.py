"""Near-duplicate detection: word 5-gram shingles, MinHash signatures, LSH banding, exact Jaccard.

Everything here is vectorised over a batch of texts (Arrow kernels and numpy), because tokenising
is the cost: Python shingle sets took 9-23 s for 44.7k questions on one core.

- normalise: casefold (Arrow's utf8_lower), every run of non-letters/digits -> one space.
- words are hashed once per distinct word of the batch (pandas' SipHash with its fixed key: the
  same on every machine and run), a shingle is a polynomial of its 5 word hashes (uint64); a text
  of fewer than 5 words is one shingle of all its words.
- MinHash: 128 permutations of the 32-bit folded shingle hash, x -> a*x + b mod 2**32 (a odd: a
  bijection) with a, b from a fixed seed; the signature is the minimum of each over the text.
- LSH: bands x rows (32 x 4 by default); two texts sharing all rows of a band are a candidate.
  (1 - (1 - s**4)**32 is 0.9996 at s = 0.7 and 0.55 at s = 0.4: few true pairs are missed.)
- A candidate pair is confirmed by its exact Jaccard of the 64-bit shingle hash sets.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

SHINGLE = 5
PERMUTATIONS_SEED = 20240521
# Buckets larger than this give candidate pairs (member, first member) instead of every pair: a
# bucket of m texts would otherwise cost m*(m-1)/2 exact checks.
BUCKET_ALL_PAIRS = 32
_NON_WORD = r"[^\pL\pN]+"
_P = np.uint64(0x100000001B3)           # FNV prime: the shingle polynomial's base


def normalize(texts: pa.Array) -> pa.Array:
    """Case folded, every run of characters that are not letters or digits one space, trimmed."""
    low = pc.utf8_lower(texts)
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(low, _NON_WORD, " "))


def question_texts(batch: pa.RecordBatch | pa.Table) -> pa.Array:
    """Title and body, the text a question is compared on."""
    title = pc.fill_null(batch.column("title"), "")
    body = pc.fill_null(batch.column("body"), "")
    return pc.binary_join_element_wise(title, body, "\n")


def _words(norm: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(hash of every word in order, offsets of each text's words)."""
    # An empty text splits into one empty word: as null it has none.
    lists = pc.utf8_split_whitespace(pc.if_else(pc.equal(norm, ""), pa.scalar(None, pa.string()), norm))
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    offsets = lists.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    flat = lists.flatten()
    if len(flat) == 0:
        return np.zeros(0, np.uint64), offsets
    enc = flat.dictionary_encode()
    words = enc.dictionary.to_numpy(zero_copy_only=False).astype(object)
    return pd.util.hash_array(words, categorize=False)[enc.indices.to_numpy()], offsets


def shingle_hashes(norm: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(64-bit hash of every word 5-gram of every text, offsets of each text's shingles).

    A text of 1-4 words has one shingle (all its words); an empty text has none."""
    h, offsets = _words(norm)
    lens = np.diff(offsets)
    counts = np.where(lens >= SHINGLE, lens - SHINGLE + 1, np.minimum(lens, 1))
    out_offsets = np.zeros(len(lens) + 1, np.int64)
    np.cumsum(counts, out=out_offsets[1:])
    s = np.zeros(int(out_offsets[-1]), np.uint64)
    with np.errstate(over="ignore"):
        if len(h) >= SHINGLE:      # every window of the word stream, then the ones inside a text
            n = len(h) - SHINGLE + 1
            win = h[:n].copy()
            for k in range(1, SHINGLE):
                win *= _P
                win += h[k:n + k]
            win += np.uint64(SHINGLE)
            long_ = lens >= SHINGLE
            text_of = np.repeat(np.flatnonzero(long_), counts[long_])
            first = out_offsets[:-1][text_of]
            s_pos = first + (np.arange(len(text_of)) - np.repeat(np.cumsum(counts[long_]) - counts[long_],
                                                                 counts[long_]))
            s[s_pos] = win[offsets[:-1][text_of] + (s_pos - first)]
        for t in np.flatnonzero((lens > 0) & (lens < SHINGLE)).tolist():   # short texts: rare
            v = np.uint64(0)
            for w in h[offsets[t]:offsets[t + 1]]:
                v = v * _P + w
            s[out_offsets[t]] = v + np.uint64(lens[t])   # + width: unlike a 5-gram that starts alike
    return s, out_offsets


def permutations(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The fixed (a, b) of n permutations x -> a*x + b mod 2**32."""
    rng = np.random.default_rng(PERMUTATIONS_SEED)
    a = (rng.integers(0, 2**32, n, dtype=np.uint64) | np.uint64(1)).astype(np.uint32)
    b = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32)
    return a, b


def signatures(shingles: np.ndarray, offsets: np.ndarray, n_perm: int) -> np.ndarray:
    """MinHash signatures (texts x n_perm, uint32); a text with no shingle gets all 2**32-1
    (never a candidate: see candidates())."""
    a, b = permutations(n_perm)
    x = (shingles >> np.uint64(32)).astype(np.uint32) ^ shingles.astype(np.uint32)
    n = len(offsets) - 1
    sig = np.full((n, n_perm), np.iinfo(np.uint32).max, np.uint32)
    block = 8192                      # shingles per step: the (block x n_perm) matrix stays in cache
    m = np.empty((block, n_perm), np.uint32)
    lo = 0
    while lo < n:
        # texts lo..hi whose shingles fit one block (at least one text, however long)
        hi = max(int(np.searchsorted(offsets, offsets[lo] + block, side="right")) - 1, lo + 1)
        s0, s1 = offsets[lo], offsets[hi]
        sig[lo:hi] = _block_minimum(x[s0:s1], offsets[lo:hi + 1] - s0, a, b, m, sig[lo:hi])
        lo = hi
    return sig


def _block_minimum(x: np.ndarray, offs: np.ndarray, a: np.ndarray, b: np.ndarray, m: np.ndarray,
                   current: np.ndarray) -> np.ndarray:
    if len(x) > len(m):
        m = np.empty((len(x), len(a)), np.uint32)
    mm = m[:len(x)]
    np.multiply(x[:, None], a[None, :], out=mm)
    np.add(mm, b[None, :], out=mm)
    has = np.diff(offs) > 0
    out = current.copy()
    if has.any():
        out[has] = np.minimum.reduceat(mm, offs[:-1][has], axis=0)
    return out


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """One 64-bit key per text and band (texts x bands): the band's rows hashed together."""
    n = sig.shape[0]
    keys = np.zeros((n, bands), np.uint64)
    with np.errstate(over="ignore"):
        for r in range(rows):
            col = sig[:, np.arange(bands) * rows + r].astype(np.uint64)     # row r of every band
            keys = (keys ^ col) * np.uint64(0x9E3779B97F4A7C15)
            keys ^= keys >> np.uint64(29)
    return keys


def candidates(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """Candidate pairs (i < j, rows of sig) sharing a band, each once, sorted (k x 2, int64).
    Texts with no shingle are never candidates."""
    empty = (sig == np.iinfo(np.uint32).max).all(axis=1)
    keys = band_keys(sig, bands, rows)
    found = []
    live = np.flatnonzero(~empty)
    for band in range(bands):
        k = keys[live, band]
        order = np.argsort(k, kind="stable")
        ks = k[order]
        edge = np.flatnonzero(np.diff(ks) != 0) + 1
        starts = np.concatenate([[0], edge])
        ends = np.concatenate([edge, [len(ks)]])
        for s, e in zip(starts[ends - starts > 1].tolist(), ends[ends - starts > 1].tolist()):
            members = np.sort(live[order[s:e]])
            found.append(_bucket_pairs(members))
    if not found:
        return np.zeros((0, 2), np.int64)
    pairs = np.concatenate(found)
    return np.unique(pairs, axis=0)


def _bucket_pairs(members: np.ndarray) -> np.ndarray:
    m = len(members)
    if m > BUCKET_ALL_PAIRS:
        return np.stack([np.full(m - 1, members[0]), members[1:]], axis=1)
    i, j = np.triu_indices(m, 1)
    return np.stack([members[i], members[j]], axis=1)


def shingle_sets(norm: pa.Array) -> list[np.ndarray]:
    """Each text's distinct shingle hashes, sorted (for exact Jaccard)."""
    s, offsets = shingle_hashes(norm)
    return [np.unique(s[offsets[i]:offsets[i + 1]]) for i in range(len(offsets) - 1)]


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    """Exact Jaccard of two sorted distinct shingle-hash arrays (two empty sets: 0)."""
    if not len(a) and not len(b):
        return 0.0
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / (len(a) + len(b) - inter)
