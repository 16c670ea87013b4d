"""What a researcher asks of a model beyond generation, as pure jitted functions of
(graphdef, params, tokens): logits, per-token log-probabilities, the hidden states of every layer, and
one layer's attention weights. Each matches transformers' output (`output_hidden_states`,
`output_attentions` with eager attention); `LoadedModel` exposes them as methods, which also check
the ids' values. Here only what is known at trace time is checked (shapes, dtypes, the static layer
index): ids outside the vocabulary give unspecified values.

Token ids are [batch, seq], or one sequence [seq] whose results come without the batch axis (so
`jax.vmap` over a batch of sequences gives the batch's shapes).

Padded batches: `attention_mask` (keyword, the shape of the ids; 1 or True: a token, 0 or False:
padding, on the left, the right or both) as transformers takes it. Padding is hidden from every
token's attention, and positions count a row's tokens only (as transformers' generate sets
position_ids), so at a row's tokens the results are those of the row alone, unpadded, whatever
padding surrounds it; at padding positions they are unspecified (token_logprobs: 0 where a token
or the one before it is padding).
"""

from __future__ import annotations

import functools
import operator

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError, InputError
from jaxllm.models import quant, registry, weights
from jaxllm.models.attention import UNCACHED, Uncached
from jaxllm.sharding import replicated


def _merge(graphdef, params, tokens, attention_mask=None):
    """The module, `tokens` as an array (a list of ids is one) and `attention_mask` as a bool array
    (None: no padding), once their dtypes and shapes are known to fit the module: integer ids
    [B, T] with T within the positions a model with learned position embeddings has (GPT-2's table
    would be read past its end), a mask of their shape. A graphdef that is not one, or params of
    another model, are refused here rather than by flax (which prints the whole tree)."""
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
    check_params(cfg, weights.flat_params(nnx.state(model)))
    tokens = as_array(tokens)
    if tokens.ndim != 2 or tokens.shape[1] == 0:
        raise InputError(f"tokens must be [batch, seq] or [seq] with seq >= 1, got shape {tuple(tokens.shape)}")
    if not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise InputError(f"tokens must be integer token ids, got {tokens.dtype}: pass the tokenizer's ids (e.g. as int32)")
    # a table of positions (CTRL's sinusoids too: transformers' ends at n_positions)
    if cfg.position_embedding in ("learned", "sinusoidal_vaswani") and tokens.shape[1] > cfg.max_position_embeddings:
        what = "has learned" if cfg.position_embedding == "learned" else "has a table of"
        raise InputError(f"tokens of {tokens.shape[1]} positions exceed the {cfg.max_position_embeddings} positions "
                         f"this model {what}: give at most that many at once")
    if attention_mask is not None:
        attention_mask = as_array(attention_mask, "attention_mask")
        if attention_mask.shape != tokens.shape:
            raise InputError(f"attention_mask must have the shape of the token ids {tuple(tokens.shape)}, got "
                             f"{tuple(attention_mask.shape)}: 1 (or True) at each token, 0 at each padding position")
        if not (attention_mask.dtype == jnp.bool_ or jnp.issubdtype(attention_mask.dtype, jnp.integer)):
            raise InputError(f"attention_mask must hold 1 (or True) at each token and 0 at padding, as integers or bools; "
                             f"got {attention_mask.dtype}")
        check_mask_values(attention_mask)
        attention_mask = attention_mask != 0
    return model, tokens, attention_mask


def check_params(cfg, leaves: dict) -> None:
    """An InputError for params {path: leaf} whose leaves do not have the shapes the graphdef's config gives them (a tree
    of the same structure from another model: another width, vocabulary or head count, whose product failed deep inside
    with dot_general's TypeError, or whose logits came out over another vocabulary), or that hold integers where the
    model computes in floats (a tree cast with astype: a TypeError deep inside). A quantized kernel keeps its float
    shape and holds integers beside its scales, which a float model lacks and which are not compared."""
    expected = _float_shapes(cfg)
    if expected is None:
        return
    bad = [(path, leaf.shape, expected[path]) for path, leaf in leaves.items()
           if path in expected and tuple(leaf.shape) != expected[path]]
    if bad:
        path, shape, want = bad[0]
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise InputError(f"params do not fit graphdef: {'.'.join(map(str, path))} has shape {tuple(shape)}, this model's "
                         f"config gives {want}{more}: pass the params of the model the graphdef comes from (model.params, "
                         "or a tree of the same structure and shapes)")
    for path, leaf in leaves.items():
        if path in expected and not jnp.issubdtype(leaf.dtype, jnp.inexact) and not quant.scale_paths([path]) & leaves.keys():
            raise InputError(f"params hold {leaf.dtype} at {'.'.join(map(str, path))}, where the model computes in floats: "
                             "cast them to a float dtype (e.g. jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)); "
                             "for integer weights, load the model quantized (jaxllm.load(..., quantize='int8'))")


