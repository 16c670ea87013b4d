"""The paged-KV serving core that jaxllm.engine ties together. The host decides, in plain Python:

  admission.py      which requests an engine takes: each checked against the model and the engine's sizes
  sequence.py       one request's state: tokens, status, page table, how many tokens are cached
  block_manager.py  the fixed pool of KV pages: reference counts and the prefix cache
  scheduler.py      each step's work: prefill chunks within a token budget, then the decode batch
                    (preempting the newest sequence when pages run out)
  ngram.py          speculative decoding's drafts: the tokens that followed a sequence's last n-gram before
                    (its host reference; the decode loop looks them up on the device: propose_rows)
  events.py         what an Event says of a sequence: its stop ids, finish reason, prompt scores, error

and the device computes (runner.py: the page pool and the jitted prefill / decode / speculative decode steps), from
`Sequence.pages` (page table) and `Sequence.num_cached`.
"""
