"""Writes the notebooks of this folder from the cell sources below (outputs stripped).

    python colab/build.py          # after editing a cell here; commit the .ipynb files it writes
    python colab/build.py OUT      # write them into OUT instead (the test compares)

Each notebook: a Colab badge, an install cell (runs only on Colab), a cell tagged `parameters`
(the CI test overrides it, papermill style), then the work. tests/test_notebooks.py runs them all.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat

REPO = "jaxllm/jaxllm"  # github.com/<REPO>: where the badge and the install cell point
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent


def badge(name: str) -> str:
    url = f"https://colab.research.google.com/github/{REPO}/blob/main/colab/{name}.ipynb"
    return f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]({url})"


INSTALL = f'''# On Colab: install jaxllm from its repository (and JAX for TPUs on a TPU runtime). Elsewhere this
# cell does nothing: there, install jaxllm yourself (pip install -e ".[gguf,notebooks]" in a checkout).
import os, subprocess, sys
if "google.colab" in sys.modules:
    on_tpu = os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ or "TPU_NAME" in os.environ
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *(["jax[tpu]"] if on_tpu else []),
                    "jaxllm[gguf,notebooks] @ git+https://github.com/{REPO}"], check=True)'''


def notebook(name: str, title: str, intro: str, params: str, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                   "language_info": {"name": "python"}, "accelerator": "TPU", "colab": {"provenance": []}}
    nb.cells.append(nbformat.v4.new_markdown_cell(f"# {title}\n\n{badge(name)}\n\n{intro}"))
    nb.cells.append(nbformat.v4.new_code_cell(INSTALL))
    nb.cells.append(nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}))
    for source in cells:
        kind = nbformat.v4.new_markdown_cell if source.startswith("##") else nbformat.v4.new_code_cell
        nb.cells.append(kind(source.strip("\n")))
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name[:12]}-{i:02d}"  # stable ids: rebuilding gives no diff
    nbformat.validate(nb)
    nbformat.write(nb, OUT / f"{name}.ipynb")


notebook(
    "quickstart", "jaxllm quickstart: chat with a small model",
    "Load a small instruct model from the Hugging Face hub, chat with it, stream the answer, and see "
    "how fast it decodes and how sure it was of each token. Runs on a TPU, GPU or CPU runtime.",
    '''# Parameters
MODEL = "HuggingFaceTB/SmolLM2-360M-Instruct"  # a hub id, a checkpoint folder or a .gguf file
DTYPE = "bfloat16"                              # float32 on CPU is more exact but slower
MESH = None                                     # None: one device; "auto": tensor-parallel over all
MAX_NEW_TOKENS = 128''',
    [
        '''
import time
import jax
import jaxllm
print(jax.devices())''',
        '''
start = time.perf_counter()
model = jaxllm.load(MODEL, dtype=DTYPE, mesh=MESH)
cfg = model.config
print(f"{cfg.architecture}: {cfg.num_layers} layers, hidden {cfg.hidden_size}, loaded in {time.perf_counter() - start:.1f}s")''',
        "## Ask one question\nGreedy decoding (temperature 0); the chat template comes from the checkpoint's tokenizer.",
        '''
greedy = jaxllm.SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
answer = model.generate("What is the capital of France?", greedy)
print(answer.text)''',
        "## Stream, and measure tokens per second\nAn `Engine` keeps its compiled steps, so the second call below measures decoding, not compiling.",
        '''
engine = jaxllm.Engine(model, batch_size=1, max_len=1024)
sampled = jaxllm.SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.7, top_p=0.9, seed=0, logprobs=True)
prompt = "Write a haiku about the sea."
model.generate(prompt, sampled, engine=engine)  # compiles
start = time.perf_counter()
out = model.generate(prompt, sampled, engine=engine, on_text=lambda i, text: print(text, end="", flush=True))
seconds = time.perf_counter() - start
print(f"\\n\\n{len(out.token_ids)} tokens in {seconds:.2f}s: {len(out.token_ids) / seconds:.1f} tokens/s (prompt {out.prompt_tokens} tokens)")''',
        "## A conversation\nEarlier turns go through the chat template too; `generate` also takes token ids.",
        '''
messages = [
    {"role": "user", "content": "Name a famous French painter."},
    {"role": "assistant", "content": "Claude Monet."},
    {"role": "user", "content": "What is one of his best-known paintings?"},
]
ids = model.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
print(model.generate(ids, greedy, engine=engine).text)''',
        "## How sure was the model of each token?\nThe probability of each token it sampled for the haiku above.",
        '''
import numpy as np
import matplotlib.pyplot as plt

words = [model.tokenizer.decode([t]) for t in out.token_ids]
fig, ax = plt.subplots(figsize=(min(14, 0.35 * len(words) + 2), 3))
ax.bar(range(len(words)), np.exp(out.logprobs))
ax.set_xticks(range(len(words)), [repr(w)[1:-1] for w in words], rotation=90, fontsize=7)
ax.set_ylabel("p(token)")
ax.set_title("probability of each sampled token")
plt.tight_layout()
plt.show()''',
    ],
)


notebook(
    "sharded_8b_tpu", "An 8B model over all TPU cores (tensor parallelism)",
    "Shard an 8-billion-parameter model over every core of the TPU runtime: each weight matrix is split "
    "over the `tp` mesh axis, so each core holds 1/N of the weights. We check that the model fits, show "
    "the memory on each device, and generate for a batch of prompts at once. In bfloat16 the weights take "
    "16 GB: a runtime with more TPU memory than that in all (a v6e-1's 32 GB, or 8 cores of a v2-8, v3-8 "
    "or v5e-8) holds them as they are. Where they do not fit (one v5e chip's 16 GB, or a T4-sized GPU) the "
    "fit check below quantizes them while loading: int8 (about 9 GB, a scale per 128 inputs) or, where "
    "that does not fit either, int4 (about 6.5 GB). Set `QUANTIZE` to choose yourself, or `MODEL` to a "
    "smaller model.",
    '''# Parameters
MODEL = "Qwen/Qwen3-8B"      # 8B parameters, Apache-2.0, not gated
DTYPE = "bfloat16"
MESH = "auto"                # every device on the tensor-parallel axis; or e.g. "dp=2,tp=4"; None: one device
QUANTIZE = None              # None: bfloat16 where it fits, else int8, else int4; or "int8" (about 9 GB for 8B) or "int4" (6.5 GB)
BATCH = 8                    # prompts decoded together
MAX_NEW_TOKENS = 64''',
    [
        '''
import time
import jax
import jaxllm
from jaxllm import sharding
from jaxllm.loader import prepare

mesh = sharding.make_mesh(MESH) if MESH else None
print(sharding.describe(mesh) if mesh is not None else f"one device: {jax.devices()[0]}")
for d in jax.devices():
    stats = d.memory_stats() or {}
    print(d, f"{stats['bytes_limit'] / 1e9:.1f} GB" if "bytes_limit" in stats else "(memory not reported)")''',
        "## Will it fit?\nThe config alone gives the bytes of the weights and of the KV cache; nothing is loaded yet. "
        "With `QUANTIZE = None` the first of bfloat16, int8 and int4 that fits is taken.",
        '''
n = mesh.devices.size if mesh is not None else 1
limits = [(d.memory_stats() or {}).get("bytes_limit") for d in jax.devices()]  # None where a device does not say
for QUANTIZE in [QUANTIZE] if QUANTIZE else [None, "int8", "int4"]:
    plan = prepare(MODEL, dtype=DTYPE, mesh=mesh, quantize=QUANTIZE)  # downloads the checkpoint on first use (16 GB for an 8B model)
    est = plan.memory(batch=BATCH, length=1024)
    per_device = (est["params_bytes"] + est["kv_cache_bytes"]) / n
    fits = not all(limits) or per_device <= 0.9 * min(limits)
    print(f"{QUANTIZE or DTYPE} weights {est['params_bytes'] / 1e9:.1f} GB + KV cache {est['kv_cache_bytes'] / 1e9:.2f} GB "
          f"= {per_device / 1e9:.2f} GB per device over {n} devices" + ("" if fits else ": does not fit"))
    if fits:
        break
else:
    raise SystemExit(f"{MODEL} needs {per_device / 1e9:.1f} GB per device but a device has {min(limits) / 1e9:.1f} GB: "
                     "choose a smaller MODEL or a runtime with more TPU memory")''',
        '''
start = time.perf_counter()
model = jaxllm.load(MODEL, dtype=DTYPE, mesh=mesh, quantize=QUANTIZE)
print(f"loaded and sharded in {time.perf_counter() - start:.1f}s")''',
        "## Memory on each device\nThe bytes of parameter shards that each device holds: about 1/N of the model each.",
        '''
import collections
import matplotlib.pyplot as plt

held = collections.Counter()
for leaf in jax.tree.leaves(model.params):
    for shard in leaf.addressable_shards:
        held[shard.device] += shard.data.nbytes
devices = sorted(held, key=lambda d: d.id)
total = sum(x.nbytes for x in jax.tree.leaves(model.params))
for d in devices:
    print(f"{d}: {held[d] / 1e9:.2f} GB of parameters")
print(f"model: {total / 1e9:.2f} GB; largest device share {max(held.values()) / total:.0%}")
plt.figure(figsize=(6, 2.5))
plt.bar([str(d.id) for d in devices], [held[d] / 1e9 for d in devices])
plt.xlabel("device")
plt.ylabel("GB of parameters")
plt.title(f"{MODEL} over {len(devices)} devices")
plt.tight_layout()
plt.show()''',
        "## Generate for a batch of prompts\nAll prompts share one compiled decode step; the KV cache is sharded like the attention heads.",
        '''
topics = ["the ocean", "a lighthouse", "autumn", "a city at night", "mountains", "the moon", "a library", "rain"]
prompts = [f"Write one sentence about {t}." for t in (topics * (BATCH // len(topics) + 1))[:BATCH]]
params = jaxllm.SamplingParams(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0)
engine = jaxllm.Engine(model, batch_size=BATCH, max_len=512)
model.generate(prompts, params, engine=engine)  # compiles
start = time.perf_counter()
outs = model.generate(prompts, params, engine=engine)
seconds = time.perf_counter() - start
for p, o in zip(prompts, outs):
    print(f"> {p}\\n{o.text.strip()}\\n")
new = sum(len(o.token_ids) for o in outs)
print(f"{new} new tokens for {len(prompts)} prompts in {seconds:.2f}s: {new / seconds:.1f} tokens/s")''',
    ],
)


notebook(
    "research_api", "jaxllm for research: logits, log-probabilities, hidden states, attention",
    "The library as a researcher uses it: everything is a pure function of the parameter pytree "
    "(`model.params`) and the module graph (`model.graphdef`), so you can `jax.jit`, `jax.vmap` or "
    "`jax.grad` your own functions over it. We score text, compare two continuations, look inside the "
    "layers (hidden states, a logit lens, one layer's attention), and ablate attention heads.",
    '''# Parameters
MODEL = "HuggingFaceTB/SmolLM2-360M-Instruct"
DTYPE = "float32"   # exact scores; bfloat16 halves the memory
MESH = None         # None: one device; "auto" or e.g. "tp=4": every function below runs sharded
LAYER = None        # the layer whose attention we plot (None: the middle one)''',
    [
        '''
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from flax import nnx

import jaxllm

model = jaxllm.load(MODEL, dtype=DTYPE, mesh=MESH)
tok = model.tokenizer
cfg = model.config
LAYER = cfg.num_layers // 2 if LAYER is None else LAYER
print(cfg.architecture, cfg.num_layers, "layers,", cfg.num_heads, "heads")''',
        "## Logits and per-token log-probabilities\n`model.logits(ids)` is `[batch, seq, vocab]`; "
        "`model.token_logprobs(ids)` gives log p(token t | the tokens before it).",
        '''
text = "The Eiffel Tower is in Paris, the capital of France. It was finished in 1889."
ids = tok(text)["input_ids"]
print("logits", model.logits([ids]).shape)
logp = np.asarray(model.token_logprobs([ids])[0])
words = [tok.decode([t]) for t in ids]
print(f"total log-probability {logp.sum():.2f} nats over {len(logp)} tokens")
fig, ax = plt.subplots(figsize=(12, 3))
ax.bar(range(1, len(ids)), logp)
ax.set_xticks(range(1, len(ids)), [repr(w)[1:-1] for w in words[1:]], rotation=90)
ax.set_ylabel("log p(token | prefix)")
ax.set_title("How surprising is each token?")
plt.tight_layout()
plt.show()''',
        "## Score two continuations\nThe log-probability of a continuation is the sum over its tokens.",
        '''
def continuation_logprob(prefix: str, continuation: str) -> float:
    head = tok(prefix)["input_ids"]
    full = tok(prefix + continuation)["input_ids"]
    assert full[: len(head)] == head, "the continuation changed how the prefix tokenizes"
    return float(model.token_logprobs([full])[0, len(head) - 1 :].sum())

prefix = "The capital of France is"
scores = {c: continuation_logprob(prefix, c) for c in (" Paris.", " Berlin.")}
for c, s in scores.items():
    print(f"{prefix!r} + {c!r}: {s:.2f} nats")
best = max(scores, key=scores.get)
print(f"the model prefers {best!r} by {abs(scores[' Paris.'] - scores[' Berlin.']):.2f} nats")''',
        "## Hidden states and a logit lens\n`model.hidden_states(ids)` returns each layer's input and the final "
        "output (as transformers' `output_hidden_states`). Passing each one through the final norm and the "
        "output head (a *logit lens*) shows at which depth the answer appears. The function below is our own, "
        "jitted over the parameter pytree.",
        '''
@jax.jit
def logit_lens(params, ids):
    """p(next token) at the last position, read out after every layer: [layers + 1, vocab]."""
    module = nnx.merge(model.graphdef, params)
    states = jaxllm.research.hidden_states(model.graphdef, params, ids)
    outs = [module.logits(module.model.norm(h[:, -1:])) for h in states[:-1]] + [module.logits(states[-1][:, -1:])]
    return jax.nn.softmax(jnp.concatenate(outs)[:, 0], axis=-1)

ids = jnp.asarray([tok(prefix)["input_ids"]])
hidden = model.hidden_states(ids)
probs = logit_lens(model.params, ids)
paris = tok(" Paris")["input_ids"][0]
fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3))
a.plot([float(jnp.linalg.norm(h[0, -1])) for h in hidden], marker="o")
a.set_xlabel("layer"); a.set_ylabel("norm of the last token's state"); a.set_title("hidden-state norm (last point: after the final norm)")
b.plot(np.asarray(probs[:, paris]), marker="o")
b.set_xlabel("layer"); b.set_ylabel("p(' Paris')"); b.set_title("logit lens")
plt.tight_layout()
plt.show()
print("final top-5:", [tok.decode([int(t)]) for t in jnp.argsort(-probs[-1])[:5]])''',
        "## Attention of one layer\n`model.attention_weights(ids, layer)` is `[batch, heads, query, key]`; here averaged over heads.",
        '''
ids = tok(text)["input_ids"]
att = np.asarray(model.attention_weights([ids], LAYER)[0]).mean(0)
labels = [repr(tok.decode([t]))[1:-1] for t in ids]
fig, ax = plt.subplots(figsize=(7, 6))
ax.imshow(att, cmap="viridis")
ax.set_xticks(range(len(ids)), labels, rotation=90, fontsize=7)
ax.set_yticks(range(len(ids)), labels, fontsize=7)
ax.set_title(f"layer {LAYER}, mean over {cfg.num_heads} heads (row: query, column: key)")
plt.tight_layout()
plt.show()''',
        "## Ablate each attention head (jit + vmap over the parameter pytree)\nZero one head's output "
        "projection in layer `LAYER` and measure how much log p(' Paris' | prefix) drops. One compiled "
        "function, vmapped over the head index.",
        '''
prompt = jnp.asarray([tok(prefix)["input_ids"]])

@jax.jit
def paris_logprob_without(params, head):
    module = nnx.merge(model.graphdef, params)
    kernel = module.model.layers[LAYER].self_attn.o_proj.kernel  # [hidden, heads, head_dim]
    kernel[...] = jnp.where(jnp.arange(kernel.shape[1])[None, :, None] == head, 0.0, kernel[...])
    logits, _ = module(prompt)
    return jax.nn.log_softmax(logits[0, -1])[paris]

base = float(jax.nn.log_softmax(model.logits(prompt)[0, -1])[paris])
drops = base - np.asarray(jax.vmap(paris_logprob_without, in_axes=(None, 0))(model.params, jnp.arange(cfg.num_heads)))
plt.figure(figsize=(6, 2.5))
plt.bar(range(cfg.num_heads), drops)
plt.xlabel(f"head of layer {LAYER}"); plt.ylabel("drop in log p(' Paris')")
plt.tight_layout()
plt.show()
print(f"log p(' Paris') = {base:.2f}; the most important head of layer {LAYER} is {int(np.argmax(drops))}")''',
    ],
)
