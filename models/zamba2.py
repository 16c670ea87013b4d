"""Zyphra Zamba2 (transformers' Zamba2ForCausalLM: Zyphra/Zamba2-1.2B, -2.7B, -7B): every layer is a Mamba2 layer,
x + mamba(norm(x)) (models/mamba2.py's mixer, no MLP); on the layers layers_block_type calls "hybrid" a shared
transformer block's output joins the mixer's input, x + mamba(norm(x + linear(block(x, embeddings)))).

The block (transformers' Zamba2AttentionDecoderLayer) reads concat(x, the token embeddings), 2 x hidden_size wide:
its input_layernorm, attention (heads of 2 x hidden_size / num_attention_heads, scores scaled by (head_dim / 2) ** -0.5,
rotary positions where use_mem_rope, none otherwise), pre_ff_layernorm and gated MLP (hidden_act, add_bias_linear's
biases; transformers' fused gate_up_proj), no residuals; `linear`, each hybrid layer's own, brings it back.
num_mem_blocks blocks serve the hybrid layers in turn (the k-th runs block k % num_mem_blocks). A block's norms and
projections are one set of parameters: its later invocations hold the very modules of its first (nnx's shared
references), so they are stored, sharded, quantized and converted once, at the first invocation's path, where
transformers' checkpoints hold them. Each invocation's LoRA adapters (adapter_rank; `layers.Adapted`) are its own: on
the MLP's gate/up always, on the attention's q/k/v where use_shared_attention_adapter. A hybrid layer caches its
attention's keys beside its mixer's state (the pair, as Falcon-H1's layers: cfg.parallel_mixer, mixers.layer_parts).
Where tie_word_embeddings is false transformers ties nothing, the blocks neither: each hybrid layer then runs a block
of its own (saved at its layer, its adapter at its turn read from its own block's lists), and so do we.

The Mamba2 mixer: n_mamba_heads heads of mamba_expand x hidden_size / n_mamba_heads, mamba_ngroups groups, the conv's
bias always (use_conv_bias is never read), silu, the gated norm's epsilon 1e-5 whatever rms_norm_eps says, time
steps floored at time_step_min (transformers' prefill; its decode step does not, as Nemotron-H's).

config.json's head_dim (or its alias attention_head_dim, which transformers' config saves) sets the heads' size. Refused
in one line, as transformers fails on them: the attention's q/k/v adapters where the q/k/v projections are not
2 x hidden_size wide (fewer kv heads than query heads, another head_dim), the other keys transformers' config derives
and saves (attention_hidden_size, mamba_headdim, hybrid_layer_ids: the last made of layers_block_type, before its alias
layer_types overwrites it) where they differ from what the other keys make them, a layer type other than hybrid and
the Mamba2 ones (transformers builds it as a Mamba2 layer whatever it says, and cannot cache it).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderModel, dense
from jaxllm.models.layers import Adapted, Dense, GatedMLP, RMSNorm
from jaxllm.models.mamba2 import mamba_specs
from jaxllm.models.mixers import MIXERS
from jaxllm.models.transforms import Copy, Linear, Part
from jaxllm.models.weights import WeightSpec

# layers_block_type's spellings (PreTrainedConfig remaps the legacy "mamba")
_TYPES = ("hybrid", "linear_attention", "mamba")
# Zamba2Config's layers where layers_block_type is left out (or null): 54 of them
_DEFAULT_BLOCKS = (["linear_attention"] + (["linear_attention"] * 5 + ["hybrid"]) * 7 + ["linear_attention"] * 4 + ["hybrid"]
                   + ["linear_attention"] * 3 + ["hybrid"] + ["linear_attention"] * 2)


def _first(block):
    """A shared projection itself: the Dense under its first invocation's adapter, if it has one."""
    return block.base if isinstance(block, Adapted) else block


