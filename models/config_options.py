"""The small option types of a ModelConfig (rope, chunked attention, ALiBi, query scaling, latent
attention) and the rope parser that reads either transformers spelling into a RopeConfig; config.py
re-exports them, so `models.config.RopeConfig` and the rest keep working."""

from __future__ import annotations

from dataclasses import dataclass

from jaxllm.errors import ConfigError
from jaxllm.models.config_fields import ROPE_TYPES

# Keys each rope type needs beyond rope_theta, as transformers validates them.
_ROPE_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor", "original_max_position_embeddings"),
    "proportional": (),
}


@dataclass(frozen=True)
class RopeConfig:
    type: str = "default"
    theta: float = 10000.0
    factor: float = 1.0
    partial_rotary_factor: float = 1.0
    original_max_position_embeddings: int | None = None
    # llama3
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    # yarn
    attention_factor: float | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    truncate: bool = True
    # longrope (Phi-3): per-frequency factors below / beyond original_max_position_embeddings
    short_factor: tuple[float, ...] | None = None
    long_factor: tuple[float, ...] | None = None
    # dynamic with a fixed NTK alpha (HunYuan's "ntk_alpha"): the base times alpha ** (d / (d - 2)),
    # whatever the sequence's length; set by the families that read it (parse_rope never does)
    alpha: float | None = None
    # The head size of the layers this rope turns where it differs from the model's head_dim (Gemma 4's
    # full-attention layers); None: head_dim.
    head_dim: int | None = None

    @property
    def length_dependent(self) -> bool:
        """Whether the frequencies depend on the sequence's length: dynamic NTK (without a fixed
        alpha), and LongRoPE whose short and long factors differ (a GGUF's fixed rope_freqs are
        LongRoPE with equal ones)."""
        return (self.type == "dynamic" and not self.alpha) or (self.type == "longrope" and self.short_factor != self.long_factor)


@dataclass(frozen=True)
class Chunked:
    """The window of a chunked-attention layer (Llama 4): a query sees the keys of its own chunk of
    `size` positions, from position - position % size, causally; `ModelConfig.layer_window` gives it
    where a sliding layer's is an int."""

    size: int


@dataclass(frozen=True)
class Alibi:
    """ALiBi position biases in place of rotary positions (BLOOM, MPT, Falcon-RW): each query head h
    adds slopes[h] * (key position - query position) to its scores, after the scale (softmax drops
    the per-query constant, so this is transformers' slope * key position of BLOOM and MPT).
    `bf16`: Falcon-RW's form, the slope rounded to bfloat16 times the key position, that product
    rounded to bfloat16, then times `scale` (transformers' build_alibi_tensor `.bfloat16()` and its
    division by sqrt(head_dim)). `attention_ops.alibi_bias` computes it for every attention path."""

    slopes: tuple[float, ...]
    bf16: bool = False
    scale: float = 1.0


@dataclass(frozen=True)
class QueryScale:
    """Queries times 1 + beta * log(1 + floor((position + offset) / floor)), after their rotary
    positions: Ministral 3's llama_4_scaling_beta over original_max_position_embeddings, Llama 4's
    attention temperature (attn_scale over floor_scale, positions counted from 1). `in_float32`:
    the product taken in float32, then cast (Llama 4); else the scale is cast to the queries' dtype
    first (Ministral 3)."""

    beta: float
    floor: float
    offset: int = 0
    in_float32: bool = False


@dataclass(frozen=True)
class MlaConfig:
    """Multi-head latent attention (DeepSeek-V2/V3, models/mla.py): queries through a rank
    `q_lora_rank` bottleneck (None: one q_proj), keys and values decompressed from a shared latent
    of `kv_lora_rank` per token; each key head is qk_nope_head_dim values without rotation and
    qk_rope_head_dim rotated ones (one rotated part shared by every head), each value head v_head_dim."""

    kv_lora_rank: int
    qk_nope_head_dim: int
    qk_rope_head_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None
    norm_eps: float = 1e-6  # the epsilon of q_a_layernorm and kv_a_layernorm (transformers leaves them at 1e-6)
    # the queries and the normed kv latent times these (LongCat-Flash's LoRA scales, sqrt(hidden / rank))
    q_scale: float = 1.0
    kv_scale: float = 1.0

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


