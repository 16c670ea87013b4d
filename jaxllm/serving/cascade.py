"""Host side of cascade decode: which pages the rows of a decode call share, read once for all of
them (models/paged_decode.py cascade_decode_attention does the reading). The engine asks `plan`
before each decode call; the runner passes what it returns to its jitted step."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jaxllm.serving.runner import bucket


class Cascade(NamedTuple):
    """How a decode call reads a prefix that its rows share (`plan`)."""

    keys: tuple[int, int, bool]  # (shared_keys, suffix_keys, some rows do not share): the program's static sizes
    table: np.ndarray  # [dp, shared_keys / page_size] each shard's shared pages, local ids (trash page past them)
    offsets: np.ndarray  # [B] the keys each slot reads from its shard's shared pages (0: none)


def _common_pages(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    return next((i for i in range(n) if a[i] != b[i]), n)


def plan(runner, rows: dict[int, tuple[list[int], int]], steps: int, force: bool = False) -> Cascade | None:
    """Cascade attention for a decode call of `runner` (its page size, shards, slots and
    kernels) over `rows` (slot -> (its pages, its next write position)) running up to `steps`
    steps. In each dp shard the largest group of rows (two
    or more) whose tables begin with the same page shares the full pages they all begin with
    and the call does not write: those keys are read once for the group, then each member's
    own keys; the other rows read their tables as without a cascade. None when no rows share
    a page, or (unless `force`) when that would not halve the keys the call reads."""
    ps, per_shard = runner.page_size, {}
    for slot, (pages, written) in rows.items():
        if pages:
            per_shard.setdefault(slot // runner.shard_seqs, {}).setdefault(pages[0], []).append(slot)
    offsets, tables = np.zeros(runner.max_seqs, np.int32), {}
    for shard, groups in per_shard.items():
        members = max(groups.values(), key=len)
        if len(members) < 2:
            continue
        first = rows[members[0]][0]
        n = min(min(rows[slot][1] // ps, _common_pages(first, rows[slot][0])) for slot in members)
        if n:
            tables[shard] = np.asarray(first[:n], np.int64) - shard * runner.shard_pages
            offsets[members] = n * ps
    if not tables:
        return None
    ends = {slot: written + 1 + steps for slot, (_, written) in rows.items()}  # positions reached by the call
    sharing = [slot for slot in rows if offsets[slot]]
    others = [slot for slot in rows if not offsets[slot]]
    width = min(bucket(max(len(t) for t in tables.values()), max(1, 256 // ps)), runner.width)
    keys = (width * ps, runner.kv_bucket(max(ends[slot] - offsets[slot] for slot in sharing)), bool(others))
    if not force:  # keys read per step, plain and cascaded
        if runner.whole_table:  # cuDNN's kernels read each row's own length, the shared keys once
            plain = sum(ends.values())
            cascaded = max(map(len, tables.values())) * ps + sum(ends[slot] - offsets[slot] for slot in rows)
        else:  # the gathered form: every slot reads the bucket of the longest
            plain = runner.max_seqs * runner.decode_keys(max(ends.values()))
            cascaded = plain * bool(others) + keys[0] + runner.max_seqs * keys[1]
        if 2 * cascaded > plain:
            return None
    table = np.full((runner.shards, width), runner.shard_pages, np.int32)
    for shard, pages in tables.items():
        table[shard, : len(pages)] = pages
    return Cascade(keys, table, offsets)

