"""What each field of config.json and generation_config.json may hold, checked before anything
reads a field (`check_config`, `check_generation_config`), and the option values the model files may
set (QK_NORMS, ROUTERS, ...). models/config_reading.py reads the checked fields into a ModelConfig."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from jaxllm.errors import ConfigError

QK_NORMS = ("none", "per_head", "projection", "layernorm", "layernorm_per_head", "l2", "unit")
ROUTERS = ("softmax_topk", "topk_softmax", "sparsemixer", "sigmoid_topk", "topk_sigmoid")
# How a group-limited router (router_groups > 1) scores each group of experts: "max" of its scores
# (DeepSeek-V2's group_limited_greedy), or the "top2" sum (DeepSeek-V3)
GROUP_SCORES = ("max", "top2", "top2_zero")  # top2_zero: the other groups' experts scored 0 for the choice (A.X-K2)
# Recurrent layer types (models/mixers.py): "linear_attention", a gated-DeltaNet layer
# (models/linear_attention.py); "conv", LFM2's gated short conv (models/short_conv.py); "mamba", a Mamba2
# layer (models/mamba2.py); "mamba1", a Mamba (v1) layer (models/mamba1.py), "mamba1_heads" Zamba's of several heads
# (mamba1.MultiHeadMamba); "lightning_attention", MiniMax's
# (models/lightning_attention.py: its config's "linear_attention", read as this); "kimi_delta_attention", Kimi-Linear's
# (linear_attention.KimiDeltaAttention: its config's "linear_attention" too); each only in the families whose
# "rwkv", RWKV-4's time mix (models/wkv.py); "mlstm", xLSTM's (models/mlstm.py); each only in the families whose
# ModelConfig.recurrent_kinds names it, refused elsewhere (config_checks.validated)
RECURRENT_TYPES = ("linear_attention", "conv", "mamba", "mamba1", "mamba1_heads", "lightning_attention", "kimi_delta_attention",
                   "rg_lru", "rwkv", "mlstm")
LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention") + RECURRENT_TYPES
ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn", "longrope", "proportional")

# What each field of config.json and generation_config.json may hold: one table per file, checked
# before anything reads a field. An absent field takes its default, and so does null unless the
# table says `null=False`; fields not listed are allowed and ignored.

MAX_SIZE = 2**31 - 1  # sizes, positions and token ids: int32 on the device
MAX_LAYERS = 1024  # deeper than any released model, and a bound on the (linear) build time
MAX_EXPERTS = 16384  # the weight map names every expert's tensors; DogeConfig saves 16,384 (128 x 128 keys) even for its dense models
MAX_HEADS = 2**16  # far beyond any released model's; per-head tables (ALiBi's, lightning attention's slopes) are built on the host


@dataclass(frozen=True)
class Field:
    """A field's type (int, float for any finite number, bool, str or dict) and, for numbers, its
    range [low, high] (`strict`: low itself excluded). `many`: "one" value, a "list" of them, or
    "either"; `empty`: whether an empty list or string is taken (False where transformers refuses
    one, or the code reading the field would take it for absent). `null`: whether null is taken as
    "absent" (False where the code reading the field has a default for absent only). `or_text`: a
    string is accepted as well, any (True: EXAONE 4's "LLLG" window pattern beside a number) or one
    of these (a tuple: Mamba's time_step_rank "auto")."""

    kind: type
    low: float | None = None
    high: float | None = None
    strict: bool = False
    many: str = "one"
    null: bool = True
    or_text: bool | tuple[str, ...] = False
    empty: bool = True

    def accepts(self, value) -> bool:
        if isinstance(value, list) and self.many != "one":
            return (self.empty or bool(value)) and all(map(self._accepts_one, value))
        return self.many != "list" and self._accepts_one(value)

    def _accepts_one(self, v) -> bool:
        if v == "" and not self.empty:
            return False
        if self.or_text and isinstance(v, str):
            return self.or_text is True or v in self.or_text
        if self.kind not in (int, float):
            return isinstance(v, self.kind)
        if isinstance(v, bool) or not isinstance(v, int if self.kind is int else (int, float)) or not -1e308 < v < 1e308:
            return False  # not a number, or one that float() cannot hold (NaN and infinities included)
        return (self.low is None or v > self.low or (v == self.low and not self.strict)) and (self.high is None or v <= self.high)

    def describe(self) -> str:
        noun = {int: "integer", float: "number", bool: "boolean (true or false)", str: "string", dict: "JSON object"}[self.kind]
        noun = noun if self.empty or self.many != "one" else "non-empty " + noun
        sign = {(0, True): "positive ", (0, False): "non-negative ", (1, False): "positive "}.get((self.low, self.strict), "")
        text = sign + noun + ("s" if self.many == "list" else "") + (f" <= {self.high}" if self.high is not None else "")
        if self.many == "list":
            return "a list of " + text if self.empty else "a non-empty list of non-empty " + text
        text = ("an " if text[0] in "aeiou" else "a ") + text
        texts = " or a non-empty string" if self.or_text is True else "".join(f' or "{t}"' for t in self.or_text or ())
        return text + (" or a list of them" if self.many == "either" else "") + texts


COUNT, LAYERS, INDEX, HEADS = Field(int, 1, MAX_SIZE), Field(int, 1, MAX_LAYERS), Field(int, 0, MAX_SIZE), Field(int, 1, MAX_HEADS)
EXPERTS = Field(int, 0, MAX_EXPERTS)
POSITIVE, NON_NEGATIVE = Field(float, 0, strict=True), Field(float, 0)
FRACTION, PROBABILITY = Field(float, 0, 1, strict=True), Field(float, 0, 1)
FLAG, NAME, OBJECT = Field(bool), Field(str), Field(dict)


def _given(rule: Field) -> Field:
    return dataclasses.replace(rule, null=False)


CONFIG_FIELDS = {
    "architectures": Field(str, many="list"), "model_type": NAME, "vocab_size": COUNT, "hidden_size": COUNT,
    # a list: a width per layer, which Gemma 3n reads (gemma3n.py) and require_fields refuses elsewhere
    "intermediate_size": Field(int, 1, MAX_SIZE, many="either", empty=False),
    "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": HEADS, "head_dim": COUNT,
    "max_position_embeddings": COUNT, "rms_norm_eps": NON_NEGATIVE, "layer_norm_eps": NON_NEGATIVE,
    "hidden_act": NAME, "tie_word_embeddings": FLAG, "attention_bias": FLAG, "mlp_bias": FLAG,
    "attention_out_bias": FLAG,  # Seed-OSS: o_proj's bias apart from q/k/v's
    # never applied at inference, but transformers builds its dropout from it, failing outside [0, 1] (null: most families)
    "attention_dropout": _given(PROBABILITY),
    "rope_theta": POSITIVE, "rope_scaling": OBJECT, "rope_parameters": OBJECT, "partial_rotary_factor": FRACTION,
    "original_max_position_embeddings": COUNT, "use_sliding_window": FLAG,
    # 0 is what transformers' Qwen2-MoE config saves for a window turned off (use_sliding_window false);
    # a window of 0 on a sliding layer is refused (config_checks.validated)
    "sliding_window": INDEX,
    "max_window_layers": _given(INDEX), "layer_types": Field(str, many="list", empty=False), "bos_token_id": INDEX,
    "eos_token_id": Field(int, 0, MAX_SIZE, many="either"), "pad_token_id": Field(int), "dtype": NAME, "torch_dtype": NAME,
    # Gemma
    "hidden_activation": NAME, "query_pre_attn_scalar": _given(POSITIVE), "attn_logit_softcapping": POSITIVE,
    "final_logit_softcapping": POSITIVE, "rope_local_base_freq": _given(POSITIVE),
    # a number (Gemma 3, EXAONE 4; 0 as EXAONE 4 saves it without a window) or EXAONE 4's "LLLG", read only
    # where layer_types is left out (gemma.alternating refuses what transformers cannot apply)
    "sliding_window_pattern": Field(int, 0, MAX_SIZE, null=False, or_text=True),
    "use_bidirectional_attention": Field(bool, or_text=True),  # Gemma 4's: "vision" or "all"
    # Gemma 4: per-layer embeddings, values as keys, shared kv layers, experts beside the MLP, the full layers' heads
    "vocab_size_per_layer_input": COUNT, "hidden_size_per_layer_input": INDEX, "attention_k_eq_v": FLAG,
    "num_kv_shared_layers": INDEX, "enable_moe_block": FLAG, "use_double_wide_mlp": FLAG, "top_k_experts": COUNT,
    "global_head_dim": COUNT, "num_global_key_value_heads": HEADS, "per_layer_config": OBJECT,
    # Gemma 3n: AltUp's streams and the one computed on, LAuReL's rank, each layer's gate sparsity in [0, 1]
    "altup_num_inputs": COUNT, "altup_active_idx": INDEX, "altup_correct_scale": FLAG,
    "laurel_rank": COUNT, "activation_sparsity_pattern": Field(float, 0, 1, many="list"),
    # GPT-NeoX and GPT-2 (its own spellings)
    "keep_window_size": _given(COUNT), "is_moe": FLAG,  # Doge's dynamic mask's kept keys, its cross-domain MoE switch
    "intermediate_multiple_size": COUNT, "dff": COUNT,  # GPT-NeoX-Japanese's MLP width over hidden_size, CTRL's MLP width
    "use_parallel_residual": FLAG, "rotary_pct": FRACTION, "rotary_emb_base": POSITIVE, "n_embd": COUNT, "n_layer": LAYERS, "n_head": HEADS, "n_positions": COUNT,
    "n_inner": COUNT, "layer_norm_epsilon": NON_NEGATIVE, "activation_function": NAME, "scale_attn_weights": _given(FLAG),
    "scale_attn_by_inverse_layer_idx": FLAG, "rotary_dim": COUNT, "multi_query": FLAG,  # GPTBigCode's and Falcon's one kv head
    "clip_qkv": POSITIVE,  # OLMo's and OLMoE's clamp of q, k and v
    "norm_eps": NON_NEGATIVE,  # Nemotron's
    "num_layers": LAYERS, "num_heads": HEADS, "window_size": COUNT,  # GPT-Neo's (its attention_types: gpt_neo.neo_layer_types)
    # Falcon's own keys
    "n_embed": COUNT, "num_kv_heads": HEADS, "ffn_hidden_size": COUNT, "activation": NAME, "bias": FLAG, "parallel_attn": FLAG,
    "new_decoder_architecture": FLAG, "alibi": FLAG, "num_ln_in_parallel_attn": COUNT,
    # MPT's own keys (its attention's, nested in attn_config: mpt.ATTN_FIELDS)
    "d_model": COUNT, "n_heads": HEADS, "n_layers": LAYERS, "max_seq_len": COUNT, "expansion_ratio": COUNT, "no_bias": FLAG,
    "learned_pos_emb": FLAG, "attn_config": OBJECT,
    "apply_residual_connection_post_layernorm": FLAG, "pretraining_tp": _given(COUNT), "slow_but_exact": FLAG,  # BLOOM's
    # Granite's scalings; Phi's q/k LayerNorm
    "embedding_multiplier": POSITIVE, "residual_multiplier": POSITIVE, "attention_multiplier": POSITIVE,
    "logits_scaling": POSITIVE, "qk_layernorm": FLAG, "use_post_norm": FLAG,  # HyperCLOVAX's norms of each residual branch
    "layer_rope_theta": Field(float, 0, many="list"),  # Granite SWA's rope base per layer (0: no rotary positions)
    # StarCoder 2's epsilon and biases; StableLM's q/k/v biases
    "norm_epsilon": NON_NEGATIVE, "use_bias": FLAG, "use_qkv_bias": FLAG,
    # SmolLM3's layers without rotary positions: a 0 per NoPE layer, else one every no_rope_layer_interval
    "no_rope_layers": Field(int, 0, 1, many="list"), "no_rope_layer_interval": COUNT,
    # mixtures of experts
    "num_local_experts": _given(EXPERTS), "num_experts": EXPERTS,  # null: Gemma 4's dense models (not_null elsewhere)
    "num_experts_per_tok": _given(COUNT), "moe_intermediate_size": INDEX,
    "norm_topk_prob": FLAG, "decoder_sparse_step": INDEX, "mlp_only_layers": Field(int, 0, MAX_SIZE, many="list"),
    "shared_expert_intermediate_size": COUNT, "qkv_bias": FLAG,  # Qwen2-MoE (a shared expert of width 0 is refused)
    "shared_intermediate_size": INDEX,  # GraniteMoeShared's (0: none)
    # Cohere2-MoE's shared experts, router, dense prefix layers (their width and window pattern)
    "num_shared_experts": INDEX, "shared_expert_combination_strategy": NAME, "expert_selection_fn": NAME,
    "prefix_dense_intermediate_size": COUNT, "prefix_dense_sliding_window_pattern": COUNT,
    "router_jitter_noise": _given(NON_NEGATIVE), "lm_head_bias": FLAG,  # PhiMoE's (null: MixtralConfig refuses it)
    "router_hidden_size": COUNT, "cca_time0": COUNT, "cca_time1": COUNT,  # Zaya's router MLP and CCA convolutions' kernels
    # Cohere's logit scale (null: its forward fails: Cohere's not_null; MPT's null default) and q/k LayerNorm
    # (use_bias: StableLM's, ERNIE 4.5's above)
    "logit_scale": POSITIVE, "use_qk_norm": FLAG,
    "swiglu_alpha": _given(POSITIVE), "swiglu_limit": _given(POSITIVE),  # gpt-oss's clamped SwiGLU
    # DeepSeek's multi-head latent attention (a null q_lora_rank: one q_proj) and routing
    "q_lora_rank": COUNT, "kv_lora_rank": COUNT, "qk_nope_head_dim": COUNT, "qk_rope_head_dim": COUNT, "v_head_dim": COUNT,
    "rope_interleave": FLAG, "n_routed_experts": EXPERTS, "n_shared_experts": INDEX, "first_k_dense_replace": INDEX,
    "routed_scaling_factor": POSITIVE, "n_group": COUNT, "topk_group": COUNT, "topk_method": NAME,
    "moe_topk": Field(int, 1, MAX_SIZE, many="either"),  # HunYuan's experts per token (a list: one per layer)
    # Llama 4: dense layers' width, expert layers, q/k L2 norm, chunked attention, NoPE layers' temperature tuning
    "intermediate_size_mlp": COUNT, "interleave_moe_layer_step": INDEX, "moe_layers": Field(int, 0, MAX_SIZE, many="list"),
    "attention_chunk_size": COUNT, "attn_temperature_tuning": FLAG, "floor_scale": POSITIVE, "attn_scale": NON_NEGATIVE,
    # ERNIE 4.5 MoE's experts and where they are (moe_layer_end_index -1: the last layer)
    "moe_num_experts": EXPERTS, "moe_k": COUNT, "moe_num_shared_experts": INDEX, "moe_layer_start_index": INDEX,
    "moe_layer_end_index": Field(int, -1, MAX_SIZE), "moe_layer_interval": INDEX, "moe_norm_min": NON_NEGATIVE,
    # Qwen3-Next / Qwen3.5's gated-DeltaNet layers and where they are (every full_attention_interval-th layer full)
    # (null: OLMo Hybrid derives the heads' counts and sizes; Qwen's not_null), OLMo Hybrid's beta in [0, 2]
    "linear_conv_kernel_dim": _given(COUNT), "linear_key_head_dim": COUNT, "linear_value_head_dim": COUNT,
    "linear_num_key_heads": HEADS, "linear_num_value_heads": HEADS, "full_attention_interval": COUNT,
    "linear_allow_neg_eigval": _given(FLAG),
    # Kimi-Linear's KDA heads and conv (linear_attn_config: the same and its layer lists, kimi_linear.py), its attribute_map
    # keys (experts per token and in all, shared experts, groups, renormalisation, positions)
    "linear_attn_config": OBJECT, "linear_head_dim": COUNT, "linear_num_heads": HEADS, "num_experts_per_token": _given(COUNT),
    "num_expert_group": COUNT, "moe_renormalize": FLAG, "model_max_length": COUNT,
    # Bailing-Hybrid's KDA conv, its layer groups (the last of each full attention) and bounded KDA forget gate
    # MiniMax-M3's dense and shared MLP widths, block-sparse layers' key blocks (and their legacy nested spellings)
    "dense_intermediate_size": COUNT, "index_block_size": COUNT, "index_topk_blocks": COUNT, "index_local_blocks": INDEX,
    "sparse_attention_config": OBJECT,
    # Kolibri 1.1's indexed attention (its pool, blocks, scoring heads, sink and local keys), the layers choosing a pool,
    # each layer's source of keys and values, its dense MLPs' width (index_topk: each family's own check)
    "index_pool_size": COUNT, "index_compression": COUNT, "index_num_heads": COUNT, "index_num_local_tokens": INDEX,
    "index_num_sink_tokens": INDEX, "index_layers": Field(int, 0, MAX_SIZE, many="list"),
    "kv_source_layers": Field(int, 0, MAX_SIZE, many="list"), "mlp_only_intermediate_size": INDEX,
    # HRM-Text's recurrence: H_cycles of L_cycles passes of its L stack then one of its H stack, num_layers_per_stack
    # layers each (num_hidden_layers: every pass's layer, which its config class derives from the per-stack count)
    "H_cycles": COUNT, "L_cycles": COUNT, "num_layers_per_stack": LAYERS, "embedding_scale": Field(float),
    "prefix_lm": FLAG, "L_bp_cycles": Field(int, many="list"),
    # Ergo's dense layers (their count and width), its routed experts' scale, every how many layers one is full (any
    # nonzero integer, as its config's modulo reads it) and those layers' logit scale, its window's alias
    "first_dense_intermediate_size": COUNT, "num_dense_blocks": INDEX, "moe_routed_scaling_factor": Field(float),
    "global_attention_every_n_layers": Field(int), "global_attention_scale": NON_NEGATIVE, "local_attention_window": INDEX,
    "short_conv_kernel_size": COUNT, "layer_group_size": COUNT, "kda_safe_gate": FLAG, "kda_lower_bound": Field(float),
    # LongCat-Flash's expert width and zero-computation experts, its router's bias, its query heads' width (its layers:
    # num_layers, each two of ours)
    "expert_ffn_hidden_size": COUNT, "zero_expert_num": INDEX, "router_bias": FLAG, "qk_head_dim": COUNT,
    # LFM2's short convs and where they are (without layer_types: attention on full_attn_idxs), its MLP width's
    # adjustment, its older spellings of tie_word_embeddings and intermediate_size; LFM2-MoE's dense layers, expert bias
    "conv_L_cache": COUNT, "conv_bias": FLAG, "full_attn_idxs": Field(int, 0, MAX_SIZE, many="list"),
    "block_auto_adjust_ff_dim": FLAG, "block_ffn_dim_multiplier": POSITIVE, "block_multiple_of": COUNT,
    "tie_embedding": FLAG, "block_ff_dim": COUNT, "num_dense_layers": INDEX, "use_expert_bias": FLAG,
    "use_sandwich_norm": FLAG, "use_attention_gate": FLAG,  # LFM3's (null: not_null)
    # RecurrentGemma's RG-LRU width (null: hidden_size), its conv's taps, its blocks ("recurrent" or "attention", repeated
    # over the layers), its attention's window and the logits' soft cap
    "lru_width": COUNT, "conv1d_width": COUNT, "block_types": Field(str, many="list", empty=False),
    "attention_window_size": COUNT, "logits_soft_cap": POSITIVE,
    # MiniMax-Text-01's lightning attention blocks and residual factors (its layer: models/minimax.py)
    "block_size": COUNT, **{f"{part}_{ab}_factor": Field(float) for part in ("full_attn", "linear_attn", "mlp") for ab in ("alpha", "beta")},
    # Granite 4.0's Mamba2 layers (mamba_d_head: a number or "auto"; time_step_limit, holding Infinity: granitemoehybrid.py),
    # its rope switch (null: no positions)
    "mamba_n_heads": _given(HEADS), "mamba_n_groups": _given(COUNT), "mamba_d_state": _given(COUNT),
    "mamba_d_head": Field(int, 1, MAX_SIZE, null=False, or_text=("auto",)), "mamba_d_conv": _given(COUNT),
    "mamba_expand": _given(COUNT), "mamba_chunk_size": _given(COUNT), "mamba_conv_bias": _given(FLAG), "mamba_proj_bias": _given(FLAG),
    "position_embedding_type": NAME, "attn_layer_indices": Field(int, 0, MAX_SIZE, many="list"),  # Bamba's attention layers
    "layers_block_type": Field(str, many="list"),
    # Nemotron-H's blocks (hybrid_override_pattern: a string of M, *, - and E; nemotron_h.py) and Mamba2 keys, shared with
    # Mamba2's own (num_heads, head_dim; state_size, conv_kernel, expand as Mamba's below; chunk_size, the chunk its scan divides
    # the tokens by); its MLP's and mixers' activations
    "hybrid_override_pattern": Field(str, null=False), "mamba_num_heads": _given(HEADS), "mamba_head_dim": _given(COUNT),
    "ssm_state_size": _given(COUNT), "n_groups": _given(COUNT), "chunk_size": _given(COUNT), "time_step_min": _given(NON_NEGATIVE),
    "mlp_hidden_act": _given(NAME), "mamba_hidden_act": _given(NAME), "mamba_dt_min": _given(NON_NEGATIVE),
    "moe_shared_expert_intermediate_size": _given(INDEX), "moe_latent_size": COUNT,
    # Falcon-H1's Mamba2 width, its gated norm, out_proj's bias and its muP multipliers (falcon_h1.py)
    "mamba_d_ssm": COUNT, "mamba_rms_norm": FLAG, "mamba_norm_before_gate": FLAG, "projectors_bias": FLAG,
    "lm_head_multiplier": Field(float), "key_multiplier": Field(float), "attention_in_multiplier": Field(float),
    "attention_out_multiplier": Field(float), "ssm_in_multiplier": Field(float), "ssm_out_multiplier": Field(float),
    "mlp_multipliers": Field(float, many="list"), "ssm_multipliers": Field(float, many="list"),
    # Zamba2's Mamba2 heads and groups, its shared blocks and their adapters, rope switch, biases, long-context switch
    "n_mamba_heads": _given(HEADS), "mamba_ngroups": _given(COUNT), "num_mem_blocks": _given(COUNT), "adapter_rank": _given(COUNT),
    "use_shared_attention_adapter": _given(FLAG), "use_mem_rope": _given(FLAG), "add_bias_linear": _given(FLAG),
    "use_long_context": _given(FLAG),
    # Zamba's (and Zamba2's, derived and saved) attention width and head size; its Mamba mixers' conv activation
    "attention_hidden_size": COUNT, "attention_head_dim": COUNT, "hidden_mamba_act": _given(NAME),
    # Mamba's and FalconMamba's own keys (time_step_rank: a number or "auto"), Jamba's layer pattern and Mamba keys
    "state_size": _given(COUNT), "expand": _given(COUNT), "conv_kernel": _given(COUNT), "use_conv_bias": _given(FLAG),
    "time_step_rank": Field(int, 1, MAX_SIZE, null=False, or_text=("auto",)), "residual_in_fp32": _given(FLAG),
    "mixer_rms_eps": _given(NON_NEGATIVE), "attn_layer_period": _given(COUNT), "attn_layer_offset": _given(INDEX),
    "expert_layer_period": _given(COUNT), "expert_layer_offset": _given(INDEX),
    "mamba_dt_rank": Field(int, 1, MAX_SIZE, null=False, or_text=("auto",)),
    # RWKV's (rwkv.py): its context (max_position_embeddings' alias), its time mix's width (attention_hidden_size, with
    # Zamba2's above; null: hidden_size), the layers
    # between its inference-time halvings (0 or less: none)
    "context_length": _given(COUNT), "rescale_every": _given(Field(int)),
    # xLSTM's (xlstm.py): its aliases of hidden_size and num_hidden_layers, the mLSTM's widths, gate caps and epsilon, its
    # gated MLP's width (ffn_proj_factor x hidden_size, rounded up to a multiple), the logits' cap, the weights' layout and
    # the run mode (refused but for what jaxllm computes), the float32 norms and state
    "embedding_dim": COUNT, "num_blocks": LAYERS, "qk_dim_factor": _given(POSITIVE), "v_dim_factor": _given(POSITIVE),
    "gate_soft_cap": _given(POSITIVE), "eps": _given(NON_NEGATIVE), "ffn_proj_factor": _given(POSITIVE),
    "ffn_round_up_to_multiple_of": _given(COUNT), "output_logit_soft_cap": _given(POSITIVE), "weight_mode": _given(NAME),
    "mode": _given(NAME), "norm_reduction_force_float32": _given(FLAG), "inference_state_dtype": _given(NAME),
    "add_out_norm": _given(FLAG), "max_inference_chunksize": _given(COUNT),
    # fairseq's decoders: OPT's norm placement, biases, affine norms, token embedding width, final norm; XGLM's
    # own spellings (d_model: MPT's above); the embeddings times sqrt(hidden) (BioGPT, XGLM)
    "ffn_dim": COUNT, "do_layer_norm_before": FLAG, "enable_bias": FLAG, "layer_norm_elementwise_affine": FLAG,
    "word_embed_proj_dim": COUNT, "_remove_final_layer_norm": FLAG, "attention_heads": HEADS,
    "scale_embedding": FLAG,
    # DBRX's nested ffn_config (its fields: models/dbrx.py); its other spellings are MPT's, above
    "ffn_config": OBJECT,
    # Mllama's cross-attention layers (skipped for text: models/mllama.py; an entry outside the layers names none)
    "cross_attention_layers": Field(int, many="list"),
    # ModernBERT-decoder's (modernbert_decoder.py): its window (local_attention // 2 tokens), rope bases
    # per layer type, its norms' and heads' biases, its prediction head's activation
    "local_attention": INDEX, "global_rope_theta": _given(POSITIVE),
    "local_rope_theta": _given(POSITIVE), "norm_bias": FLAG, "decoder_bias": FLAG, "classifier_bias": FLAG,
    "classifier_activation": NAME,
    "afn": NAME,  # OpenAI GPT's activation
}
# quantization_config methods whose checkpoints jaxllm reads (dequantized as they load) for the
# families (model_type) that ship them: gpt-oss's MXFP4 experts (mxfp4.mxfp4_names).
READ_QUANT_METHODS = {"mxfp4": ("gpt_oss",)}
# Inside rope_parameters / rope_scaling (or each of its per-layer-type entries).
# rope_type given as null or "": transformers looks that type up (a KeyError)
ROPE_FIELDS = {
    "rope_type": Field(str, null=False, empty=False), "type": NAME, "rope_theta": POSITIVE, "factor": POSITIVE, "partial_rotary_factor": FRACTION,
    "original_max_position_embeddings": COUNT, "low_freq_factor": POSITIVE, "high_freq_factor": POSITIVE,
    "attention_factor": POSITIVE, "beta_fast": POSITIVE, "beta_slow": POSITIVE, "mscale": NON_NEGATIVE,
    "mscale_all_dim": NON_NEGATIVE, "truncate": FLAG, "short_factor": Field(float, 0, strict=True, many="list"),
    "long_factor": Field(float, 0, strict=True, many="list"),
    "alpha": NON_NEGATIVE,  # HunYuan's NTK alpha (0: none)
    "llama_4_scaling_beta": NON_NEGATIVE,  # Ministral 3's query scaling
}
GENERATION_FIELDS = {
    "do_sample": FLAG, "temperature": NON_NEGATIVE, "top_k": INDEX, "top_p": PROBABILITY, "min_p": PROBABILITY,
    "repetition_penalty": POSITIVE, "max_new_tokens": COUNT, "min_new_tokens": INDEX, "max_length": COUNT, "min_length": INDEX,
    "eos_token_id": CONFIG_FIELDS["eos_token_id"],
}
REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


def check_fields(raw, fields: dict[str, Field], where: str, prefix: str = "") -> dict:
    """`raw`, or a ConfigError naming the first field whose value `fields` does not allow."""
    if not isinstance(raw, dict):
        if prefix:
            raise _refused(where, prefix[:-1], OBJECT, raw)
        raise ConfigError(f"{where} must hold a JSON object ({{\"field\": value, ...}}), got {_shown(raw)}: fix the file")
    for key, rule in fields.items():
        value = raw.get(key)
        if (value is not None and not rule.accepts(value)) or (value is None and key in raw and not rule.null):
            raise _refused(where, prefix + key, rule, value)
    return raw


def check_config(raw, where: str = "config.json", prefix: str = "") -> dict:
    """A config.json dict, checked field by field: CONFIG_FIELDS, and ROPE_FIELDS inside its rope
    settings (which may hold one entry per layer type, as parse_rope reads them). `prefix`: where
    the dict lies in the file ("text_config." for a multimodal model's text config), for the errors."""
    check_fields(raw, CONFIG_FIELDS, where, prefix)
    quantized = raw.get("quantization_config")
    if quantized is not None and not read_quantized(raw):  # FP8 / GPTQ / AWQ / bitsandbytes weights: their tensors are not the float ones we read
        method = quantized.get("quant_method", "?") if isinstance(quantized, dict) else "?"
        raise ConfigError(f"{where} has a {prefix}quantization_config (quant_method {str(method)[:40]!r}): jaxllm reads float "
                          "(float32, bfloat16, float16) weights; use the model's unquantized checkpoint (quantize='int8' "
                          "or 'int4' quantizes it while loading)")
    for key in ("rope_parameters", "rope_scaling"):
        rope = raw.get(key) or {}
        # entries per layer type, each an object: ours, or a family's own type names (Zaya's "hybrid") holding one
        per_type = [t for t in LAYER_TYPES if rope.get(t) is not None]
        per_type += [t for t, entry in rope.items() if t not in ROPE_FIELDS and t not in LAYER_TYPES and isinstance(entry, dict)]
        for sub in per_type or [None]:
            check_fields(rope[sub] if sub else rope, ROPE_FIELDS, where, f"{prefix}{key}.{sub}." if sub else f"{prefix}{key}.")
    return raw


def read_quantized(raw: dict) -> str | None:
    """The quant_method of config.json's quantization_config where jaxllm reads such checkpoints
    for its model_type (READ_QUANT_METHODS), else None."""
    quantized = raw.get("quantization_config")
    method = quantized.get("quant_method") if isinstance(quantized, dict) else None
    return method if raw.get("model_type") in READ_QUANT_METHODS.get(method, ()) else None


def check_generation_config(raw, where: str = "generation_config.json") -> dict:
    return check_fields(raw, GENERATION_FIELDS, where)


def _refused(where: str, name: str, rule: Field, value) -> ConfigError:
    return ConfigError(f"{where} '{name}' must be {rule.describe()}, got {_shown(value)}: correct that field")


def _shown(value) -> str:
    text = json.dumps(value, default=repr)  # as the file spells it: null, true, "64"
    return text if len(text) <= 60 else text[:57] + "..."


def require_fields(raw: dict, where: str = "config.json") -> tuple:
    """The REQUIRED fields' values, or a ConfigError naming the first one missing."""
    for key in REQUIRED:
        if raw.get(key) is None:
            raise ConfigError(f"{where} has no '{key}': add it (it is required for this architecture)")
        if isinstance(raw[key], list):  # intermediate_size: a family reading one per layer reads it before (gemma3n.py)
            raise ConfigError(f"{where} '{key}' is a list (a value per layer), which this architecture does not read: "
                              "give one value")
    return tuple(raw[key] for key in REQUIRED)


def token_ids(value) -> tuple[int, ...]:
    """An id field of config.json or generation_config.json (null, one id or a list) as a tuple."""
    if value is None:
        return ()
    if isinstance(value, int):
        return (value,)
    return tuple(int(v) for v in value)


def check_eos(ids, vocab_size: int, where: str) -> None:
    """A ConfigError for an eos_token_id (of config.json or generation_config.json) the model
    could never emit: generation would never stop there."""
    outside = [i for i in ids if i >= vocab_size]
    if outside:
        raise ConfigError(f"{where} eos_token_id {outside[0]} lies outside the vocabulary ({vocab_size} tokens), so "
                          "generation could never stop there: correct eos_token_id")


def check_layer_count(count: int, how: str) -> int:
    """`count`, the layers a family unrolls from its config (`how`: the fields whose values make it, as the message
    names them), or a ConfigError beyond MAX_LAYERS: checked before any list or module is built per layer (a loop count
    of 10**12 once ran out of memory, a cycle count of 10**6 built for minutes)."""
    if count > MAX_LAYERS:
        raise ConfigError(f"config.json {how} make {count:,} layers, more than the {MAX_LAYERS} jaxllm builds (deeper than any "
                          "released model): correct those fields")
    return count


def known_layer_types(types, allowed: tuple[str, ...], family: str, why: str) -> tuple[str, ...]:
    """`types` as a tuple, or a ConfigError for the first that is not one of `allowed`, the layer types
    `family`'s layers run (`why`: what transformers does with another)."""
    for kind in types:
        if kind not in allowed:
            raise ConfigError(f"config.json layer type '{kind}' is not one {family} layers run ({why}): use {' or '.join(allowed)}")
    return tuple(types)
