"""Peer: data-juicer 1.6 as its users run it - ``dj-process --config`` with one
``document_deduplicator`` (MD5 of the text lower-cased with white space, digits and ASCII
punctuation removed: ``lowercase``, ``ignore_non_character``), ``np`` = every core; the kept rows it
exports are read back to name the removed ones."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _peer_common import args, datajuicer  # noqa: E402

src, dst, _ = args()
datajuicer(src, dst, {"document_deduplicator": {"lowercase": True, "ignore_non_character": True}})
