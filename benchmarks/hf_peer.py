"""The transformers peer for `python -m jaxllm.bench --compare hf`: the same shapes with random
bf16 weights, static cache and transformers' automatic torch.compile. Kept outside the jaxllm
package so that the runtime never imports torch or transformers' model classes."""

import time

import torch
import transformers

from jaxllm.errors import JaxllmError
from jaxllm.random_model import SHAPES


def check_gpu() -> None:
    """--compare hf times transformers on a CUDA GPU: a one-line error where torch sees none."""
    if not torch.cuda.is_available():
        raise JaxllmError("--compare hf times transformers on a CUDA GPU, and this PyTorch sees none: run it on a GPU "
                          "machine with a CUDA build of torch, or drop --compare")


def start_device() -> None:
    """Start CUDA (when there is a GPU) before the load step's baseline is taken."""
    if torch.cuda.is_available():
        torch.zeros(1, device="cuda")


def load(path, dtype: str) -> str:
    """`from_pretrained` of the checkpoint folder onto the GPU (else the CPU), for the bench's
    load section; returns the device's name."""
    cuda = torch.cuda.is_available()
    transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype), device_map="cuda" if cuda else None)
    if cuda:
        torch.cuda.synchronize()
    return torch.cuda.get_device_name() if cuda else "cpu"


def bench_hf(shape: str, sizes: dict) -> dict:
    """Tokens/s at batch 1 and batch N, after two warm-up runs (compile, then settle)."""
    raw = dict(SHAPES[shape])
    arch = raw.pop("architectures")[0]
    model_type = {"Qwen3ForCausalLM": "qwen3", "LlamaForCausalLM": "llama"}[arch]
    config = transformers.AutoConfig.for_model(model_type, **raw)
    with torch.device("cuda"):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()

    def run(model, batch, prompt, new):
        ids = torch.randint(0, config.vocab_size, (batch, prompt), device="cuda")
        kw = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, cache_implementation="static")
        torch.cuda.synchronize()
        t = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), **kw)
        torch.cuda.synchronize()
        return time.perf_counter() - t

    out = {}
    for key, (b, p, n) in {"b1": (1, sizes["b1_prompt"], sizes["b1_new"]),
                           "bN": (sizes["bN"], sizes["bN_prompt"], sizes["bN_new"])}.items():
        run(model, b, p, n)
        run(model, b, p, n)  # compile, then settle
        out[f"{key}_tokens_per_s"] = b * n / run(model, b, p, n)
    del model
    torch.cuda.empty_cache()
    return out
