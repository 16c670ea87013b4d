"""What a step reads grows with what its rows can attend, not with the engine's max_len, its table width or its pool:
the widths of the gathers read off the jaxpr (as tests/test_attention_ops.py's windowed decode test), the outputs
against the masked references."""

import jax
import pytest


def _gathered_pages(fn, *args) -> list[int]:
    """Dimension 1 of every gather's output of rank >= 3 in fn's jaxpr ([B, pages, ps, ...] or [B, keys, K, D]): what a
    call reads per row."""
    def walk(jaxpr):
        for e in jaxpr.eqns:
            if e.primitive.name == "gather" and e.outvars[0].aval.ndim >= 3:
                yield e.outvars[0].aval.shape[1]
            for sub in e.params.values():
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from walk(inner)

    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


@pytest.mark.parametrize("num_pages,whole", [(1024, True), (40, False)])
def test_cudnn_engine_buckets_decode_keys_when_the_pool_is_narrower_than_the_table(num_pages, whole):
    """cuDNN's paged call takes the whole table only from a pool of at least the table's width in pages; from a smaller
    one paged_decode falls back to gathering every row's `num_keys` keys, so a runner handing it the whole table (an
    explicit num_pages below max_len's pages: 40 pages of 16 against 4,096 positions) read 4,096 keys per row each step
    for rows of 100 positions: it buckets them to the reach instead."""
    from jaxllm.random_model import random_model
    from jaxllm.serving.runner import Runner

    model = random_model("tiny")
    runner = Runner(model, num_pages=num_pages, page_size=16, max_seqs=4, max_len=4096, chunk=4, attention="cudnn",
                    eos_width=2)
    assert runner.decode_keys(100) == (4096 if whole else 256)
