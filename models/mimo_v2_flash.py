"""MiMo-V2-Flash (MiMoV2FlashForCausalLM, Xiaomi): GLM-4.7-Flash's layer (models/glm4_moe_lite.py: DeepSeek-V3's
experts on the layers mlp_layer_types calls sparse) with grouped-query attention in place of latent attention,
every difference an option of the shared `Attention`:

- query and key heads head_dim wide, value heads v_head_dim (`v_head_dim`: zero-padded for the KV backends), the
  values times attention_value_scale (`value_scale`; null: 1); q/k/v biases where attention_bias, o_proj's never;
- sliding-window layers with twice num_key_value_heads kv heads (`num_kv_heads`; the full layers' `global_kv_heads`)
  and attention sinks (attention_sink_bias, `attn_sink_layers`);
- a rope per layer type (rope_parameters keyed by full_attention / sliding_attention: `local_rope`), each rotating
  the first int(head_dim * partial_rotary_factor) dims (0.334 where an entry leaves it out) in halves;
- DeepSeek-V3's router (sigmoid scores, the score bias, groups, renormalised, routed_scaling_factor: null 1) with no
  shared experts; router and score bias float32.

Its config reads sliding_window_size (SGLang's window, one short of transformers') as sliding_window =
sliding_window_size + 1; a flat rope_parameters (or rope_scaling, which becomes one) fails in transformers and is
refused. The checkpoints' multi-token-prediction module model.mtp.* is not read."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig, parse_rope
from jaxllm.models.config_fields import COUNT, INDEX, Field, check_fields
from jaxllm.models.decoder import CausalLM
from jaxllm.models.deepseek import EXPERTS, sigmoid_router
from jaxllm.models.glm4_moe_lite import mlp_layer_types
from jaxllm.models.moe import moe_weight_map
from jaxllm.models.weights import WeightSpec

OWN_FIELDS = {"v_head_dim": COUNT, "attention_value_scale": Field(float), "sliding_window_size": INDEX}
ROPE_TYPES = ("full_attention", "sliding_attention")


def layer_type_ropes(raw: dict, types, partial: float, defaults: dict) -> dict:
    """rope and local_rope of a family whose rotary embedding reads rope_parameters per layer type (MiMo-V2-Flash's and
    Laguna's, Gemma 3's rotary class with a partial factor): `defaults` where rope_parameters is null; each entry's
    partial_rotary_factor `partial` where left out. Refused where transformers fails: a flat rope (rope_scaling becomes
    one, null or not), an entry of a used layer type missing or without rope_theta, a rope type other than default (its rope class
    reads no other), an odd number of rotated dims."""
    if "rope_scaling" in raw:
        raise ConfigError("config.json rope_scaling (null too) takes the place of rope_parameters in transformers' config, "
                          "whose rope for this family then cannot read it per layer type: remove it (give rope_parameters per "
                          "layer type: full_attention, sliding_attention)")
    ropes = defaults if raw.get("rope_parameters") is None else raw["rope_parameters"]  # {}: no entry (transformers fails)
    if not all(isinstance(ropes.get(t), dict) for t in set(types)):
        raise ConfigError(f"config.json rope_parameters must give an entry for each layer type it uses ({', '.join(sorted(set(types)))}), "
                          "which transformers reads per layer type: give rope_parameters per layer type")
    out = {}
    for kind in set(types):
        entry = ropes[kind]
        if entry.get("rope_theta") is None or (entry.get("rope_type") or entry.get("type") or "default") != "default" or (
                "partial_rotary_factor" in entry and entry["partial_rotary_factor"] is None):  # transformers multiplies by it
            raise ConfigError(f"config.json rope_parameters.{kind} must be a default rope with a rope_theta and a non-null "
                              "partial_rotary_factor if any (transformers' rope for this family computes no other): give rope_type "
                              "default and rope_theta")
        rope = parse_rope({"rope_parameters": {"full_attention": dict(entry, partial_rotary_factor=entry.get("partial_rotary_factor") or partial)}})
        dims = int(raw["head_dim"] * rope.partial_rotary_factor)
        if dims % 2:
            raise ConfigError(f"config.json rope_parameters.{kind} rotates {dims} dims of each head (head_dim x partial_rotary_factor), "
                              "an odd number, which rotary embeddings cannot turn in pairs: correct partial_rotary_factor")
        out[kind] = rope
    return dict(rope=out.get("full_attention", out.get("sliding_attention")), local_rope=out.get("sliding_attention"))


def mimo_names(raw: dict) -> dict:
    """The experts under num_local_experts (MiMoV2FlashConfig's attribute_map alias, which wins); sliding_window from
    sliding_window_size + 1 where given."""
    check_fields(raw, OWN_FIELDS, "config.json")
    if "num_local_experts" in raw:
        raw = dict(raw, n_routed_experts=raw["num_local_experts"])
    if raw.get("sliding_window_size") is not None:
        raw = dict(raw, sliding_window=raw["sliding_window_size"] + 1)
    if raw.get("layer_types") is None:  # the first layer and every 6th full, the others sliding
        raw = dict(raw, layer_types=["full_attention" if i == 0 or not (i + 1) % 6 else "sliding_attention"
                                     for i in range(raw["num_hidden_layers"])])
    return raw


MIMO_ROPE = {"full_attention": {"rope_type": "default", "rope_theta": 5_000_000.0, "partial_rotary_factor": 0.334},
             "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0, "partial_rotary_factor": 0.334}}


def mimo_defaults(raw: dict) -> dict:
    heads, kv, experts = raw["num_attention_heads"], raw["num_key_value_heads"], raw["n_routed_experts"]
    types = raw["layer_types"]
    if "sliding_attention" in types and heads % (2 * kv):
        raise ConfigError(f"config.json num_attention_heads={heads} is not a multiple of the sliding layers' {2 * kv} kv heads "
                          "(twice num_key_value_heads; transformers fails grouping them): correct num_key_value_heads")
    if not experts:
        raise ConfigError(f"config.json n_routed_experts={experts} leaves the sparse layers no experts (transformers' router "
                          "fails): give the checkpoint's n_routed_experts")
    if raw["v_head_dim"] > raw["head_dim"]:
        raise ConfigError(f"config.json v_head_dim={raw['v_head_dim']} is wider than head_dim={raw['head_dim']}, which jaxllm's "
                          "attention does not run (its values are padded to the keys' width): use a v_head_dim <= head_dim")
    scale = raw.get("attention_value_scale")
    sliding = tuple(i for i, t in enumerate(types) if t == "sliding_attention")
    return dict(
        layer_type_ropes(raw, types, 0.334, MIMO_ROPE), qkv_bias=bool(raw["attention_bias"]), o_bias=False, mlp_bias=False,
        num_kv_heads=2 * kv, global_kv_heads=kv, v_head_dim=raw["v_head_dim"], value_scale=1.0 if scale is None else float(scale),
        attn_sinks=bool(sliding), attn_sink_layers=sliding, **sigmoid_router(raw), num_experts=experts,
        experts_per_token=raw["num_experts_per_tok"], moe_intermediate_size=raw["moe_intermediate_size"],
        routed_scaling=float(raw.get("routed_scaling_factor") or 1.0),
        dense_layers=tuple(i for i, t in enumerate(mlp_layer_types(raw, 1)) if t == "dense"),
    )


def mimo_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """The experts' map (DeepSeek-V3's names, no shared experts), each sliding layer's sinks named attention_sink_bias."""
    return [WeightSpec(s.hf_name.removesuffix(".sinks") + ".attention_sink_bias", s.path) if s.path[-1] == "sinks" else s
            for s in moe_weight_map("mlp", EXPERTS)(cfg)]


