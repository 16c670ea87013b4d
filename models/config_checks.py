"""The checks of a built ModelConfig whose fields contradict each other (a sliding layer without a window, more
experts per token than experts, heads that do not group), each a one-line ConfigError; config_fields checks each
field of config.json alone, before any is read."""

from __future__ import annotations

from jaxllm.errors import ConfigError
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import GROUP_SCORES, LAYER_TYPES, QK_NORMS, RECURRENT_TYPES, ROUTERS, check_eos, check_layer_count


def validated(cfg: ModelConfig) -> ModelConfig:
    """`cfg`, or a ConfigError naming the first field that contradicts another."""
    check_layer_count(cfg.num_layers, f"the layer counts of this {cfg.architecture}")  # a family's own unrolling, past the table's bound
    for name, allowed in (("qk_norm", QK_NORMS), ("router", ROUTERS), ("router_group_score", GROUP_SCORES)):
        if getattr(cfg, name) not in allowed:  # a model file's bug, not the user's
            raise ValueError(f"{name} {getattr(cfg, name)!r} is not one of {allowed}")
    for t in cfg.layer_types:
        if t not in LAYER_TYPES:
            raise ConfigError(f"config.json layer type '{t}' is not supported; use {', '.join(LAYER_TYPES)}")
    _check_recurrent(cfg)
    if "sliding_attention" in cfg.layer_types and cfg.sliding_window == 0:
        raise ConfigError("config.json sliding_window is 0, a window in which a token sees no key at all (transformers fails "
                          "running it): set it to the window's width in tokens, or turn the window off (Qwen: "
                          "use_sliding_window false; Mistral, Mixtral, Phi-3: sliding_window null)")
    if "sliding_attention" in cfg.layer_types and not cfg.sliding_window:
        raise ConfigError("config.json asks for sliding_attention layers but sets no 'sliding_window': add it")
    if "chunked_attention" in cfg.layer_types and not cfg.attention_chunk:
        raise ConfigError("config.json asks for chunked_attention layers but sets no 'attention_chunk_size': add it")
    rotary = cfg.position_embedding == "rope" and any(cfg.layer_rope(i) is not None for i in range(cfg.num_layers))
    if rotary and cfg.rotary_dim % 2:  # rotated in pairs; learned positions (GPT-2) and NoPE layers rotate nothing
        if cfg.mla is not None:
            raise ConfigError(f"config.json qk_rope_head_dim {cfg.rotary_dim} must be even, as rotary embeddings turn pairs of "
                              "values: correct qk_rope_head_dim")
        fix = ("correct partial_rotary_factor" if cfg.rope.partial_rotary_factor != 1 else
               "correct head_dim (hidden_size / num_attention_heads where config.json gives no head_dim)")
        raise ConfigError(f"config.json rotary dimension {cfg.rotary_dim} (head_dim {cfg.head_dim} x partial_rotary_factor "
                          f"{cfg.rope.partial_rotary_factor:g}) must be even, as rotary embeddings turn pairs of values: {fix}")
    for rope in (cfg.rope, cfg.local_rope):
        for key in ("short_factor", "long_factor"):
            factors = getattr(rope, key, None)
            if factors is not None and len(factors) != cfg.rotary_dim // 2:
                raise ConfigError(
                    f"config.json rope '{key}' has {len(factors)} entries; rotary dimension {cfg.rotary_dim} needs "
                    f"{cfg.rotary_dim // 2}"
                )
    check_eos(cfg.eos_token_ids, cfg.vocab_size, "config.json")
    _check_experts(cfg)
    return cfg


def _check_experts(cfg: ModelConfig) -> None:
    """A ConfigError where the router cannot pick num_experts_per_tok of the experts (transformers fails there)."""
    routed = set(range(cfg.num_layers)) - set(cfg.dense_layers)  # the layers a family whose 0 experts mean dense marks dense
    if cfg.experts_per_token and not cfg.num_experts and routed:  # or picks none (experts_per_token 0)
        raise ConfigError(f"config.json gives the experts' count (num_local_experts, num_experts or n_routed_experts, as the "
                          f"family names it) as 0, while num_experts_per_tok={cfg.experts_per_token} routes each token to "
                          "experts (transformers' router fails): give the checkpoint's number of experts")
    if cfg.num_experts and not 0 < cfg.experts_per_token <= cfg.num_experts:
        raise ConfigError(
            f"config.json num_experts_per_tok={cfg.experts_per_token} must lie in [1, {cfg.num_experts}] (the number of experts)"
        )
    if cfg.num_experts and cfg.router_groups > 1:
        _check_groups(cfg)


def _check_recurrent(cfg: ModelConfig) -> None:
    """A ConfigError for recurrent layers of a kind the family does not build, or heads they cannot group."""
    for kind in sorted(set(cfg.layer_types) & set(RECURRENT_TYPES) - set(cfg.recurrent_kinds)):
        runs = f"it runs {', '.join(cfg.recurrent_kinds)} layers" if cfg.recurrent_kinds else "it has no recurrent layers"
        raise ConfigError(f"config.json asks for {kind} layers, which jaxllm's {cfg.architecture} does not have ({runs}): "
                          "use full_attention" + (" or those" if cfg.recurrent_kinds else " or sliding_attention"))
    if cfg.mamba_heads % cfg.mamba_groups:
        raise ConfigError(f"config.json mamba_n_heads={cfg.mamba_heads} is not a multiple of mamba_n_groups={cfg.mamba_groups}: "
                          "each group's B and C must serve a whole number of heads")
    if cfg.linear_key_heads and cfg.linear_value_heads % cfg.linear_key_heads:
        raise ConfigError(f"config.json linear_num_value_heads={cfg.linear_value_heads} is not a multiple of "
                          f"linear_num_key_heads={cfg.linear_key_heads}: each key head must serve a whole number of value heads")


def _check_groups(cfg: ModelConfig) -> None:
    """A ConfigError where group-limited routing cannot split or pick the groups (transformers fails there)."""
    groups, picked, experts = cfg.router_groups, cfg.router_topk_groups, cfg.num_experts
    if experts % groups:
        raise ConfigError(f"config.json n_group={groups} does not divide the {experts} routed experts into equal groups: "
                          "set n_group to a divisor of n_routed_experts")
    if picked > groups:
        raise ConfigError(f"config.json topk_group={picked} picks more groups than n_group={groups}: set topk_group <= n_group")
    if cfg.router_group_score == "top2" and experts // groups < 2:
        raise ConfigError(f"config.json n_group={groups} leaves {experts // groups} expert per group, and each group is scored "
                          "by its best two: set n_group to at most n_routed_experts / 2")
    if cfg.router_group_score == "top2" and cfg.experts_per_token > picked * (experts // groups):
        raise ConfigError(f"config.json num_experts_per_tok={cfg.experts_per_token} is more than the {picked * (experts // groups)} "
                          f"experts of the topk_group={picked} groups it may choose from: raise topk_group or lower num_experts_per_tok")
