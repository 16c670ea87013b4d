"""GLM-5 (GlmMoeDsaForCausalLM): DeepSeek-V3.2's decoder (models/deepseek_v32.py: latent attention made sparse by
a lightning indexer, models/sparse_attention.py) with two changes: the indexer rotates its rope part in interleaved
pairs, and only the layers `indexer_types` calls "full" run an indexer; a "shared" layer attends the keys the last
full layer before it selected (and caches no indexer keys). As GlmMoeDsaConfig reads config.json: indexer_types,
else index_topk_pattern ("F"/"S" per layer, or a list of the types), else every layer full but those
index_topk_freq and index_skip_topk_offset (default 1 and 2: none) skip."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import Architecture
from jaxllm.models.config_fields import Field, check_fields
from jaxllm.models.deepseek import weight_map
from jaxllm.models.deepseek_v32 import V32, deepseek_v32_defaults, indexer, v32_names
from jaxllm.models.sparse_attention import SparseLatentCausalLM, sparse_weight_map

INDEXER_TYPES = ("full", "shared")


def indexer_types(raw: dict) -> list[str]:
    """Each layer's indexer type as GlmMoeDsaConfig derives it, or a ConfigError where transformers cannot run it."""
    n = raw["num_hidden_layers"]
    given = check_fields(raw, {"indexer_types": Field(str, many="list")}, "config.json").get("indexer_types")
    key = "indexer_types"
    if given is None and raw.get("index_topk_pattern") is not None:
        pattern, key = raw["index_topk_pattern"], "index_topk_pattern"
        letters = {"F": "full", "S": "shared"}
        if isinstance(pattern, str) and set(pattern) <= set(letters):
            given = [letters[c] for c in pattern]
        elif isinstance(pattern, list):
            given = pattern
        else:
            raise ConfigError(f"config.json index_topk_pattern {pattern!r:.80} must be a string of F (full) and S (shared) "
                              "or a list of indexer types, one per layer: correct it")
    if given is None:
        freq, offset = max(raw.get("index_topk_freq") or 1, 1), raw.get("index_skip_topk_offset", 2)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (freq, offset)):
            raise ConfigError(f"config.json index_topk_freq={freq!r} and index_skip_topk_offset={offset!r} must be integers: "
                              "correct them")
        return ["full" if max(i - offset + 1, 0) % freq == 0 else "shared" for i in range(n)]
    if len(given) < n or any(t not in INDEXER_TYPES for t in given[:n]) or given[0] != "full":
        raise ConfigError(f"config.json {key} {given!r:.80} must give full or shared for each of the {n} layers, the first "
                          "full (a shared layer reuses the selection of a full one before it; transformers fails otherwise): "
                          "correct it")
    return list(given[:n])


def glm_moe_dsa_defaults(raw: dict) -> dict:
    shared = tuple(i for i, t in enumerate(indexer_types(raw)) if t == "shared")
    return dict(deepseek_v32_defaults(raw), indexer=indexer(raw, interleaved=True, shared=shared))


ARCHITECTURES = (Architecture(
    name="GlmMoeDsaForCausalLM", module=SparseLatentCausalLM, weight_map=sparse_weight_map(weight_map),
    hf_model_type="glm_moe_dsa", config_defaults=glm_moe_dsa_defaults, common_names=v32_names,
    ignored_keys=V32.ignored_keys,
    # transformers ignores the multi-token prediction layer GLM-5's checkpoints keep as layer 78
    ignore=(r".*rotary_emb\.inv_freq$", r"^model\.layers\.78\."),
    # GlmMoeDsaConfig's field defaults (GLM-5's shapes), DeepseekV32Config's where it has none of its own
    hf_defaults=dict(V32.hf_defaults, vocab_size=154880, hidden_size=6144, intermediate_size=12288, num_hidden_layers=78,
                     num_attention_heads=64, num_key_value_heads=64, q_lora_rank=2048, v_head_dim=256, qk_nope_head_dim=192,
                     n_group=1, topk_group=1, max_position_embeddings=202752, rms_norm_eps=1e-5, index_n_heads=32),
    not_null=V32.not_null,
    # four layers: full, shared, full, shared indexers (interleaved rope), each keeping 5 keys
    tiny_config=dict(V32.tiny_config, num_hidden_layers=4, indexer_types=["full", "shared", "full", "shared"]),
),)
