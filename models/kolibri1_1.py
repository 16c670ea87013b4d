"""Kolibri 1.1 (Kolibri1_1ForCausalLM, Aleph Alpha): Kolibri-1's sandwich layer, q/k norms and experts (models/kolibri1.py)
with, as transformers' modeling_kolibri1_1.py differs from Kolibri-1's:
- "indexed_attention" layers in place of the full ones (every 5th where layer_types is left out), without rotary
  positions, sparse: each attends the keys a weightless indexer selects from its own queries and cached keys, NVFP4-
  rounded keys and values (models/sparse_attention.py IndexedAttention, IndexerConfig.by_attention). The index_layers
  choose a candidate pool (index_pool_size keys, in blocks of index_compression) that the indexed layers after them
  reuse (the layer's carried value); each query keeps index_topk keys of it beside its index_num_sink_tokens first and
  index_num_local_tokens last ones;
- layers sharing another's keys and values (kv_source_layers: ModelConfig.kv_sources; such a layer has no k_proj, v_proj
  or k_norm), an indexed layer reading an earlier indexed layer's;
- dense MLPs of mlp_only_intermediate_size on mlp_only_layers (the first two where left out), routed experts elsewhere.
Kolibri1_1Config's defaults of index_layers (the 1st, 3rd, 4th and 6th indexed layers) and kv_source_layers (of the
indexed layers, the 2nd, 3rd and 10th read the 1st's, the 7th to 9th the 6th's; more than 10 indexed layers need them
given) are read here; its checks are refused in one line. The checkpoint's names are Kolibri-1's (post_attn_norm,
post_ffn_norm, moe.router.expert_bias: its conversion mapping)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.config import IndexerConfig
from jaxllm.models.config_fields import known_layer_types
from jaxllm.models.decoder import CausalLM
from jaxllm.models.gemma import SandwichLayer
from jaxllm.models.kolibri1 import kolibri1_defaults, kolibri1_weight_map
from jaxllm.models.moe import _experts
from jaxllm.models.sparse_attention import IndexedAttention

TYPES = ("indexed_attention", "sliding_attention")
DEFAULT_SOURCES = (0, 0, 0, 3, 4, 5, 5, 5, 5, 0)  # Kolibri1_1Config's: the indexed layer each indexed layer reads


class Kolibri1_1DecoderLayer(SandwichLayer):
    attn_cls = IndexedAttention
    carries = True  # the candidate pool of the last index layer


class Kolibri1_1ForCausalLM(CausalLM):
    layer_cls = Kolibri1_1DecoderLayer


def _indexed(raw: dict) -> list[int]:
    return [i for i, t in enumerate(raw["layer_types"]) if t == "indexed_attention"]


def kolibri1_1_names(raw: dict) -> dict:
    """Kolibri1_1Config's reading: layer_types every 5th layer indexed, mlp_only_layers the first two, index_layers and
    kv_source_layers Kolibri 1.1's layout where left out (or null); num_local_experts (num_experts its alias); no
    intermediate_size (the dense MLPs' is mlp_only_intermediate_size)."""
    raw = dict(raw, num_local_experts=_experts(raw, 384), intermediate_size=raw.get("mlp_only_intermediate_size"))
    layers = raw.get("num_hidden_layers")
    if layers is None:  # refused by name (require_fields)
        return raw
    types = raw.get("layer_types") or ["indexed_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(layers)]
    known_layer_types(types, TYPES, "Kolibri 1.1", "Kolibri1_1Config refuses any other")
    if len(types) != layers:
        raise ConfigError(f"config.json has {len(types)} layer_types for {layers} layers: give one per layer")
    raw = dict(raw, layer_types=list(types))
    if raw.get("mlp_only_layers") is None:
        raw["mlp_only_layers"] = [i for i in (0, 1) if i < layers]
    indexed = _indexed(raw)
    if raw.get("index_layers") is None:
        raw["index_layers"] = [indexed[i] for i in (0, 2, 3, 5) if i < len(indexed)]
    if raw.get("kv_source_layers") is None:
        if len(indexed) > len(DEFAULT_SOURCES):
            raise ConfigError(f"config.json has {len(indexed)} indexed_attention layers and no kv_source_layers, whose default "
                              f"covers {len(DEFAULT_SOURCES)} (Kolibri1_1Config refuses it): set kv_source_layers")
        sources = list(range(layers))
        for layer, source in zip(indexed, DEFAULT_SOURCES):
            sources[layer] = indexed[source]
        raw["kv_source_layers"] = sources
    return raw


def _check(raw: dict) -> None:
    """A one-line ConfigError for what Kolibri1_1Config.validate_architecture refuses."""
    types, layers, indexed = raw["layer_types"], raw["num_hidden_layers"], _indexed(raw)
    index, sources = raw["index_layers"], raw["kv_source_layers"]
    if sorted(set(index)) != index or not set(index) <= set(indexed):
        raise ConfigError(f"config.json index_layers={index} must be increasing indexed_attention layers (layer_types' "
                          f"{indexed}): correct index_layers or layer_types")
    if indexed and indexed[0] not in index:
        raise ConfigError(f"config.json index_layers={index} leaves out the first indexed_attention layer of layer_types "
                          f"({indexed[0]}), which must choose the first pool: add it")
    if len(sources) != layers:
        raise ConfigError(f"config.json has {len(sources)} kv_source_layers for {layers} layers: give one per layer")
    for layer, source in enumerate(sources):
        if types[layer] == "sliding_attention" and source != layer:
            raise ConfigError(f"config.json kv_source_layers[{layer}]={source}: sliding_attention layer {layer} cannot read "
                              f"another layer's keys and values (layer_types): set it to {layer}")
        if not 0 <= source <= layer or sources[source] != source or types[source] != types[layer]:
            raise ConfigError(f"config.json kv_source_layers[{layer}]={source} must name an earlier layer of its type (layer_types) "
                              "that computes its own keys and values: correct kv_source_layers")
    topk = raw["index_topk"]
    if not isinstance(topk, int) or isinstance(topk, bool) or topk < 1:
        raise ConfigError(f"config.json index_topk={topk!r} must be a positive integer (Kolibri1_1Config refuses it): give "
                          "the checkpoint's index_topk")
    if raw["index_pool_size"] % raw["index_compression"]:
        raise ConfigError(f"config.json index_pool_size={raw['index_pool_size']} is not a multiple of index_compression="
                          f"{raw['index_compression']}: make it one")
    head_dim = raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"]
    if head_dim % 16:
        raise ConfigError(f"config.json head_dim={head_dim} is not a multiple of 16, which the NVFP4 rounding of the keys and "
                          "values needs (Kolibri1_1Config refuses it): correct head_dim")
    heads, kv_heads = raw["num_attention_heads"], raw.get("num_key_value_heads") or raw["num_attention_heads"]
    group = heads // kv_heads
    if heads % kv_heads == 0 and not 0 < raw["index_num_heads"] <= group:  # (heads that do not group: from_hf's refusal)
        raise ConfigError(f"config.json index_num_heads={raw['index_num_heads']} must lie in [1, {group}] (the query heads of "
                          "key head 0): correct index_num_heads")
    if not set(raw["mlp_only_layers"]) <= set(range(layers)):
        raise ConfigError(f"config.json mlp_only_layers={raw['mlp_only_layers']} must be layer indices below {layers}: "
                          "correct mlp_only_layers")
    if raw["mlp_only_layers"] and not raw["mlp_only_intermediate_size"]:
        raise ConfigError("config.json mlp_only_intermediate_size=0 leaves the dense MLPs of mlp_only_layers no width "
                          "(Kolibri1_1Config refuses it): give it a positive value")


def kolibri1_1_defaults(raw: dict) -> dict:
    """Kolibri-1's reading (without its full layers' window switch: the indexed layers never rotate), the indexed layers
    full-attention layers of ours, sparse and without rotary positions, and the shared keys and values."""
    _check(raw)
    indexed, index = _indexed(raw), raw["index_layers"]
    indexer = IndexerConfig(heads=raw["index_num_heads"], head_dim=raw.get("head_dim") or raw["hidden_size"] // raw["num_attention_heads"],
                            topk=raw["index_topk"], shared=tuple(i for i in indexed if i not in index), by_attention=True,
                            layers=tuple(indexed), pool=raw["index_pool_size"], pool_block=raw["index_compression"],
                            sink_tokens=raw["index_num_sink_tokens"], local_tokens=raw["index_num_local_tokens"], rounding="nvfp4")
    types = tuple("full_attention" if t == "indexed_attention" else t for t in raw["layer_types"])
    return dict(kolibri1_defaults(raw), nope_layers=tuple(indexed), layer_types=types, dense_layers=tuple(sorted(set(raw["mlp_only_layers"]))),
                kv_sources=tuple(raw["kv_source_layers"]), indexer=indexer if indexed else None)


INDEX_KEYS = ("index_topk", "index_pool_size", "index_compression", "index_num_heads", "index_num_local_tokens",
              "index_num_sink_tokens")

ARCHITECTURES = (Architecture(
    name="Kolibri1_1ForCausalLM", module=Kolibri1_1ForCausalLM, hf_model_type="kolibri1_1", config_defaults=kolibri1_1_defaults,
    weight_map=kolibri1_weight_map, common_names=kolibri1_1_names,
    # keys of Qwen3-MoE's config that Kolibri1_1Config has no field for, which its model never reads
    ignored_keys=("intermediate_size", "use_sliding_window", "decoder_sparse_step", "attention_bias"),
    # Kolibri1_1Config's field defaults (Kolibri 1.1's shapes)
    hf_defaults=dict(vocab_size=128000, hidden_size=2560, num_hidden_layers=50, num_attention_heads=48, num_key_value_heads=4,
                     head_dim=128, max_position_embeddings=262144, sliding_window=513, rms_norm_eps=1e-6, rope_theta=10000.0,
                     moe_intermediate_size=512, shared_expert_intermediate_size=512, num_experts_per_tok=6,
                     norm_topk_prob=False, index_topk=2048, index_pool_size=16384, index_compression=16, index_num_heads=12,
                     index_num_local_tokens=128, index_num_sink_tokens=8, mlp_only_intermediate_size=3584),
    not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim", "moe_intermediate_size", "shared_expert_intermediate_size",
                             "num_experts_per_tok", "norm_topk_prob", "num_local_experts", "num_experts",
                             "mlp_only_intermediate_size") + INDEX_KEYS,
    # layer 0 indexed (choosing a pool), 1 sliding (window 8, rotary positions), 2 indexed choosing a new pool over layer
    # 0's keys and values, 3 indexed reselecting from layer 2's pool over layer 0's; a query keeps 3 of its pool's keys
    # beside 2 sinks and 4 local ones (a budget of 9) from a pool of 8 keys in blocks of 4, below the tests' prompts;
    # layer 1's MLP dense, the others 6 experts, top 2, beside a shared MLP; GQA
    tiny_config=dict(vocab_size=128, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                     head_dim=16, max_position_embeddings=256, rms_norm_eps=1e-5, rope_parameters={"rope_type": "default",
                     "rope_theta": 10000.0}, tie_word_embeddings=False, sliding_window=8,
                     layer_types=["indexed_attention", "sliding_attention", "indexed_attention", "indexed_attention"],
                     index_layers=[0, 2], kv_source_layers=[0, 1, 0, 0], mlp_only_layers=[1], mlp_only_intermediate_size=80,
                     index_topk=3, index_pool_size=8, index_compression=4, index_num_heads=2, index_num_local_tokens=4,
                     index_num_sink_tokens=2, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_local_experts=6,
                     num_experts_per_tok=2, norm_topk_prob=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
