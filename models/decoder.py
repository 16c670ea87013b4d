"""The decoder most families share: embeddings, a stack of layers, a final norm and an output head
(or tied embeddings), and its weight map in transformers' Llama naming.

A family with its own layer (Gemma 2's sandwich norms, OLMo 2's post-norms, GPT-NeoX) subclasses
`CausalLM` and sets `layer_cls`; a family that differs only by config flags uses `CausalLM` as is.
Every layer is called as layer(x, positions, rot, cache, kv) -> (x, cache), `kv` being the
attention's KV backend (models/attention.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from jaxllm.models.attention import UNCACHED, Attention, LayerCache, Uncached
from jaxllm.models.config import ModelConfig
from jaxllm.models.experts import make_mlp
from jaxllm.models.layers import Dense, Embed, LayerNorm, RMSNorm, SinusoidalPositions, param
from jaxllm.models.mixers import MIXERS, mixer_cls
from jaxllm.models.rope import rotary
from jaxllm.models.transforms import Copy, Linear, Part
from jaxllm.models.weights import WeightSpec


class DecoderLayer(nnx.Module):
    """x + attn(input_norm(x)), then x + mlp(post_attention_norm(x)); the norms are `norm_cls`'s, the
    feed-forward block make_mlp's. With cfg.parallel_residual, x + attn(input_norm(x)) + mlp(...) off
    the input norm (Phi, GPT-J, Cohere, StableLM, Falcon-7B), or off the post-attention norm of x where
    cfg.parallel_mlp_norm (GPT-NeoX, Falcon's ln_mlp); a layer without that norm has none.
    The attention is `attn_cls`'s (DeepSeek's latent attention: models/mla.py)."""

    norm_cls = RMSNorm
    attn_cls = Attention
    # A layer that takes a value from the layer before it and hands one on (called with it as its last argument, it
    # returns (x, cache, value)): GLM-5's sparse attention selection, which its shared layers reuse (models/sparse_attention.py)
    carries = False

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        norm = norm_kwargs(cfg, dtype, rngs, self.norm_cls)
        self.input_layernorm = self.norm_cls(cfg.hidden_size, cfg.norm_eps, **norm)
        # a recurrent layer (Qwen3-Next's gated DeltaNet, LFM2's short conv) mixes tokens by its recurrent mixer
        # in place of attention, under the attribute transformers names it by (models/mixers.py)
        # (MiniMax's lightning attention under self_attn itself)
        mixer = mixer_cls(cfg, layer)
        attention = cfg.layer_is_attention(layer)
        if attention:
            self.self_attn = self.attn_cls(cfg, layer, dtype=dtype, rngs=rngs)
        elif mixer is None or mixer.attr != "self_attn":  # a None attribute nnx would keep static: not where a mixer goes
            self.self_attn = None
        # Falcon-H1: a recurrent mixer beside the attention on the same input (cfg.parallel_mixer), the two branches summed
        # times attn_out_scale and mamba_out_scale; the layer's cache the pair (attention's, mixer's)
        parallel = MIXERS[cfg.parallel_mixer] if cfg.parallel_mixer and attention else None
        mixer = mixer or parallel
        self.mixer, self.parallel_mixer = None if mixer is None else mixer.attr, parallel is not None
        self.branch_scales = (cfg.attn_out_scale, cfg.mamba_out_scale)
        if mixer is not None:
            setattr(self, mixer.attr, mixer(cfg, layer, dtype=dtype, rngs=rngs))
        # a layer of one block (cfg.feed_forward_layers: Nemotron-H, Mamba2) is x + block(input_layernorm(x)), its
        # block the token mixer or the feed-forward alone
        self.mixes, feeds = cfg.layer_has_mixer(layer), cfg.layer_has_mlp(layer)
        own = (not cfg.parallel_residual or cfg.parallel_mlp_norm) and self.mixes and feeds
        self.post_attention_layernorm = self.norm_cls(cfg.hidden_size, cfg.norm_eps, **norm) if own else None
        self.mlp = make_mlp(cfg, layer, dtype=dtype, rngs=rngs) if feeds else None
        self.parallel = cfg.parallel_residual

    def mix(self, h, positions, rot, cache, kv):
        """The layer's token mixing of its normed input h: attention, its recurrent mixer, or both -> (output, cache)."""
        if self.parallel_mixer:
            pages, state = (None, None) if cache is None else cache
            attn, pages = self.self_attn(h, positions, rot, pages, kv)
            mixed, state = getattr(self, self.mixer)(h, positions, state, kv)
            out = attn * self.branch_scales[0] + mixed * self.branch_scales[1]
            return out, None if cache is None else (pages, state)
        if self.mixer is not None:
            return getattr(self, self.mixer)(h, positions, cache, kv)
        return self.self_attn(h, positions, rot, cache, kv)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        h = x if self.input_layernorm is None else self.input_layernorm(x)  # None: a subclass's layer without it (ModernBERT's first)
        if not self.mixes:
            return x + self.mlp(h), cache
        attn, cache = self.mix(h, positions, rot, cache, kv)
        if self.mlp is None:
            return x + attn, cache
        if self.parallel:
            return x + attn + self.mlp(h if self.post_attention_layernorm is None else self.post_attention_layernorm(x)), cache
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, cache