class SharedBlock(nnx.Module, pytree=False):
    """One invocation of a shared transformer block: input_layernorm(concat(x, embeddings)) -> self_attn ->
    pre_ff_layernorm -> feed_forward, no residuals. `first`: the block's first invocation, whose norms and
    projections this one holds (the same modules); None: this is the first, building them."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs, first: SharedBlock | None = None):
        e, rank, norm = cfg.hidden_size, cfg.adapter_rank, dict(dtype=dtype, rngs=rngs)
        self.input_layernorm = first.input_layernorm if first else RMSNorm(2 * e, cfg.norm_eps, **norm)
        self.pre_ff_layernorm = first.pre_ff_layernorm if first else RMSNorm(e, cfg.norm_eps, **norm)
        share = first is not None and not cfg.attn_adapters
        self.self_attn = first.self_attn if share else Attention(cfg, layer, **norm)
        self.feed_forward = GatedMLP(cfg, **norm)
        attn, mlp = self.self_attn, self.feed_forward
        if first is not None:  # built abstractly (ShapeDtypeStructs), then replaced by the first invocation's own
            for mine, theirs, names in ((attn, first.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj") * (not share)),
                                        (mlp, first.feed_forward, ("gate_proj", "up_proj", "down_proj"))):
                for name in names:
                    setattr(mine, name, _first(getattr(theirs, name)))
        if cfg.attn_adapters:
            attn.q_proj, attn.k_proj, attn.v_proj = (Adapted(p, rank, **norm) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        if rank:  # Zamba2's always (Zamba's blocks have none)
            mlp.gate_proj = Adapted(mlp.gate_proj, rank, **norm)
            mlp.up_proj = Adapted(mlp.up_proj, rank, **norm, down=mlp.gate_proj.down)  # one fused adapter in transformers

    def attention_input(self, x, emb):
        return self.input_layernorm(jnp.concatenate([x, emb], axis=-1))

    def __call__(self, x, emb, positions, rot, cache, kv):
        out, cache = self.self_attn(self.attention_input(x, emb), positions, rot, cache, kv)
        return self.feed_forward(self.pre_ff_layernorm(out)), cache


class Zamba2Layer(nnx.Module, pytree=False):
    """x + mamba(input_layernorm(x)), on a hybrid layer x + mamba(input_layernorm(x + linear(block(x, emb)))), its
    cache then (the attention's pages, the mixer's state). `shared`: the shared blocks' first invocations so far, by turn."""

    shares_modules = True

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs, shared: dict):
        e, made = cfg.hidden_size, dict(dtype=dtype, rngs=rngs)
        self.input_layernorm = RMSNorm(e, cfg.norm_eps, **made)
        self.mamba = MIXERS[cfg.layer_state_kind(layer)](cfg, layer, **made)  # Mamba2's (Zamba's: mamba1.MultiHeadMamba)
        self.shared_transformer = self.linear = None
        if cfg.layer_is_attention(layer):
            turn = sum(map(cfg.layer_is_attention, range(layer))) % cfg.shared_blocks
            first = shared.get(turn)
            self.shared_transformer = SharedBlock(cfg, layer, first=first, **made)
            shared.setdefault(turn, self.shared_transformer)
            self.linear = Dense((e,), (e,), ("word_embed", "embed"), bias=False, **made)

    @property
    def self_attn(self):
        """The hybrid layer's attention (research.attention_weights)."""
        return self.shared_transformer.self_attn

    def attention_input(self, x, emb):
        return self.shared_transformer.attention_input(x, emb)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, emb=None):
        hybrid = self.shared_transformer is not None
        pages, state = cache if hybrid and cache is not None else (None, cache)
        h = x
        if hybrid:
            out, pages = self.shared_transformer(x, emb, positions, rot, pages, kv)
            h = x + self.linear(out)
        out, state = self.mamba(self.input_layernorm(h), positions, state, kv)
        return x + out, None if cache is None else (pages, state) if hybrid else state


class Zamba2Model(DecoderModel):
    """The shared decoder whose layers share blocks (built as the layers are) and read the token embeddings."""

    def layer_inputs(self, tokens, x):
        """Every layer's own input: the token embeddings (original_hidden_states), which XLA does not copy per layer."""
        return jnp.broadcast_to(x[:, :, None], x.shape[:2] + (self.cfg.num_layers,) + x.shape[2:])


