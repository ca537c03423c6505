"""Peer: datasketch 2.0 at its documented best - ``MinHash.bulk`` signatures on every core (a
``multiprocessing`` pool over chunks), ``MinHashLSH(params=(bands, rows))``, then the keep-first
loop (query, and insert the row only when it is kept) with datasketch's signature Jaccard as the check."""

from __future__ import annotations

import os
import sys
from multiprocessing import Pool

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from _peer_common import args, read_texts, report, shingles, write_removed  # noqa: E402
from datasketch import LeanMinHash, MinHash, MinHashLSH  # noqa: E402

PERM = 128


def sign(texts: list[str]) -> tuple[np.ndarray, str]:
    sets = [[s.encode() for s in shingles(t)] for t in texts]
    ms = MinHash.bulk(sets, num_perm=PERM)
    return np.stack([m.hashvalues for m in ms]), ms[0].scheme


if __name__ == "__main__":
    src, dst, cfg = args()
    bands, rows, thr = cfg.get("bands", 10), cfg.get("rows", 12), cfg.get("threshold", 0.7)
    texts = read_texts(src)
    procs = os.cpu_count() or 1
    step = max(1, -(-len(texts) // (procs * 4)))
    with Pool(procs) as pool:
        parts = pool.map(sign, [texts[i:i + step] for i in range(0, len(texts), step)])
    hv, scheme = np.concatenate([p[0] for p in parts]), parts[0][1]
    lsh = MinHashLSH(num_perm=PERM, params=(bands, rows))
    removed = []
    for i in range(len(texts)):
        m = LeanMinHash(seed=1, hashvalues=hv[i], scheme=scheme)
        if any((hv[j] == hv[i]).mean() >= thr for j in lsh.query(m)):  # = LeanMinHash.jaccard
            removed.append(i)
        else:
            lsh.insert(i, m, check_duplication=False)
    write_removed(dst, removed)
    report(rows=len(texts), removed=len(removed), processes=procs)