class LayerNormDecoderLayer(DecoderLayer):
    """The shared layer with LayerNorms (weight and bias) in place of its RMSNorms."""

    norm_cls = LayerNorm


@functools.partial(jax.jit, static_argnums=0)
def _call_layer(graphdef, state, x, positions, rot, cache, kv, *extra):
    """A layer as a nested jit: layers of one structure (most models: all of them) share one
    trace, where inlining them traced each again. Tracing 30 layers of the default model took
    ~3 s of every start, compile cache warm (2-core CPU); XLA inlines the call, so the compiled
    program is the same. `extra`: the layer's own input beside x, where the model has one
    (DecoderModel.layer_inputs)."""
    return nnx.merge(graphdef, state)(x, positions, rot, cache, kv, *extra)


def norm_kwargs(cfg: ModelConfig, dtype, rngs, norm_cls=None) -> dict:
    """Keyword arguments of a layer's norm: RMSNorm takes the model's offset/upcast flags, a LayerNorm
    neither weight nor bias where the model's norms have none (cfg.norm_affine)."""
    if norm_cls not in (None, RMSNorm):
        return dict(dtype=dtype, rngs=rngs) if cfg.norm_affine else dict(dtype=dtype, rngs=rngs, weight=False, bias=False)
    return dict(dtype=dtype, rngs=rngs, offset=cfg.norm_offset, upcast_scale=cfg.norm_upcast_scale, bias=cfg.norm_bias)


def position_embeddings(cfg: ModelConfig, dtype, rngs):
    """The module adding absolute positions to the embeddings (cfg.position_embedding): a learned
    table of max_position_embeddings + position_offset rows, fixed sinusoidal rows, or None (rotary)."""
    if cfg.position_embedding == "learned":
        return Embed(cfg.max_position_embeddings + cfg.position_offset, cfg.hidden_size, dtype=dtype, rngs=rngs)
    if cfg.position_embedding == "sinusoidal":
        return SinusoidalPositions(cfg.hidden_size, cfg.pad_token_id, dtype)
    if cfg.position_embedding == "sinusoidal_vaswani":
        return SinusoidalPositions(cfg.hidden_size, None, dtype, vaswani=True)
    return None