class Zamba2ForCausalLM(CausalLM):
    layer_cls = Zamba2Layer
    model_cls = Zamba2Model


def block_types(raw: dict, default: list[str], family: str = "Zamba2", mixer: str = "mamba") -> list[str]:
    """The layers transformers builds: layer_types (its alias, which wins) or layers_block_type, the config class's
    `default` where neither is given, each hybrid or a Mamba layer (`mixer`); Zamba2's refused where its
    hybrid_layer_ids (saved, or made of layers_block_type before the alias overwrote it) are not the hybrid layers, by
    which transformers indexes each one's adapters."""
    if "layer_types" in raw and raw["layer_types"] is None:
        raise ConfigError(f"config.json layer_types is null, which {family}Config sets as layers_block_type and then cannot "
                          "build (transformers fails): give the layers as layers_block_type")
    given = raw.get("layers_block_type")
    types = raw.get("layer_types") or given or default
    if len(types) != raw["num_hidden_layers"]:
        key = "layers_block_type" if raw.get("layer_types") is None else "layer_types"
        had = f"{key} ({family}Config's default)" if given is None and key == "layers_block_type" else key
        raise ConfigError(f"config.json has {len(types)} {had} for num_hidden_layers={raw['num_hidden_layers']} "
                          "(transformers refuses it): give one per layer")
    for kind in types:
        if kind not in _TYPES:
            raise ConfigError(f"config.json layer type '{kind}' is not one {family} runs (transformers builds every layer but "
                              "hybrid as a Mamba layer, whatever it says): use hybrid or linear_attention (mamba)")
    hybrid = [i for i, t in enumerate(types) if t == "hybrid"]
    ids = raw.get("hybrid_layer_ids", [i for i, t in enumerate(given or default) if t == "hybrid"])
    if family == "Zamba2" and ids != hybrid:
        raise ConfigError(f"config.json hybrid_layer_ids {ids} are not the hybrid layers {hybrid} (transformers indexes each "
                          "hybrid layer's adapters by them and fails): remove hybrid_layer_ids and layer_types, give the "
                          "layers as layers_block_type")
    return ["full_attention" if t == "hybrid" else mixer for t in types]


def head_dim(raw: dict, given: dict) -> int:
    """The attention's head size: `given`'s value (config.json's head_dim or its alias attention_head_dim, whichever
    the config class applies), else 2 x hidden_size // num_attention_heads; refused where not a positive integer."""
    e, heads = raw["hidden_size"], raw["num_attention_heads"]
    size = next(iter(given.values()), 2 * e // heads)
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"config.json {next(iter(given))}={size!r}, which the config class sets over its own head size, is "
                          f"not a positive integer (transformers fails): give {2 * e // heads}, or leave the key out")
    return size


def check_width(raw: dict, null: bool = False) -> None:
    """A ConfigError where config.json's attention_hidden_size (which the config class saves, then reads back; null
    where `null`, ZambaConfig's, reads as its default) is not 2 x hidden_size, the width of what the attention reads
    (transformers fails)."""
    e = raw["hidden_size"]
    if raw.get("attention_hidden_size", 2 * e) not in (2 * e,) + ((None,) if null else ()):
        raise ConfigError(f"config.json attention_hidden_size={raw['attention_hidden_size']} is not 2 x hidden_size = {2 * e}, "
                          "the width of the shared block's input (transformers fails): remove it")