@dataclass(frozen=True)
class IndexerConfig:
    """DeepSeek Sparse Attention's lightning indexer (DeepSeek-V3.2, models/sparse_attention.py): `heads`
    query heads of `head_dim` (from the latent queries) score every earlier key (one key head of `head_dim` per
    token, cached in pages of its own), and attention reads only the `topk` best of them. `interleaved`: the
    indexer rotates its first qk_rope_head_dim values in interleaved pairs (GLM-5), else in halves (V3.2); its last
    ones where `rope_last` (HY V4). `shared`: the layers that run no indexer but take the selection of the last layer
    before them that does. `norm_eps`: its key LayerNorm's epsilon (HY V4's rms_norm_eps; 1e-6 elsewhere).

    `by_attention` (Kolibri 1.1): an indexer without weights or keys of its own, which scores the layer's cached keys
    (key head 0) with its first `heads` query heads (`head_dim` theirs), both rounded by `rounding`; only `layers` are
    sparse (None: every attention layer). Where a query sees more than `pool` keys, the layers not `shared` first choose
    a pool of candidates (the pool // pool_block blocks of pool_block keys whose mean key scores best) that they and the
    shared layers after them select from; a query keeps its `sink_tokens` first and `local_tokens` last keys beside its
    `topk`, and attends keys and values rounded by `rounding` ("nvfp4": `kv_quant.fake_nvfp4`)."""

    heads: int
    head_dim: int
    topk: int
    interleaved: bool = False
    shared: tuple[int, ...] = ()
    rope_last: bool = False
    norm_eps: float = 1e-6
    by_attention: bool = False
    layers: tuple[int, ...] | None = None
    pool: int = 0
    pool_block: int = 1
    sink_tokens: int = 0
    local_tokens: int = 0
    rounding: str | None = None

    def sparse(self, layer: int) -> bool:
        """Whether `layer` attends only the keys an indexer selects."""
        return self.layers is None or layer in self.layers

    def source(self, layer: int) -> int:
        """The layer whose indexer selects `layer`'s keys (by_attention: chose its pool): itself, or for a shared layer the
        last sparse one before it that runs one (a dense layer: itself)."""
        if not self.sparse(layer):
            return layer
        return max(i for i in range(layer + 1) if i not in self.shared and self.sparse(i))


