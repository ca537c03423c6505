"""Peer: rensa 0.5 at its documented best - bulk R-MinHash signatures (``RMinHash.from_token_sets``,
Rust, all cores), ``RMinHashLSH`` with ``num_bands`` bands of ``num_perm // num_bands`` rows, then the
keep-first loop over LSH candidates with rensa's own signature Jaccard as the check."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer_common import args, greedy_keep_first, read_texts, report, shingles, write_removed  # noqa: E402
from rensa import RMinHash, RMinHashLSH  # noqa: E402

src, dst, cfg = args()
bands, rows, thr = cfg.get("bands", 10), cfg.get("rows", 12), cfg.get("threshold", 0.7)
perm = bands * rows  # rensa needs num_perm divisible by num_bands: 10 bands x 12 rows = 120 slots
texts = read_texts(src)
sets = [shingles(t) for t in texts]
keep = [i for i, s in enumerate(sets) if s]
mh = RMinHash.from_token_sets([sets[i] for i in keep], num_perm=perm, seed=42)
lsh = RMinHashLSH(threshold=thr, num_perm=perm, num_bands=bands)
lsh.insert_pairs(list(enumerate(mh)))
cands = lsh.query_all(mh)
removed = greedy_keep_first(len(keep), lambda i: cands[i], lambda i, j: mh[i].jaccard(mh[j]) >= thr)
write_removed(dst, [keep[i] for i in removed])
report(rows=len(texts), removed=len(removed), band_rows=lsh.get_num_perm() // lsh.get_num_bands())