def zamba2_names(raw: dict) -> dict:
    """The common keys: the attention's head_dim (its alias attention_head_dim) where config.json gives it, else
    2 x hidden_size // num_attention_heads; intermediate_size 4 x hidden_size where null; max_position_embeddings 16,384
    where use_long_context; the layers' types. The other keys transformers' config derives and saves (and then reads
    back over its own derivation) are checked against what the rest make them."""
    e = raw["hidden_size"]
    if not all(isinstance(raw[k], int) for k in ("hidden_size", "num_attention_heads", "num_hidden_layers")):
        return raw  # a missing key: require_fields names it
    given = {k: raw[k] for k in ("head_dim", "attention_head_dim") if k in raw}
    if len(set(map(str, given.values()))) > 1:
        raise ConfigError(f"config.json head_dim={given['head_dim']} and its alias attention_head_dim={given['attention_head_dim']} "
                          "differ (transformers takes whichever comes last): give one")
    check_width(raw)
    inner = raw["mamba_expand"] * e
    if raw.get("mamba_headdim", inner // raw["n_mamba_heads"]) != inner // raw["n_mamba_heads"]:
        raise ConfigError(f"config.json mamba_headdim={raw['mamba_headdim']} is not {inner // raw['n_mamba_heads']}, what "
                          "Zamba2Config derives from the other keys (transformers fails): remove mamba_headdim")
    types = block_types(raw, _DEFAULT_BLOCKS)
    raw = {k: v for k, v in raw.items() if k not in ("layer_types", "attention_head_dim")}
    return dict(raw, block_types=types, head_dim=head_dim(raw, given), intermediate_size=raw.get("intermediate_size") or 4 * e,
                max_position_embeddings=16384 if raw["use_long_context"] else raw["max_position_embeddings"])


def shared_blocks(raw: dict, blocks: int) -> int:
    """How many blocks the hybrid layers share: `blocks`, or one per hybrid layer where tie_word_embeddings is false
    (transformers ties the blocks' parameters only where it ties the head to the embeddings)."""
    return blocks if raw["tie_word_embeddings"] else max(1, raw["block_types"].count("full_attention"))


def zamba2_defaults(raw: dict) -> dict:
    e, heads, groups = raw["hidden_size"], raw["n_mamba_heads"], raw["mamba_ngroups"]
    inner = raw["mamba_expand"] * e
    if inner % heads:
        raise ConfigError(f"config.json n_mamba_heads={heads} does not divide mamba_expand x hidden_size = {inner} (transformers "
                          "fails): correct n_mamba_heads")
    if heads % groups:
        raise ConfigError(f"config.json n_mamba_heads={heads} is not a multiple of mamba_ngroups={groups}: each group's B and C "
                          "must serve a whole number of heads")
    q, kv, d = raw["num_attention_heads"], raw.get("num_key_value_heads") or raw["num_attention_heads"], raw["head_dim"]
    if raw["use_shared_attention_adapter"] and not q * d == kv * d == 2 * e:
        raise ConfigError(f"config.json use_shared_attention_adapter with {q} query and {kv} kv heads of head_dim {d}: its "
                          f"q/k/v adapters are 2 x hidden_size = {2 * e} wide, the projections {q * d} and {kv * d} (transformers "
                          "fails): give as many kv heads as query heads, of 2 x hidden_size / num_attention_heads, or turn the adapters off")
    return dict(layer_types=tuple(raw["block_types"]), recurrent_kinds=("mamba",), parallel_mixer="mamba",
                position_embedding="rope" if raw["use_mem_rope"] else "none", attn_scale=(raw["head_dim"] / 2) ** -0.5,
                attn_input_size=2 * e, shared_blocks=shared_blocks(raw, raw["num_mem_blocks"]), adapter_rank=raw["adapter_rank"],
                attn_adapters=bool(raw["use_shared_attention_adapter"]), qkv_bias=False, o_bias=False,
                mlp_bias=bool(raw["add_bias_linear"]), mamba_heads=heads, mamba_head_dim=inner // heads,
                mamba_state=raw["mamba_d_state"], mamba_groups=groups, linear_conv_kernel=raw["mamba_d_conv"], conv_bias=True,
                mamba_proj_bias=bool(raw["add_bias_linear"]), mamba_act="silu", mamba_dt_min=float(raw["time_step_min"]),
                mamba_gate_eps=1e-5)


def block_specs(cfg: ModelConfig, hf: str, ours: tuple) -> list[WeightSpec]:
    """A shared block's norms and attention projections (under their adapters where it has them), read at its first
    invocation (`hf`: model.layers.{i}.shared_transformer.); its MLP is the family's (`mlp_specs`)."""
    under = ("base",) if cfg.attn_adapters else ()
    specs = [WeightSpec(f"{hf}{n}.weight", ours + (n, "weight")) for n in ("input_layernorm", "pre_ff_layernorm")]
    return specs + [WeightSpec(f"{hf}self_attn.{n}.weight", ours + ("self_attn", n) + (under if n != "o_proj" else ()) + ("kernel",),
                               Linear(2 if n == "o_proj" else 1)) for n in ("q_proj", "k_proj", "v_proj", "o_proj")]


def _fused_mlp(cfg: ModelConfig, hf: str, ours: tuple) -> list[WeightSpec]:
    """Zamba2's MLP: gate_up_proj's rows into gate and up (under their adapters), down_proj; biases where add_bias_linear."""
    f, bias, mlp, fused = cfg.intermediate_size, cfg.mlp_bias, ours + ("feed_forward",), f"{hf}feed_forward.gate_up_proj."
    specs = []
    for j, name in enumerate(("gate_proj", "up_proj")):
        specs.append(WeightSpec(fused + "weight", mlp + (name, "base", "kernel"), Part(j * f, 2 * f, Linear())))
        specs += [WeightSpec(fused + "bias", mlp + (name, "base", "bias"), Part(j * f, 2 * f, Copy()))] if bias else []
    return specs + dense(f"{hf}feed_forward.down_proj", mlp + ("down_proj",), bias=bias)


def _adapter_specs(cfg: ModelConfig, hf: str, ours: tuple, turn: int) -> list[WeightSpec]:
    """One invocation's adapters (the `turn`-th hybrid layer's), which transformers keeps in its block's first
    invocation's lists at index `turn` (`hf`: that invocation's shared_transformer.)."""
    f, mlp, fused = cfg.intermediate_size, ours + ("feed_forward",), f"{hf}feed_forward.gate_up_proj_adapter_list.{turn}."
    specs = [WeightSpec(fused + "0.weight", mlp + ("gate_proj", "down", "kernel"), Linear())] if cfg.adapter_rank else []
    specs += [WeightSpec(fused + "1.weight", mlp + (name, "up", "kernel"), Part(j * f, 2 * f, Linear()))
              for j, name in enumerate(("gate_proj", "up_proj") if cfg.adapter_rank else ())]
    for n in ("q", "k", "v") if cfg.attn_adapters else ():
        at, attn = f"{hf}self_attn.linear_{n}_adapter_list.{turn}.", ours + ("self_attn", f"{n}_proj")
        specs += [WeightSpec(at + "0.weight", attn + ("down", "kernel"), Linear()), WeightSpec(at + "1.weight", attn + ("up", "kernel"), Linear())]
    return specs


def hybrid_weight_map(cfg: ModelConfig, block: str, mixer_specs, mlp_specs) -> list[WeightSpec]:
    """Zamba's and Zamba2's names: model.layers.{i}.{input_layernorm, mamba} on a Mamba layer, under mamba_decoder on a
    hybrid one beside its `linear` and its block (`block`: shared_transf, shared_transformer), whose parameters are read
    at its first invocation (`mlp_specs` its MLP's), its adapters at each; `mixer_specs(hf, i)` a layer's mixer's."""
    specs = [WeightSpec("model.embed_tokens.weight", ("model", "embed_tokens", "embedding")),
             WeightSpec("model.final_layernorm.weight", ("model", "norm", "weight"))]
    specs += [] if cfg.tie_word_embeddings else [WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear())]
    hybrid = [i for i in range(cfg.num_layers) if cfg.layer_is_attention(i)]
    for i in range(cfg.num_layers):
        ours = ("model", "layers", i)
        hf = f"model.layers.{i}.mamba_decoder." if i in hybrid else f"model.layers.{i}."
        specs.append(WeightSpec(hf + "input_layernorm.weight", ours + ("input_layernorm", "weight")))
        specs += mixer_specs(hf + "mamba", i)
        if i not in hybrid:
            continue
        turn = hybrid.index(i)
        first = hybrid[turn % cfg.shared_blocks]
        at, ours = f"model.layers.{first}.{block}.", ours + ("shared_transformer",)
        specs += [WeightSpec(f"model.layers.{i}.linear.weight", ours[:-1] + ("linear", "kernel"), Linear())]
        specs += (block_specs(cfg, at, ours) + mlp_specs(cfg, at, ours) if first == i else []) + _adapter_specs(cfg, at, ours, turn)
    return specs