@functools.lru_cache(maxsize=16)
def _float_shapes(cfg) -> dict[tuple, tuple] | None:
    """{path: shape} of the float module `cfg` describes (abstract: nothing allocated), or None for a config of no
    registered architecture (a module built by hand)."""
    try:
        arch = registry.get(cfg.architecture)
    except ConfigError:
        return None
    module = arch.module(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0))
    return {path: tuple(leaf.shape) for path, leaf in weights.flat_params(nnx.state(module)).items()}


def as_array(tokens, what: str = "tokens"):
    """`tokens` (or an attention mask: `what`) as a JAX array; a nested list that is not one (rows
    of different lengths, values that are not numbers) is refused by name rather than by numpy's
    'inhomogeneous shape'."""
    try:
        return jnp.asarray(tokens)
    except OverflowError as err:
        raise InputError(f"{what} must be ids in the model's vocabulary ({str(err)[:120]}): check the tokenizer") from None
    except (ValueError, TypeError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:120]
        held = "integer token ids" if what == "tokens" else "0s and 1s (or bools)"
        raise InputError(f"{what} must be {held} in an array or a list of equally long lists ({first}): "
                         "pad the rows to one length, or score them one at a time") from None


def check_mask_values(mask) -> None:
    """An InputError for an attention mask holding other values than 0 and 1 (False and True): a 2 or -1 (ids passed
    as the mask?) counted as a token. Host-side: the methods call it; traced masks are not read."""
    if isinstance(mask, jax.core.Tracer) or mask.dtype == jnp.bool_:
        return
    bad = (mask != 0) & (mask != 1)
    if bool(bad.any()):
        where = tuple(int(i[0]) for i in jnp.nonzero(bad))
        raise InputError(f"attention_mask must hold 1 (or True) at each token and 0 at padding; it holds "
                         f"{int(mask[where])} at {list(where)}: pass the 0/1 mask the tokenizer gives, not the ids")


def _decoder(model, tokens, keep, trace=None):
    """(the decoder's output [B, T, E], positions [B, T], the KV backend) of ids [B, T], padded
    where `keep` is False (None: nowhere). Positions count each row's tokens (padding takes its
    row's last position, or 0 before the first token), so a row's tokens sit where they would alone."""
    if keep is None:
        positions, kv = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape), UNCACHED
    else:
        positions, kv = jnp.maximum(jnp.cumsum(keep, axis=1) - 1, 0), Uncached(keep)
    hidden, _ = model.model(tokens, positions, None, kv, trace=trace)
    return hidden, positions, kv


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


def _one_or_batch(fn, batch_axis=lambda x: 0):
    """`fn` of ids [B, T], also taking one sequence [T]: then its outputs lose the batch axis too
    ([T, vocab], [T - 1], [T, E] each, [heads, T, T]), as numpy functions keep the rank they are
    given, so that jax.vmap over a batch of sequences gives the batch's shapes. The attention mask
    of one sequence is [T] too. `batch_axis`: where an output's batch axis is (hidden states' third
    from last: Gemma 3n's are [streams, B, T, E])."""

    @functools.wraps(fn)
    def one_or_batch(graphdef, params, tokens, *args, attention_mask=None):
        tokens = as_array(tokens)
        if tokens.ndim != 1 or tokens.shape[0] == 0:  # _merge refuses every other shape by name
            return fn(graphdef, params, tokens, *args, attention_mask=attention_mask)
        if attention_mask is not None:
            attention_mask = as_array(attention_mask, "attention_mask")[None]
        return jax.tree.map(lambda x: jnp.take(x, 0, axis=batch_axis(x)), fn(graphdef, params, tokens[None], *args,
                                                                          attention_mask=attention_mask))

    return one_or_batch


@_one_or_batch
def logits(graphdef, params, tokens, *, attention_mask=None):
    """float32 [B, T, vocab] of a full sequence, no cache (tokens [T]: [T, vocab])."""
    model, tokens, keep = _merge(graphdef, params, tokens, attention_mask)
    return model.logits(_decoder(model, tokens, keep)[0])