class DecoderModel(nnx.Module):
    # what `trace` records of the layers: each one's input (transformers' hidden states for most families), or each
    # one's output (Mamba's: its first hidden state is the first layer's output, not the embeddings)
    trace_outputs = False
    # True: the last hidden state `trace` records is the last layer's output ([streams, B, T, E]: transformers' Gemma 3n),
    # not the final norm's
    trace_streams = False
    # transformers' hidden states: the trace's every hidden_every-th layer input, then the final output (LongCat-Flash:
    # one of its layers is two of ours); the trace itself holds every layer's (research.attention_weights reads them)
    hidden_every = 1

    def __init__(self, cfg: ModelConfig, layer_cls=DecoderLayer, *, dtype, rngs: nnx.Rngs, final_norm=None):
        self.cfg = cfg
        e, width = cfg.hidden_size, cfg.embed_dim or cfg.hidden_size
        self.embed_tokens = Embed(cfg.vocab_size, width, dtype=dtype, rngs=rngs, scale=cfg.embed_scale,
                                  exact_scale=cfg.embed_scale_exact, quantizable=True)
        # a token embedding narrower or wider than the layers (OPT-350m): projected in and out, without biases
        projected = dict(bias=False, dtype=dtype, rngs=rngs, quantizable=False)
        self.project_in = Dense((width,), (e,), ("word_embed", "embed"), **projected) if width != e else None
        self.embed_positions = position_embeddings(cfg, dtype, rngs)
        norm_cls, norm = final_norm or RMSNorm, norm_kwargs(cfg, dtype, rngs, final_norm)
        # BLOOM's word_embeddings_layernorm: the embeddings through a norm of the final norm's class
        self.embed_norm = norm_cls(e, cfg.norm_eps, **norm) if cfg.embed_norm else None
        # a layer class that shares modules with earlier layers (Zamba2's blocks, Dory's loops, HRM's stacks) says so
        # (shares_modules); its layers then get one dict, `shared`, of what the layers before them built to share
        shared = {"shared": {}} if getattr(layer_cls, "shares_modules", False) else {}
        self.layers = nnx.List([layer_cls(cfg, i, dtype=dtype, rngs=rngs, **shared) for i in range(cfg.num_layers)])
        eps = cfg.norm_eps if cfg.final_norm_eps is None else cfg.final_norm_eps
        self.norm = norm_cls(e, eps, **norm) if cfg.final_norm else None
        self.project_out = Dense((e,), (width,), ("embed", "word_embed"), **projected) if width != e else None

    def __call__(self, tokens, positions, cache=None, kv=UNCACHED, lengths=None, trace: list | None = None):
        """tokens, positions [B, T] -> hidden [B, T, E], and per-layer caches from the KV backend
        `kv` (Uncached: the call's own keys; PagedCache with a cache). `lengths` [B]:
        the real length of each row when positions run past it (padded prefill); see `rotary`.
        `trace`: a list that receives each layer's input (its output where trace_outputs) and then the final
        (normed) output (the last layer's where trace_streams), as transformers' hidden_states."""
        if (cache is None) != isinstance(kv, Uncached):
            raise ValueError("a cache goes with its KV backend (PagedCache), no cache with Uncached")
        x = self.embed(tokens, positions)
        rots = self.rotaries(positions, x.dtype, lengths)
        inputs = self.layer_inputs(tokens, x)
        x = self.streams_in(x)
        new_cache, carry = [], None
        for i, layer in enumerate(self.layers):
            if trace is not None and not self.trace_outputs:
                trace.append(x)
            # a layer reading another's keys and values gets that layer's new cache (and keeps none); one writing
            # another's pages (kv_pool) gets them too, and hands them back written
            source, pool = self.cfg.kv_source(i), self.cfg.kv_pool(i)
            c = new_cache[source] if source != i else new_cache[pool] if pool != i else None if cache is None else cache[i]
            rot, extra = rots.get(self.cfg.layer_rope(i)), () if inputs is None else (inputs[:, :, i],)
            extra += (carry,) if getattr(layer, "carries", False) else ()  # not every layer class is a DecoderLayer
            if trace is None:  # one trace per distinct layer, not per layer (see _call_layer)
                graphdef, state = nnx.split(layer)
                x, c, *passed = _call_layer(graphdef, state, x, positions, rot, c, kv, *extra)
            else:
                x, c, *passed = layer(x, positions, rot, c, kv, *extra)
            carry = passed[0] if passed else carry
            if pool != i:
                new_cache[pool], c = c, None
            new_cache.append(c)
            if trace is not None and self.trace_outputs:
                trace.append(x)
        if trace is not None and self.trace_streams:
            trace.append(x)
        x = self.streams_out(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.project_out is not None:
            x = self.project_out(x)
        if trace is not None and not self.trace_streams:
            trace.append(x)
        return x, new_cache

    def embed(self, tokens, positions):
        """tokens, positions [B, T] -> the embeddings [B, T, E] the layers (and layer_inputs) start from: looked up,
        projected in, absolute positions added, normed, as the model has them."""
        x = self.embed_tokens(tokens)
        if self.project_in is not None:
            x = self.project_in(x)
        if self.embed_positions is not None:  # the engine's positions of each sequence, offset into the table
            x = x + self.embed_positions(positions + self.cfg.position_offset)
        return x if self.embed_norm is None else self.embed_norm(x)

    def attention_input(self, i: int, trace: list, tokens, positions):
        """What layer i's attention reads in a full forward over tokens, positions [B, T], given `trace` (each layer's
        input, as __call__ records it): its input_layernorm of its input (or the input itself where it has none),
        or the layer's own attention_input (Gemma 3n: more than its norm; Zamba2: its own input beside x too)."""
        own = getattr(self.layers[i], "attention_input", None)
        if own is not None:
            inputs = self.layer_inputs(tokens, self.embed(tokens, positions))
            return own(trace[i], *(() if inputs is None else (inputs[:, :, i],)))
        norm = getattr(self.layers[i], "input_layernorm", None)
        return trace[i] if norm is None else norm(trace[i])

    def streams_in(self, x):
        """The embeddings [B, T, E] -> what the layers pass on: x itself, or several copies of the hidden state
        ([streams, B, T, E]: Gemma 3n's AltUp), which streams_out makes one again before the final norm."""
        return x

    def streams_out(self, x):
        return x

    def traced(self, x):
        """A layer's input as transformers records it among the hidden states, of what the layers pass on: x itself
        (Gemma 3n's streams too), or part of it (HRM's running state beside the two it carries: models/hrm.py)."""
        return x

    def layer_inputs(self, tokens, x):
        """Each layer's own input beside the hidden states, [B, T, layers, ...] (Gemma 4's per-layer
        embeddings), passed to layer i as its last argument; None: the layers take none."""
        return None

    def rotaries(self, positions, dtype, lengths=None) -> dict:
        """One cos/sin table per distinct rope of the layers (Gemma 3's local and global differ);
        none for learned positions, nor for layers without rotary positions (SmolLM3's NoPE layers,
        whose layer_rope is None), nor for ALiBi's position biases. Layer i uses rotaries.get(cfg.layer_rope(i)): None
        for those."""
        if self.cfg.position_embedding != "rope":
            return {}
        ropes = {self.cfg.layer_rope(i) for i in range(len(self.layers))} - {None}
        dtype = jnp.float32 if self.cfg.rope_float32 else dtype
        return {rope: rotary(self.cfg, positions, dtype, rope, lengths) for rope in ropes}


class CausalLM(nnx.Module):
    """The shared `ForCausalLM` shape: a decoder model and an output head (or tied embeddings).
    A family with its own decoder layer subclasses this and sets `layer_cls`."""

    layer_cls = DecoderLayer
    model_cls = DecoderModel  # a family whose layers take inputs of their own subclasses it (DecoderModel.layer_inputs)
    final_norm = None  # RMSNorm unless a family sets another norm class

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cfg = cfg
        self.model = self.model_cls(cfg, self.layer_cls, dtype=dtype, rngs=rngs, final_norm=self.final_norm)
        if cfg.tie_word_embeddings:  # tied: no head, or the head's bias alone (cfg.head_bias; nnx.data: a None head is static)
            self.lm_head = nnx.data(nnx.Dict(bias=param((cfg.vocab_size,), ("vocab_out",), dtype))) if cfg.head_bias else None
        else:
            self.lm_head = Dense((cfg.embed_dim or cfg.hidden_size,), (cfg.output_vocab,), ("embed", "vocab_out"), bias=cfg.head_bias,
                                 dtype=dtype, rngs=rngs, table=True)

    def hidden(self, tokens, positions, cache: list[LayerCache] | None = None, kv=UNCACHED, lengths=None):
        return self.model(tokens, positions, cache, kv, lengths)

    def head(self, hidden):
        """hidden [B, T, E] -> logits [B, T, V] (V: cfg.output_vocab) in the model's dtype: the output head, or the tied
        embeddings (plus the head's bias where the model has one)."""
        if isinstance(self.lm_head, Dense):
            return self.lm_head(hidden)
        logits = self.model.embed_tokens.attend(hidden)
        return logits if self.lm_head is None else logits + self.lm_head["bias"][...]

    def logits(self, hidden):
        """hidden [B, T, E] -> float32 logits [B, T, V]: times logit_scale (Cohere, HyperCLOVAX,
        Falcon-H1's lm_head_multiplier), divided by
        logits_divisor (Granite), tanh soft-capped where the model says so."""
        out = self.head(hidden).astype(jnp.float32)
        out = out if self.cfg.logit_scale == 1.0 else out * self.cfg.logit_scale
        out = out if self.cfg.logits_divisor == 1.0 else out / self.cfg.logits_divisor
        cap = self.cfg.final_softcap
        return out if cap is None else jnp.tanh(out / cap) * cap

    def __call__(self, tokens, positions=None, cache=None):
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
        hidden, cache = self.hidden(tokens, positions, cache)
        return self.logits(hidden), cache


def normed_causal_lm(norm_cls, name: str) -> type[CausalLM]:
    """The shared `CausalLM` (named `name`) with `norm_cls` as the class of every norm, its layers' and its
    final one: OLMo's LayerNorm without parameters, DBRX's without bias, NanoChat's RMSNorm without weight."""
    layer = type(name.replace("ForCausalLM", "DecoderLayer"), (DecoderLayer,), {"norm_cls": norm_cls})
    return type(name, (CausalLM,), {"layer_cls": layer, "final_norm": norm_cls})


def fused_weight_map(cfg: ModelConfig, fused: dict, base=None) -> list[WeightSpec]:
    """`base`'s map (decoder_weight_map by default) with some of each layer's weights and biases read as rows of one
    fused checkpoint tensor: `fused` maps our tensor ("mlp.gate_proj") to (the fused HF tensor "mlp.gate_up_proj", the
    row it starts at, the fused tensor's rows) (Phi-3's qkv_proj and gate_up_proj, GLM's gate_up_proj, Param2's
    query_key_value)."""
    specs = []
    for spec in (base or decoder_weight_map)(cfg):
        parts = spec.hf_names[0].split(".")
        ours = ".".join(parts[3:5]) if len(parts) == 6 and parts[0] == "model" and parts[1] == "layers" else None
        if ours not in fused:
            specs.append(spec)
            continue
        name, offset, total = fused[ours]
        specs.append(WeightSpec(".".join(parts[:3] + [name, parts[5]]), spec.path, Part(offset, total, spec.transform)))
    return specs


def model_ends(cfg: ModelConfig, embed: str, norm: str, head: str = "lm_head.weight") -> list[WeightSpec]:
    """The specs outside the layers of a family with LayerNorms: the token embedding `embed`, the final
    norm (`norm`.weight and .bias), untied the output head `head`, and its bias where cfg.head_bias
    (kept when the head is tied: Phi, GPT-J), as decoder_weight_map reads it."""
    specs = [WeightSpec(embed, ("model", "embed_tokens", "embedding"))]
    specs += [WeightSpec(f"{norm}.{p}", ("model", "norm", p)) for p in ("weight", "bias")]
    specs += [] if cfg.tie_word_embeddings else [WeightSpec(head, ("lm_head", "kernel"), Linear())]
    return specs + [WeightSpec("lm_head.bias", ("lm_head", "bias"))] if cfg.head_bias else specs


def dense(hf: str, path: tuple, transform=Linear(), bias: bool = True) -> list[WeightSpec]:
    """The specs of one projection: `hf`.weight into `path`'s kernel through `transform`, and where
    `bias`, `hf`.bias into its bias (a flat one into [heads, head_dim] where ours is that)."""
    specs = [WeightSpec(f"{hf}.weight", path + ("kernel",), transform)]
    return specs + [WeightSpec(f"{hf}.bias", path + ("bias",), Copy(flatten=True))] if bias else specs


def fused_rows(hf_name: str, parts: list[tuple]) -> list[WeightSpec]:
    """The specs of one checkpoint tensor whose rows are several parameters' one after another (`parts`: (our path,
    its rows in the tensor, the transform reading them), in order): each through `Part` of those rows (LaraMini's
    in_proj, rows q | k | v | z | b | a: the first `ByHead`, the others `Linear`)."""
    total, offset, specs = sum(rows for _, rows, _ in parts), 0, []
    for path, rows, inner in parts:
        specs.append(WeightSpec(hf_name, path, Part(offset, total, inner)))
        offset += rows
    return specs


def renamed(specs: list[WeightSpec], names: dict) -> list[WeightSpec]:
    """`specs` with each checkpoint name's module `.{ours}.` read as `.{theirs}.`, and a name ending in `.{ours}` (a
    bare parameter: Flint's self_attn.sinks) as ending in `.{theirs}` (`names` {ours: theirs}, applied in order): a
    family whose checkpoints name a module their own way (Apertus' attention_layernorm, HunYuan's query_layernorm)."""
    def rename(name):
        for ours, theirs in names.items():
            name = name.replace(f".{ours}.", f".{theirs}.")
            name = name.removesuffix(f".{ours}") + f".{theirs}" if name.endswith(f".{ours}") else name
        return name

    return [WeightSpec(tuple(map(rename, s.hf_name)) if isinstance(s.hf_name, tuple) else rename(s.hf_name), s.path, s.transform)
            for s in specs]


def with_norm_biases(specs: list[WeightSpec]) -> list[WeightSpec]:
    """`specs`, each norm's weight (an HF name ending in norm.weight) followed by its bias, same name
    and path ending in bias: the weight map of a family whose norms are LayerNorms."""
    out = []
    for spec in specs:
        out.append(spec)
        name = spec.hf_names[0]
        if name.endswith("norm.weight"):
            out.append(WeightSpec(name.removesuffix("weight") + "bias", spec.path[:-1] + ("bias",)))
    return out


def decoder_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """transformers' Llama naming (model.layers.N.self_attn.q_proj.weight, ...), which most families
    share; families start from it and change what is theirs."""
    specs = [WeightSpec("model.embed_tokens.weight", ("model", "embed_tokens", "embedding"))]
    specs.append(WeightSpec("model.norm.weight", ("model", "norm", "weight")))
    if not cfg.tie_word_embeddings:
        specs.append(WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear()))
    if cfg.head_bias:
        specs.append(WeightSpec("lm_head.bias", ("lm_head", "bias")))
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.", ("model", "layers", i)
        specs.append(WeightSpec(hf + "input_layernorm.weight", ours + ("input_layernorm", "weight")))
        if cfg.layer_has_mixer(i) and cfg.layer_has_mlp(i):
            specs.append(WeightSpec(hf + "post_attention_layernorm.weight", ours + ("post_attention_layernorm", "weight")))
        # a recurrent layer has no attention tensors (its family adds its mixer's), a feed-forward block alone none either
        projections = ("q_proj", "o_proj") + kv_projections(cfg, i) if cfg.layer_is_attention(i) else ()
        for name in [n for n in ("q_proj", "k_proj", "v_proj", "o_proj") if n in projections]:
            attn = ours + ("self_attn", name)
            specs.append(WeightSpec(f"{hf}self_attn.{name}.weight", attn + ("kernel",), Linear(2 if name == "o_proj" else 1)))
            if cfg.layer_o_bias(i) if name == "o_proj" else cfg.qkv_bias:
                specs.append(WeightSpec(f"{hf}self_attn.{name}.bias", attn + ("bias",), Copy(flatten=name != "o_proj")))
        if projections and cfg.qk_norm not in ("none", "l2", "unit") and (cfg.qk_norm_layers is None or i in cfg.qk_norm_layers):  # l2: no weights
            for name in ("q_norm", "k_norm") if cfg.kv_shape(i) is not None else ("q_norm",):
                flat = Copy(flatten=cfg.qk_norm == "projection")
                specs.append(WeightSpec(f"{hf}self_attn.{name}.weight", ours + ("self_attn", name, "weight"), flat))
        if cfg.attn_sinks and projections and (cfg.attn_sink_layers is None or i in cfg.attn_sink_layers):
            # a learned logit per query head (gpt-oss, Granite SWA; MiMo-V2-Flash's attention_sink_bias, renamed)
            specs.append(WeightSpec(f"{hf}self_attn.sinks", ours + ("self_attn", "sinks")))
        if cfg.sub_norms and projections:  # BitNet's: the attention's over every head, flat in the checkpoint
            specs.append(WeightSpec(f"{hf}self_attn.attn_sub_norm.weight", ours + ("self_attn", "attn_sub_norm", "weight"), Copy(flatten=True)))
        if cfg.sub_norms:
            specs.append(WeightSpec(f"{hf}mlp.ffn_sub_norm.weight", ours + ("mlp", "ffn_sub_norm", "weight")))
        for name in ("post_norm1", "post_norm2") if cfg.branch_norms else ():  # HyperCLOVAX's
            specs.append(WeightSpec(f"{hf}{name}.weight", ours + (name, "weight")))
        for name in (() if not cfg.layer_has_mlp(i) else ("gate_proj", "up_proj", "down_proj") if cfg.gated_mlp else ("up_proj", "down_proj")):
            mlp = ours + ("mlp", name)
            specs.append(WeightSpec(f"{hf}mlp.{name}.weight", mlp + ("kernel",), Linear()))
            if cfg.mlp_bias:
                specs.append(WeightSpec(f"{hf}mlp.{name}.bias", mlp + ("bias",)))
    return specs


def kv_projections(cfg: ModelConfig, layer: int) -> tuple[str, ...]:
    """The key and value projections a layer has: none where it reads another layer's keys and
    values, no v_proj where its values are its keys' projection (Gemma 4)."""
    if cfg.kv_shape(layer) is None:
        return ()
    return ("k_proj",) if cfg.layer_values_are_keys(layer) else ("k_proj", "v_proj")