def zamba2_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    return hybrid_weight_map(cfg, "shared_transformer", lambda hf, i: mamba_specs(cfg, hf, layers=(i,)), _fused_mlp)


def hybrid_ignored(cfg: ModelConfig, block: str = "shared_transformer") -> tuple[str, ...]:
    """Tensors not read: a checkpoint's copies of a block at its later invocations (tied in transformers, which saves
    the first alone); untied, the other invocations' adapters each block's lists hold (transformers builds them, never
    runs them)."""
    hybrid = [i for i in range(cfg.num_layers) if cfg.layer_is_attention(i)]
    later = "|".join(str(i) for i in hybrid[cfg.shared_blocks:])
    ignored = (rf"^model\.layers\.({later})\.{block}\.",) if later else ()
    if len(hybrid) > 1 and cfg.shared_blocks == len(hybrid):  # a block per hybrid layer (untied), its adapter at its turn alone
        ignored += tuple(rf"^model\.layers\.{i}\.{block}\..*_adapter_list\.(?!{turn}\.)\d+\." for turn, i in enumerate(hybrid))
    return ignored


# Zamba2Config's field defaults (Zamba2-2.7B's shapes)
_DEFAULTS = dict(vocab_size=32000, max_position_embeddings=4096, hidden_size=2560, num_hidden_layers=54, mamba_d_state=64,
                 mamba_d_conv=4, mamba_expand=2, mamba_ngroups=1, time_step_min=0.001, n_mamba_heads=8, add_bias_linear=False,
                 hidden_act="gelu", num_attention_heads=32, num_mem_blocks=1, use_shared_attention_adapter=False,
                 adapter_rank=128, use_mem_rope=False, rope_theta=10000.0, rms_norm_eps=1e-5, pad_token_id=0, bos_token_id=1,
                 eos_token_id=2, use_long_context=False, tie_word_embeddings=True)