ARCHITECTURES = (Architecture(
    name="MiMoV2FlashForCausalLM", module=CausalLM, weight_map=mimo_weight_map, hf_model_type="mimo_v2_flash",
    config_defaults=mimo_defaults, common_names=mimo_names, partial_rotary=True,
    # its config class has no first_k_dense_replace, n_shared_experts or use_qk_norm (Glm4MoeConfig's, removed), and its
    # rotary embedding reads rope_parameters alone
    ignored_keys=("first_k_dense_replace", "n_shared_experts", "use_qk_norm", "mlp_bias", "rope_theta", "partial_rotary_factor",
                  "use_sliding_window"),
    ignore=(r".*rotary_emb\..*inv_freq$", r"^model\.mtp\."),
    # MiMoV2FlashConfig's field defaults (MiMo-V2-Flash's shapes)
    hf_defaults=dict(vocab_size=152576, hidden_size=4096, intermediate_size=16384, num_hidden_layers=48, num_attention_heads=64,
                     num_key_value_heads=4, max_position_embeddings=131072, rms_norm_eps=1e-5, attention_bias=False,
                     moe_intermediate_size=2048, num_experts_per_tok=8, n_routed_experts=256, routed_scaling_factor=1.0,
                     n_group=1, topk_group=1, norm_topk_prob=True, bos_token_id=1, head_dim=192, v_head_dim=128,
                     sliding_window=129, attention_value_scale=0.707),
    not_null=NOT_NULL + ("rms_norm_eps", "hidden_act", "num_key_value_heads", "head_dim", "v_head_dim", "attention_bias", "moe_intermediate_size",
                             "num_experts_per_tok", "n_routed_experts", "num_local_experts", "n_group", "topk_group",
                             "norm_topk_prob", "sliding_window"),
    # layer 0 full and dense; layers 1 and 2 sliding (window 8, twice the kv heads, sinks) and routed: 8 experts in 4
    # groups (top 2 from the best 2), renormalised, scaled; value heads narrower than key heads, scaled; a rope per
    # layer type, each rotating part of the head; q/k/v biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, moe_intermediate_size=32, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=1, head_dim=24, v_head_dim=16, attention_value_scale=0.8,
                     max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False, attention_bias=True,
                     layer_types=["full_attention", "sliding_attention", "sliding_attention"], sliding_window=8,
                     rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.334},
                                      "sliding_attention": {"rope_type": "default", "rope_theta": 5000.0, "partial_rotary_factor": 0.5}},
                     n_routed_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, norm_topk_prob=True,
                     routed_scaling_factor=1.5, mlp_layer_types=["dense", "sparse", "sparse"], bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
