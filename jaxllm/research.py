"""What a researcher asks of a model beyond generation, as pure jitted functions of
(graphdef, params, tokens): logits, per-token log-probabilities, the hidden states of every layer, and
one layer's attention weights. Each matches transformers' output (`output_hidden_states`,
`output_attentions` with eager attention); `LoadedModel` exposes them as methods, which also check
the ids' values. Here only what is known at trace time is checked (shapes, dtypes, the static layer
index): ids outside the vocabulary give unspecified values.

Token ids are [batch, seq], or one sequence [seq] whose results come without the batch axis (so
`jax.vmap` over a batch of sequences gives the batch's shapes).
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import InputError
from jaxllm.sharding import replicated


def _positions(tokens):
    return jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)


def _merge(graphdef, params, tokens):
    """The module and `tokens` as an array (a list of ids is one), once its dtype and shape are known
    to fit the module: integer ids [B, T] with T within the positions a model with learned position
    embeddings has (GPT-2's table would be read past its end). A graphdef that is not one, or
    params of another model, are refused here rather than by flax (which prints the whole tree)."""
    if not isinstance(graphdef, nnx.GraphDef):
        raise InputError(f"graphdef must be model.graphdef (an nnx.GraphDef), got {type(graphdef).__name__}: "
                         "pass (model.graphdef, model.params, tokens)")
    try:
        model = nnx.merge(graphdef, params)
    except ValueError as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise InputError(f"params do not fit graphdef ({first}): pass the params of the model the graphdef comes "
                         "from (model.params, or a tree of the same structure)") from None
    cfg = model.cfg
    tokens = _as_array(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise InputError(f"tokens must be [batch, seq] or [seq] with seq >= 1, got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise InputError(f"tokens must be integer token ids, got {tokens.dtype}: pass the tokenizer's ids (e.g. as int32)")
    if cfg.position_embedding == "learned" and tokens.shape[1] > cfg.max_position_embeddings:
        raise InputError(f"tokens of {tokens.shape[1]} positions exceed the {cfg.max_position_embeddings} positions "
                         "this model has learned: give at most that many at once")
    return model, tokens


def _as_array(tokens):
    """`tokens` as a JAX array; a nested list that is not one (rows of different lengths, values
    that are not numbers) is refused by name rather than by numpy's 'inhomogeneous shape'."""
    try:
        return jnp.asarray(tokens)
    except OverflowError as err:
        raise InputError(f"tokens must be ids in the model's vocabulary ({str(err)[:120]}): check the tokenizer") from None
    except (ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:120]
        raise InputError(f"tokens must be integer token ids in an array or a list of equally long lists ({first}): "
                         "pad the rows to one length, or score them one at a time") from None


def check_layer(num_layers: int, layer) -> int:
    """`layer` as an index in [0, num_layers) (negative ones count from the end), or an InputError:
    it must be a whole number (numpy and JAX integer scalars too) known before tracing."""
    if isinstance(layer, jax.core.Tracer):
        raise InputError("layer is traced: it picks a module, so jit attention_weights with static_argnums=(0, 3) "
                         "(graphdef and layer), as jaxllm.research.jitted('attention_weights') does")
    if isinstance(layer, bool) or not hasattr(type(layer), "__index__") or getattr(layer, "ndim", 0):
        raise InputError(f"layer must be a whole number (a layer's index), got {layer!r}")
    layer = operator.index(layer)
    if not -num_layers <= layer < num_layers:
        raise InputError(f"layer {layer} does not exist: this model has layers 0..{num_layers - 1}")
    return layer % num_layers


def _one_or_batch(fn):
    """`fn` of ids [B, T], also taking one sequence [T]: then its outputs lose the batch axis too
    ([T, vocab], [T - 1], [T, E] each, [heads, T, T]), as numpy functions keep the rank they are
    given, so that jax.vmap over a batch of sequences gives the batch's shapes."""

    @functools.wraps(fn)
    def one_or_batch(graphdef, params, tokens, *args, **kwargs):
        tokens = _as_array(tokens)
        if tokens.ndim != 1 or tokens.shape[0] == 0:  # _merge refuses every other shape by name
            return fn(graphdef, params, tokens, *args, **kwargs)
        return jax.tree.map(lambda x: x[0], fn(graphdef, params, tokens[None], *args, **kwargs))

    return one_or_batch


@_one_or_batch
def logits(graphdef, params, tokens):
    """float32 [B, T, vocab] of a full sequence, no cache (tokens [T]: [T, vocab])."""
    model, tokens = _merge(graphdef, params, tokens)
    out, _ = model(tokens)
    return out


@_one_or_batch
def token_logprobs(graphdef, params, tokens):
    """log p(tokens[:, t] | tokens[:, :t]) for t >= 1: float32 [B, T - 1]."""
    tokens = _as_array(tokens)
    logp = jax.nn.log_softmax(logits(graphdef, params, tokens)[:, :-1], axis=-1)
    return jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]


@_one_or_batch
def hidden_states(graphdef, params, tokens):
    """(num_layers + 1) arrays [B, T, E]: the input of each layer, then the final normed output."""
    model, tokens = _merge(graphdef, params, tokens)
    trace = []
    model.model(tokens, _positions(tokens), trace=trace)
    return tuple(trace)


@_one_or_batch
def attention_weights(graphdef, params, tokens, layer: int):
    """Layer `layer`'s attention weights, float32 [B, heads, T, T] (row: query, column: key).
    A layer's attention input is its `input_layernorm` of the layer input (the input itself for
    layers without one, such as OLMo 2's). `layer` is static; negative ones count from the end."""
    model, tokens = _merge(graphdef, params, tokens)
    layer = check_layer(model.cfg.num_layers, layer)
    trace = []
    positions = _positions(tokens)
    model.model(tokens, positions, trace=trace)
    decoder = model.model
    block = decoder.layers[layer]
    x = trace[layer]
    norm = getattr(block, "input_layernorm", None)
    if norm is not None:
        x = norm(x)
    rot = decoder.rotaries(positions, x.dtype).get(decoder.cfg.layer_rope(layer))
    return block.self_attn.weights(x, positions, rot)


@functools.lru_cache(maxsize=None)
def jitted(name: str, mesh=None):
    """The named function, jitted; with a mesh, its outputs are replicated so every process reads them."""
    fn = {"logits": logits, "token_logprobs": token_logprobs, "hidden_states": hidden_states, "attention_weights": attention_weights}[name]
    static = (0, 3) if name == "attention_weights" else (0,)
    if mesh is None:
        return jax.jit(fn, static_argnums=static)
    return jax.jit(fn, static_argnums=static, out_shardings=replicated(mesh))