@_one_or_batch
def token_logprobs(graphdef, params, tokens, *, attention_mask=None):
    """log p(tokens[:, t] | tokens[:, :t]) for t >= 1: float32 [B, T - 1] (0 where token t or
    t - 1 is padding)."""
    model, tokens, keep = _merge(graphdef, params, tokens, attention_mask)
    logp = jax.nn.log_softmax(model.logits(_decoder(model, tokens, keep)[0])[:, :-1], axis=-1)
    out = jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
    return out if keep is None else jnp.where(keep[:, 1:] & keep[:, :-1], out, 0.0)


@functools.partial(_one_or_batch, batch_axis=lambda x: x.ndim - 3)
def hidden_states(graphdef, params, tokens, *, attention_mask=None):
    """(num_layers + 1) arrays [B, T, E]: the input of each layer (its output where the model's transformers class
    records that: Mamba2), then the final normed output (Gemma 3n: [streams, B, T, E] each, AltUp's copies, the last
    the last layer's output, as transformers records them); of every other layer where two of ours are one of
    transformers' (LongCat-Flash: DecoderModel.hidden_every)."""
    model, tokens, keep = _merge(graphdef, params, tokens, attention_mask)
    trace = []
    _decoder(model, tokens, keep, trace)
    return tuple(map(model.model.traced, trace[:-1:model.model.hidden_every])) + (trace[-1],)


@_one_or_batch
def attention_weights(graphdef, params, tokens, layer: int, *, attention_mask=None):
    """Layer `layer`'s attention weights, float32 [B, heads, T, T] (row: query, column: key).
    A layer's attention input is its `input_layernorm` of the layer input (the input itself for
    layers without one, such as OLMo 2's), or its `attention_input` of the layer input and the layer's own input
    (DecoderModel.layer_inputs), where it has one. `layer` is static; negative ones count from the end."""
    model, tokens, keep = _merge(graphdef, params, tokens, attention_mask)
    layer = check_layer(model.cfg.num_layers, layer)
    if not model.cfg.layer_is_attention(layer):
        full = [i for i in range(model.cfg.num_layers) if model.cfg.layer_is_attention(i)]
        kind = f"a recurrent ({model.cfg.layer_mixer(layer)})" if model.cfg.layer_is_recurrent(layer) else "a feed-forward"
        pick = f"pick an attention layer ({', '.join(map(str, full))})" if full else "this model has no attention layer"
        raise InputError(f"layer {layer} is {kind} layer, which has no attention weights: {pick}")
    trace = []
    _, positions, kv = _decoder(model, tokens, keep, trace)
    decoder = model.model
    rot = decoder.rotaries(positions, trace[0].dtype).get(decoder.cfg.layer_rope(layer))

    def attention_input(i):
        return decoder.attention_input(i, trace, tokens, positions)

    # a layer reading another's keys (Gemma 4's shared kv layers): that layer's keys, same rope
    source = decoder.cfg.kv_source(layer)
    keys = None if source == layer else decoder.layers[source].self_attn.project(attention_input(source), positions, rot)[1]
    indexer = decoder.cfg.indexer
    if indexer is not None and indexer.source(layer) != layer:  # a sparse layer attending another's selection (GLM-5)
        source = indexer.source(layer)  # (Kolibri 1.1: another's pool, which that layer chose over the keys it reads)
        own = decoder.cfg.kv_source(source)
        keys_of_source = () if own == source else (decoder.layers[own].self_attn.project(attention_input(own), positions, rot)[1],)
        selected = decoder.layers[source].self_attn.select(attention_input(source), positions, rot, kv, *keys_of_source)
        return decoder.layers[layer].self_attn.weights(attention_input(layer), positions, rot, kv, keys, selected)
    return decoder.layers[layer].self_attn.weights(attention_input(layer), positions, rot, kv, keys)


@functools.lru_cache(maxsize=None)
def jitted(name: str, mesh=None):
    """The named function, jitted; with a mesh, its outputs are replicated so every process reads them."""
    functions = {"logits": logits, "token_logprobs": token_logprobs, "hidden_states": hidden_states, "attention_weights": attention_weights}
    if name not in functions:
        raise InputError(f"jitted({name!r}): there is no such function; name one of {', '.join(functions)}")
    fn = functions[name]
    static = (0, 3) if name == "attention_weights" else (0,)
    if mesh is None:
        return jax.jit(fn, static_argnums=static)
    return jax.jit(fn, static_argnums=static, out_shardings=replicated(mesh))
