"""The host side of the paged-KV serving core: plain Python that decides, no arrays.

  sequence.py       one request's state: tokens, status, page table, how many tokens are cached
  block_manager.py  the fixed pool of KV pages: reference counts and the prefix cache
  scheduler.py      each step's work: prefill chunks within a token budget, or a decode batch
                    (preempting the newest sequence when pages run out)

The device runner reads `Sequence.pages` (page table) and `Sequence.num_cached` to build its
fixed-shape inputs; nothing here touches K/V or JAX.
"""
