"""Reference models: transformers' PyTorch implementation with seeded random weights, saved as a
Hugging Face checkpoint folder that jaxllm then loads. Tests only: the run-time package never
imports torch or transformers' model classes. With them, what the parity tests share: the tolerance, the
tokens, the rope kinds, and decoding through the paged cache."""

from __future__ import annotations

import copy

import numpy as np
import torch
import transformers
from flax import nnx

from jaxllm.models import registry
from jaxllm.models.attention import LayerCache, PagedCache
from jaxllm.models.mixers import layer_parts, state_shape
from jaxllm.models.recurrent import zero_state

TOL = 1e-4  # max |ours - ref| <= TOL * max |ref|, float32

TOKENS = np.random.default_rng(0).integers(0, 128, (2, 20))  # longer than Mistral's tiny window (8)

ROPE_KINDS = {
    "linear": {"rope_type": "linear", "factor": 2.0},
    "dynamic": {"rope_type": "dynamic", "factor": 2.0},
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8},
}

# transformers' Emu3ForCausalLM saves model_type "emu3_text_model", whose config class its AutoModelForCausalLM does not
# map (it maps Emu3Config, the multimodal one): the tests build and reload such checkpoints through the auto class;
# so does MllamaForCausalLM's "mllama_text_model" (it maps MllamaConfig)
transformers.AutoModelForCausalLM.register(transformers.Emu3TextConfig, transformers.Emu3ForCausalLM, exist_ok=True)
transformers.AutoModelForCausalLM.register(transformers.MllamaTextConfig, transformers.MllamaForCausalLM, exist_ok=True)


def hf_config(arch_name: str, **overrides):
    arch = registry.get(arch_name)
    # a copy: config classes fill nested settings in place (Phi3Config, BambaConfig: rope_parameters), which would
    # change the registry's tiny config for every later test in the process
    values = dict(copy.deepcopy(arch.tiny_config), architectures=[arch_name], **overrides)
    return transformers.AutoConfig.for_model(arch.hf_model_type, **values)


def randomize(model: torch.nn.Module, seed: int) -> None:
    """Weights large enough that every path matters (default init leaves logits near zero):
    norms near 1, everything else N(0, 0.15)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32)
            # a norm's weight: its module's name (or its list's: StableLM's norms.0) says norm; not every module below
            # one named so (DBRX's attention inside norm_attn_norm, whose ~1 weights would make its q/k/v ill-conditioned)
            if any("norm" in part for part in name.split(".")[-3:-1]) or "ln" in name.split(".")[-2:][0]:
                p.copy_(1.0 + 0.1 * noise)
            else:
                p.copy_(0.15 * noise)


def build(arch_name: str, folder, seed: int = 0, **overrides):
    """Save a seeded random HF model to `folder`; return the (eval-mode, float32) torch model."""
    torch.manual_seed(seed)
    config = hf_config(arch_name, **overrides)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    randomize(model, seed)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    return model


def torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens), dtype=torch.long)).logits.float().numpy()


def continuation_logprobs(model, prompt: list[int], tokens: list[int]) -> np.ndarray:
    """transformers' log-probabilities, float64 [len(tokens), vocab], at each position of `tokens` after `prompt`:
    one forward over both (teacher-forced, no cache)."""
    logits = torch_logits(model, [prompt + tokens])[0, len(prompt) - 1 : -1].astype(np.float64)
    return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


def assert_greedy(logp: np.ndarray, tokens: list[int], tol: float) -> np.ndarray:
    """Each of `tokens` is the most likely one by `logp` (continuation_logprobs), a near-tie within `tol` either way;
    returns the tokens' log-probabilities."""
    chosen = logp[np.arange(len(tokens)), tokens]
    wrong = np.flatnonzero(chosen < logp.max(-1) - tol).tolist()
    assert not wrong, f"greedy tokens {tokens}: not transformers' most likely at generated positions {wrong}"
    return chosen


def greedy(model, prompt: list[int], n: int) -> list[int]:
    """transformers' greedy continuation of `prompt`: exactly `n` new token ids, no EOS."""
    with torch.no_grad():
        ids = torch.tensor([prompt])  # an explicit mask: without one, transformers takes id 0 (the pad id) for padding
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def max_rel_diff(ours, ref) -> float:
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


def fused_experts(tensors: dict) -> dict:
    """Per-expert tensors (experts.{j}.gate_proj.weight, ...) fused as transformers' Qwen3_5MoeExperts holds
    them: experts.gate_up_proj [X, 2F, hidden] (each expert's gate rows, then up rows), experts.down_proj [X, hidden, F]."""
    out, groups = {}, {}
    for name, tensor in tensors.items():
        head, sep, tail = name.partition(".experts.")
        if not sep:
            out[name] = tensor
            continue
        j, proj, _ = tail.split(".")
        groups.setdefault(head, {}).setdefault(proj, {})[int(j)] = tensor
    for head, projs in groups.items():
        count = len(projs["down_proj"])
        out[head + ".experts.gate_up_proj"] = torch.stack([torch.cat([projs["gate_proj"][j], projs["up_proj"][j]]) for j in range(count)])
        out[head + ".experts.down_proj"] = torch.stack([projs["down_proj"][j] for j in range(count)])
    return out


def cached_decode_error(model, seq, full) -> float:
    """Prefill 6 tokens of `seq` [2, 20] into pages of 4 (a scrambled page table), then decode 14
    one at a time: the largest relative difference of any step's logits from the no-cache forward's
    `full` over the same prefix (the prefix passes Mistral's window of 8)."""
    cfg = model.config
    shapes = [None if kv is None else (13, 4) + kv for kv in map(cfg.kv_shape, range(cfg.num_layers))]  # 12 pages and the trash page
    cache = [None if s is None else LayerCache(np.zeros(s, np.float32), np.zeros(s, np.float32)) for s in shapes]
    # a recurrent layer's state instead (or beside its pages: Falcon-H1): a row per sequence (row b's is row b); a sparse
    # attention layer's indexer key pages beside its keys and values
    recurrent = (state_shape(cfg, i) for i in range(cfg.num_layers))
    index = (None if x is None else np.zeros((13, 4) + x, np.float32) for x in map(cfg.index_shape, range(cfg.num_layers)))
    cache = [layer_parts(c, None if r is None else zero_state(r, 2, np.float32), x) for c, r, x in zip(cache, recurrent, index)]
    table = np.asarray([[7, 2, 9, 0, 4], [1, 11, 3, 8, 5]], np.int32)
    positions = np.broadcast_to(np.arange(6), (2, 6))
    # one compiled call per shape (prefill, decode), as the engine runs them, not op by op
    step = nnx.jit(lambda m, ids, pos, cache, kv: (lambda h, c: (m.logits(h), c))(*m.hidden(ids, pos, cache, kv)))
    logits, cache = step(model.module, seq[:, :6], positions, cache, PagedCache(table, np.ones((2, 6), bool), 20))
    worst = max_rel_diff(logits, full[:, :6])
    for t in range(6, 20):
        kv = PagedCache(table, np.ones((2, 1), bool), 20)
        logits, cache = step(model.module, seq[:, t : t + 1], np.full((2, 1), t), cache, kv)
        worst = max(worst, max_rel_diff(logits[:, 0], full[:, t]))
    return worst