ARCHITECTURES = (Architecture(
    name="Zamba2ForCausalLM", module=Zamba2ForCausalLM, weight_map=zamba2_weight_map, hf_model_type="zamba2",
    config_defaults=zamba2_defaults, common_names=zamba2_names, hf_defaults=_DEFAULTS, ignore_for=hybrid_ignored,
    ignored_keys=("sliding_window", "use_sliding_window", "attention_bias", "mlp_bias", "use_conv_bias", "chunk_size",
                  "num_logits_to_keep", "kv_channels", "num_query_groups"),
    not_null=RMS_NOT_NULL,
    # Mamba2, hybrid (block 0), hybrid (block 1), Mamba2, hybrid (block 0 again: its parameters read at layer 1, its
    # adapters its own); q/k/v adapters, rotary positions; 8 Mamba2 heads of 16 in 2 groups; in/out and MLP biases; an
    # epsilon (1e-3) the mixer's gated norm does not take (its 1e-5); the legacy "mamba" spelling
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=5,
                     layers_block_type=["mamba", "hybrid", "hybrid", "linear_attention", "hybrid"], num_attention_heads=4,
                     num_key_value_heads=4, num_mem_blocks=2, use_shared_attention_adapter=True, adapter_rank=8, use_mem_rope=True,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, n_mamba_heads=8, mamba_ngroups=2,
                     mamba_d_state=8, mamba_d_conv=4, mamba_expand=2, hidden_act="gelu", add_bias_linear=True, rms_norm_eps=1e-3,
                     time_step_min=0.001, max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