def parse_rope(raw: dict, layer_type: str = "full_attention") -> RopeConfig:
    """Rope settings from either spelling: v5 `rope_parameters`, or v4 `rope_theta` + `rope_scaling`.
    In the per-layer-type form ({"full_attention": {...}, "sliding_attention": {...}}) it reads
    the entry of `layer_type`.

    Both at once (a v5 config.json given a rope_scaling afterwards, as model cards advise): as
    transformers' config classes read them, rope_scaling replaces flat rope_parameters, its
    rope_theta from the top-level key (Gemma 3 takes it into its full_attention entry instead);
    where that would drop rope_parameters' own rope_theta, the config is refused as ambiguous."""
    params = dict(raw.get("rope_parameters") or {})
    scaling = dict(raw.get("rope_scaling") or {})
    if isinstance(params.get("full_attention"), dict):
        params = dict(params.get(layer_type) or params["full_attention"])
        if layer_type == "full_attention":
            params.update(scaling)
    else:
        kept = params.get("rope_theta")
        params = scaling or params
        if raw.get("rope_theta") is not None:
            params.setdefault("rope_theta", raw["rope_theta"])
        theta = float(params.get("rope_theta") or 10000.0)
        if kept is not None and float(kept) != theta:
            raise ConfigError(f"config.json has both rope_scaling and rope_parameters: transformers reads rope_scaling alone, "
                              f"so rope_parameters' rope_theta {kept:g} would give way to {theta:g}: put rope_theta into "
                              "rope_scaling, or keep only one of the two")
    rope_type = params.get("rope_type") or params.get("type") or "default"
    rope_type = "longrope" if rope_type == "su" else rope_type  # the first Phi-3 releases say "su"
    if rope_type not in ROPE_TYPES:
        raise ConfigError(
            f"config.json rope type '{rope_type}' is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    original = "original_max_position_embeddings"
    if original in _ROPE_REQUIRED[rope_type]:  # transformers: the top-level field, the rope's, max_position_embeddings
        params[original] = raw.get(original) or params.get(original) or max_positions(raw)
    if rope_type == "yarn" and "factor" in params and params["factor"] is None:  # given as null: transformers derives it
        params["factor"] = max_positions(raw) / params[original]
    for key in _ROPE_REQUIRED[rope_type]:
        if params.get(key) is None:
            raise ConfigError(f"config.json rope type '{rope_type}' needs '{key}' in its rope parameters: add it")
    if rope_type == "longrope" and params.get("factor") is None:
        params["factor"] = max_positions(raw) / params[original]
    factor = float(params.get("factor") or 1.0)
    partial = params.get("partial_rotary_factor") or raw.get("partial_rotary_factor") or 1.0
    return RopeConfig(
        type=rope_type,
        theta=float(params.get("rope_theta") or 10000.0),
        factor=factor,
        partial_rotary_factor=float(partial),
        original_max_position_embeddings=params.get("original_max_position_embeddings"),
        low_freq_factor=params.get("low_freq_factor"),
        high_freq_factor=params.get("high_freq_factor"),
        attention_factor=params.get("attention_factor"),
        beta_fast=params.get("beta_fast"),
        beta_slow=params.get("beta_slow"),
        mscale=params.get("mscale"),
        mscale_all_dim=params.get("mscale_all_dim"),
        truncate=params.get("truncate") is not False,
        short_factor=_factors(params, "short_factor"),
        long_factor=_factors(params, "long_factor"),
    )


def check_null_original(raw: dict, name: str) -> None:
    """A ConfigError where a null top-level original_max_position_embeddings would take the place of a scaled rope's own
    (llama3, yarn, longrope), as transformers' rope standardisation puts it there and then cannot compute (Apertus, Mllama)."""
    rope = raw.get("rope_scaling") or raw.get("rope_parameters") or {}
    if "original_max_position_embeddings" in raw and raw["original_max_position_embeddings"] is None and \
            rope.get("rope_type", rope.get("type")) in ("llama3", "yarn", "longrope"):
        raise ConfigError(f"config.json 'original_max_position_embeddings' is null, which transformers' {name} puts in "
                          "place of its rope's own and cannot compute: give it a value, or leave the key out")


def without_head_dim(raw: dict, name: str) -> dict:
    """config.json without its head_dim, for a family whose attention takes hidden_size / heads per head whatever
    head_dim says while its rope takes head_dim (Mllama, ModernBERT-decoder): a head_dim of another width, which
    transformers then fails to run, refused in one line."""
    dim, hidden, heads = raw.get("head_dim"), raw.get("hidden_size"), raw.get("num_attention_heads")
    if dim is not None and hidden and heads and dim * heads != hidden:
        raise ConfigError(f"config.json head_dim {dim} is not hidden_size / num_attention_heads ({hidden} / {heads}), which "
                          f"{name}'s attention takes (its rope would take head_dim: transformers fails): remove head_dim")
    return {k: v for k, v in raw.items() if k != "head_dim"}


def rotary_fraction(dims: int, head: int) -> float:
    """The partial_rotary_factor that rotates `dims` of a head of `head` values: half a dim above
    dims / head, so that int(head x factor) gives dims back through float rounding (GPT-J's
    rotary_dim, GPT-NeoX's head_dim)."""
    return 1.0 if dims == head else (dims + 0.5) / head


def max_positions(raw: dict) -> int:
    """max_position_embeddings, or 2,048 (PretrainedConfig's, Llama's) where config.json and the
    family's hf_defaults leave it out."""
    return int(raw.get("max_position_embeddings") or 2048)


def _factors(params: dict, key: str) -> tuple[float, ...] | None:
    value = params.get(key)
    return None if value is None else tuple(float(v) for v in value)
