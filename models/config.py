"""ModelConfig: the one description of a model's shape, its fields and what they derive per layer.

config_reading.from_hf builds one from a Hugging Face config.json (transformers v4 spellings, `rope_theta` and
`rope_scaling`, and v5's `rope_parameters`) and config_checks refuses one whose fields contradict each other.
Architecture-specific flags (q/k/v bias, q/k norm, ...) are filled in by the registry entry's `config_defaults`,
so this file knows no architecture by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from jaxllm.models.config_fields import RECURRENT_TYPES
from jaxllm.models.config_options import (  # noqa: F401 (re-exported)
    Alibi,
    Chunked,
    IndexerConfig,
    MlaConfig,
    QueryScale,
    RopeConfig,
    max_positions,
    parse_rope,
    rotary_fraction,
)


@dataclass(frozen=True)
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_position_embeddings: int
    norm_eps: float = 1e-6  # epsilon of every norm: rms_norm_eps, or layer_norm_eps (GPT-NeoX, GPT-2)
    rope: RopeConfig = field(default_factory=RopeConfig)
    hidden_act: str = "silu"
    tie_word_embeddings: bool = False
    # Attention variants, set per architecture by the registry's config_defaults.
    qkv_bias: bool = False
    o_bias: bool = False
    o_bias_layers: tuple[int, ...] | None = None  # the layers whose o_proj has o_bias's bias (None: all; GPT-NeoX-Japanese: the last)
    mlp_bias: bool = False
    gated_mlp: bool = True  # False: the decoder's MLP is down(act(up(x))), no gate_proj (Arcee)
    # BitNet: an RMSNorm of the attention output before o_proj (attn_sub_norm, over every head) and of the
    # gated MLP's product before down_proj (ffn_sub_norm)
    sub_norms: bool = False
    # DiffLlama's differential attention (models/diffllama.py): two softmax maps' outputs subtracted; its cache holds
    # values twice head_dim wide (each kv head's value beside its pair's, the keys zero-padded alike)
    differential_attention: bool = False
    # Cached key and value heads this many dims wider than head_dim (Doge: its dynamic mask's per-key bias as a key dim)
    kv_extra_dims: int = 0
    # "per_head": RMSNorm of each head (Qwen3); "projection": over all heads (OLMo 2); "layernorm":
    # LayerNorm, weight and bias, of each head (Phi's qk_layernorm); "layernorm_per_head": a LayerNorm
    # without bias, each head its own weights (StableLM's qk_layernorm, Cohere's use_qk_norm); "l2": an
    # RMSNorm of each head without a weight (Llama 4's L2 norm); "unit": each head onto the unit sphere, x / |x| (Dory's nGPT)
    qk_norm: str = "none"
    qk_norm_after_rope: bool = False  # q/k normed after their rotary positions (HunYuan, Llama 4), not before
    qk_norm_layers: tuple[int, ...] | None = None  # the layers with q/k norms (None: all; Llama 4: its rope layers)
    # Queries scaled by their position (QueryScale) on the layers query_scale_layers names (None: all)
    query_scale: QueryScale | None = None
    query_scale_layers: tuple[int, ...] | None = None
    # Gemma-style variants: embeddings times embed_scale; RMSNorm scales by (norm_offset + w), in float32.
    embed_scale: float = 1.0
    # the embeddings times embed_scale itself in float32, then cast (a Python float in transformers: Granite's
    # embedding_multiplier, BioGPT's and XGLM's sqrt(hidden)); else the scale rounded to the dtype first (Gemma's)
    embed_scale_exact: bool = False
    norm_offset: float = 0.0
    norm_upcast_scale: bool = False  # RMSNorm applies its weight in float32 before the cast (OLMo 2)
    parallel_residual: bool = False  # x + attn(ln1 x) + mlp(ln1 x) (Phi, GPT-J), or mlp(ln2 x) where parallel_mlp_norm
    parallel_mlp_norm: bool = False  # a parallel layer's MLP reads a norm of its own (GPT-NeoX, Falcon's ln_mlp)
    # "rope", "learned" (a table of absolute positions: GPT-2, OPT, BioGPT), "sinusoidal" (fixed sin | cos
    # rows: XGLM, the row of pad_token_id zeroed, as its padding_idx), "alibi" (score biases: `alibi`) or "none"
    # (no positions at all: Mamba, Jamba, Mamba2, whose recurrent layers give the order; Nemotron-H's attention),
    # "sinusoidal_vaswani" (the original Transformer's sin | cos frequencies, no padding row: CTRL);
    # position p reads row p + position_offset
    # (OPT's, BioGPT's and XGLM's 2), the learned table max_position_embeddings + position_offset rows long
    position_embedding: str = "rope"
    position_offset: int = 0
    # The token embedding's width where it differs from hidden_size (OPT's word_embed_proj_dim): project_in
    # to hidden_size after the lookup, project_out back after the final norm, the output head this wide
    embed_dim: int | None = None
    final_norm: bool = True  # False: no norm after the last layer (OPT's post-norm layers, _remove_final_layer_norm)
    final_norm_eps: float | None = None  # the final norm's epsilon where not norm_eps (CTRL's layers hard-wire 1e-6)
    norm_affine: bool = True  # False: LayerNorms without weight or bias (OPT's layer_norm_elementwise_affine)
    norm_after_residual: bool = False  # each residual sum normed, the post-LN layer (OPT's do_layer_norm_before false)
    alibi: Alibi | None = None  # ALiBi's slopes (BLOOM, MPT, Falcon-RW), with position_embedding "alibi"
    embed_norm: bool = False  # a norm of the token embeddings before the first layer (BLOOM's word_embeddings_layernorm)
    # LongRoPE: a sequence that outgrows original_max_position_embeddings has its whole cache
    # recomputed with the long factors (Phi-3's generate does; other families keep the keys cached
    # under the short ones and rotate only new positions by the long ones).
    longrope_recompute: bool = False
    # Gemma 2/3: attention scale (None: head_dim ** -0.5), tanh soft-capping of scores and logits,
    # and a rope of their own for the sliding-window layers (None: the same rope everywhere).
    attn_scale: float | None = None
    attn_scale_by_layer: bool = False  # the scale divided by (layer index + 1) (GPT-2's scale_attn_by_inverse_layer_idx)
    full_attn_scale: float = 1.0  # the full-attention layers' scale times this (Ergo's global_attention_scale: models/ergo.py)
    attn_softcap: float | None = None
    final_softcap: float | None = None
    local_rope: RopeConfig | None = None
    # Layers that take no rotary positions at all (SmolLM3's NoPE layers): layer_rope is None for them.
    nope_layers: tuple[int, ...] = ()
    # Each layer's rope base in place of rope.theta (Granite SWA's layer_rope_theta; its 0s are nope_layers); (): rope.theta
    rope_thetas: tuple[float, ...] = ()
    # cos/sin kept in float32 and q/k rotated in float32, then cast back (OLMo 2 and 3's rotary
    # embedding returns float32 tables); else the tables are cast to the model's dtype first (Llama's).
    rope_float32: bool = False
    # q/k rotated in float32 by tables rounded to the model's dtype (Cohere casts its tables, then upcasts q/k)
    rope_float32_rotation: bool = False
    # Rotary pairs are adjacent dims (2i, 2i + 1), not (i, i + rotary_dim / 2) (Cohere, GLM, ERNIE 4.5)
    rope_interleaved: bool = False
    # Every rotary angle negated, each pair turned the other way (NanoChat's rotate_half: cat(x2, -x1))
    rope_reversed: bool = False
    # Granite: each residual branch times residual_scale before the add, the logits divided by logits_divisor.
    residual_scale: float = 1.0
    branch_norms: bool = False  # each residual branch RMS-normed before its scale and add (HyperCLOVAX's use_post_norm)
    logits_divisor: float = 1.0
    head_bias: bool = False  # a bias on the output head (PhiMoE's lm_head_bias; Phi's head hard-wires one)
    # The output head's rows where fewer than vocab_size (Apertus 1.5's output_vocab_size: the head pruned to the text
    # tokens, ids 0..head_vocab_size - 1); the logits this wide, the ids past it embedded but never produced. None: vocab_size
    head_vocab_size: int | None = None
    # The ids a prompt may hold where fewer than vocab_size: the embedding's rows past them are a multimodal model's image
    # tokens (Mllama's 8 past its text vocabulary), which only an image gives meaning; jaxllm serves text and refuses them.
    # None: vocab_size
    text_vocab_size: int | None = None
    # The checkpoint's index of each of our layers where they differ (Mllama: its self-attention layers, the cross-attention
    # layers between them left out, as transformers skips them without image states; Dory: each run of a looped layer the
    # same checkpoint layer); (): layer i is the checkpoint's i
    checkpoint_layers: tuple[int, ...] = ()
    logit_scale: float = 1.0  # Cohere: the logits times logit_scale
    # A prediction head before the output head, LayerNorm(act(dense(x))) of the final norm's class, its dense biased
    # where prediction_head_bias (ModernBERT-decoder's lm_head: classifier_activation, classifier_bias); None: none
    prediction_head_act: str | None = None
    prediction_head_bias: bool = False
    # Mixture of experts (Mixtral, Qwen3-MoE): 0 experts means a dense MLP everywhere.
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    moe_latent_size: int = 0  # the experts' width in and out, projected from and to hidden_size (Nemotron-H; 0: hidden_size)
    norm_topk_prob: bool = True  # renormalise the top-k routing weights to sum to 1
    # How the router picks: "softmax_topk" (softmax over every expert, then the top k: Mixtral, Qwen,
    # OLMoE), "topk_softmax" (the top k logits, then softmax over those k: GraniteMoE), "sparsemixer"
    # (PhiMoE's two picks, each a softmax over the logits within router_jitter of the best left),
    # "topk_sigmoid" (the top k logits, each weight its sigmoid: Llama 4; the top k by logit plus router_score_bias: Kolibri-1),
    # "sigmoid_topk" (DeepSeek-V3): sigmoid scores, the top k chosen by score plus router_score_bias.
    router: str = "softmax_topk"
    router_jitter: float = 0.0
    # Group-limited routing (DeepSeek): the experts split into router_groups groups, each scored by
    # router_group_score; only the experts of the best router_topk_groups groups may be chosen.
    router_groups: int = 1
    router_topk_groups: int = 1
    router_group_score: str = "max"
    # e_score_correction_bias: a float [X] added to the scores for choosing only, the weights still
    # the scores themselves (DeepSeek-V3's sigmoid scores, ERNIE 4.5 MoE's softmax ones; Kolibri-1's logits)
    router_score_bias: bool = False
    routed_scaling: float = 1.0  # the routing weights times this (DeepSeek's routed_scaling_factor)
    # The router's weights (and score bias) kept in float32 whatever the model's dtype, its logits a
    # float32 product (transformers' _keep_in_fp32_modules_strict: DeepSeek, GLM-4-MoE, dots.llm1)
    router_float32: bool = False
    # Each expert's input is the token times its weight, the outputs summed unweighted (Llama 4)
    router_scales_input: bool = False
    router_norm_min: float = 0.0  # the renormalised weights divided by max(their sum, this) (ERNIE's moe_norm_min)
    router_norm_eps: float = 0.0  # ... by their sum plus this (LFM2-MoE's 1e-6)
    router_softcap: float = 0.0  # the router's logits soft-capped, tanh(l / c) * c (Laguna's moe_router_logit_softcapping; 0: off)
    dense_layers: tuple[int, ...] = ()  # layers that keep a dense MLP in an MoE model
    # A shared expert beside the routed ones (Qwen2-MoE): a gated MLP this wide that every token
    # runs, its output times sigmoid(shared_expert_gate(x)); 0: none.
    shared_expert_intermediate_size: int = 0
    shared_expert_gated: bool = True  # False: the shared expert's output added as it is (GraniteMoeShared)
    shared_expert_average: bool = False  # an ungated shared expert's output and the routed one's averaged (Cohere2-MoE)
    # Cohere2-MoE: RMSNorms where config.json gives rms_norm_eps, else its LayerNorms without bias (its module's choice)
    rms_norms: bool = False
    # The routed experts' sum and the shared expert's output added in float32, then cast (HY V3's enable_moe_fp32_combine);
    # else the routed sum is cast to the model's dtype first
    shared_expert_float32: bool = False
    # gpt-oss's experts: a router with a bias (its router "topk_softmax"), biases on the experts' projections, and
    # the clamped SwiGLU (swiglu_limit not None: gate clamped above at the limit, up to [-limit,
    # limit], out = (up + 1) * gate * sigmoid(swiglu_alpha * gate)) in place of act(gate) * up.
    router_bias: bool = False
    expert_bias: bool = False
    expert_output_bias: bool = False  # a bias [E] added to the experts' summed output (JetMoE's mlp.bias)
    moe_output_norm: bool = False  # an RMSNorm of the MoE block's output, routed and shared summed (A.X-K1's post_mlp_layernorm)
    # Each routed expert's output RMS-normed in float32 and scaled by that expert's own weight row before its routing
    # weight (Ergo's post_expert_norm, [X, E]); the shared expert's output RMS-normed (Ergo's shared_experts.norm)
    expert_output_norm: bool = False
    shared_expert_norm: bool = False
    # Zero-computation experts routed beside the num_experts ones (LongCat-Flash's zero_expert_num): the router scores
    # num_experts + zero_experts, and a token routed to one of these gets its input back, times the weight
    zero_experts: int = 0
    swiglu_limit: float | None = None
    expert_act: str | None = None  # the routed experts' activation where it is not hidden_act's (Aria's always SiLU)
    swiglu_alpha: float = 1.0
    swiglu_shift: float = 1.0  # the up half's offset in the clamped SwiGLU (gpt-oss's 1; HY V4's 0: silu(gate) * up)
    mlp_swiglu: bool = False  # the dense and shared MLPs take the clamped SwiGLU too (MiniMax-M3's; HY V4's do not)
    # gpt-oss: a learned logit per query head that joins every attention softmax's denominator; on the layers
    # attn_sink_layers names (None: all; MiMo-V2-Flash: its sliding-window layers)
    attn_sinks: bool = False
    # Granite SWA: the sink scales each output by sigmoid(logsumexp(scores) - sink) (the same attention), so the
    # attention weights transformers reports (research) are the softmax without it
    sinks_outside_weights: bool = False
    attn_sink_layers: tuple[int, ...] | None = None
    # Value heads narrower than the query and key heads (MiMo-V2-Flash's v_head_dim; None: head_dim): zero-padded
    # to head_dim for the KV backends, the attention output sliced back before o_proj (as models/mla.py does)
    v_head_dim: int | None = None
    value_scale: float = 1.0  # the values times this after their projection (MiMo-V2-Flash's attention_value_scale)
    clip_qkv: float | None = None  # OLMo, OLMoE: q, k and v clamped to [-clip_qkv, clip_qkv] after their projections (and q/k norms)
    # Multi-head latent attention (DeepSeek); None: the usual q/k/v projections. With it, head_dim is
    # the cached key and value heads' width, max(qk_head_dim, v_head_dim) (models/mla.py pads to it)
    mla: MlaConfig | None = None
    indexer: IndexerConfig | None = None  # DeepSeek Sparse Attention (models/sparse_attention.py): None, dense attention
    gated_norm_rank: int = 0  # A.X-K2's gated RMSNorms (models/axk2.py): the rank of their gate (0: none)
    # Gemma 4: full-attention layers with heads of their own size and kv heads (None: as the others');
    # values that are the keys' projection there (attention_k_eq_v: no v_proj); values RMS-normed
    # without a scale (v_norm); the last kv_shared_layers layers projecting no keys or values but
    # attending over those of the last earlier layer of their type (kv_source), their MLP twice as
    # wide where double_wide_mlp; per-layer embeddings of per_layer_input_size per layer (0: none)
    # from a table of per_layer_vocab_size tokens (models/gemma4.py).
    global_head_dim: int | None = None
    global_kv_heads: int | None = None
    attn_k_eq_v: bool = False
    v_norm: bool = False
    kv_shared_layers: int = 0
    # Each layer's source of keys and values where the config names them (Kolibri 1.1's kv_source_layers: a layer whose
    # entry is another projects no keys or values and attends over that layer's); (): kv_shared_layers' reading
    kv_sources: tuple[int, ...] = ()
    double_wide_mlp: bool = False
    per_layer_input_size: int = 0
    per_layer_vocab_size: int = 0
    # Gemma 3n (models/gemma3n.py): each layer's MLP width (intermediate_size as a list; (): intermediate_size everywhere)
    # and the gaussian top-k sparsity of its gate (activation_sparsity_pattern; (): none); AltUp's altup_streams copies
    # of the hidden state (0: one, no AltUp), altup_active the one the layers compute on, its correction scaled where
    # altup_correct_scale; LAuReL's low-rank residual of laurel_rank (0: none)
    intermediate_sizes: tuple[int, ...] = ()
    activation_sparsity: tuple[float, ...] = ()
    altup_streams: int = 0
    altup_active: int = 0
    altup_correct_scale: bool = False
    laurel_rank: int = 0
    # Recurrent layers (models/recurrent.py, models/mixers.py): the layer types of recurrent_kinds the family
    # builds (config_fields.RECURRENT_TYPES), each keeping a state per sequence instead of keys; their causal
    # conv of linear_conv_kernel taps, with a bias where conv_bias (LFM2's short conv).
    # Gated DeltaNet (Qwen3-Next, Qwen3.5): "linear_attention" layers (models/linear_attention.py) of
    # linear_key_heads query/key heads and linear_value_heads value heads, the conv over their q|k|v channels.
    # attn_output_gate: the full-attention layers' q_proj also gives a gate per query head, the output
    # times its sigmoid before o_proj (Qwen3-Next's gated attention).
    recurrent_kinds: tuple[str, ...] = ()
    linear_conv_kernel: int = 0
    conv_bias: bool = False
    # Mamba2 (Granite 4.0): "mamba" layers (models/mamba2.py) of mamba_heads heads of mamba_head_dim, a state of
    # mamba_state per head dim, B and C shared by the heads of each of mamba_groups groups; in/out biases
    mamba_heads: int = 0
    mamba_head_dim: int = 0
    mamba_state: int = 0
    mamba_groups: int = 1
    mamba_proj_bias: bool = False
    mamba_act: str | None = None  # the conv's activation (None: hidden_act; Nemotron-H's mamba_hidden_act beside its relu2 MLP)
    # the time steps' floor: softplus(dt + dt_bias) clamped below at it (Nemotron-H's time_step_min, as its prefill clamps)
    mamba_dt_min: float = 0.0
    mamba_gate_eps: float | None = None  # the gated norm's epsilon (None: norm_eps; Zamba2 hard-wires 1e-5)
    # Layers of one block each (Nemotron-H, Mamba2: x + block(norm(x))): these layers' block is their feed-forward
    # alone (no token mixing, nothing cached), the others' their token mixer alone (no MLP); None: every layer both
    feed_forward_layers: tuple[int, ...] | None = None
    # Falcon-H1: every attention layer also runs a mixer of this recurrent kind beside its attention on the same normed
    # input, x + attn_out_scale * attn + mamba_out_scale * mixer; its cache (LayerCache, RecurrentState)
    parallel_mixer: str | None = None
    # The recurrent kind (models/mixers.py) whose state every attention layer keeps beside its keys and values, for its
    # own projections (Zaya's CCA: models/cca.py, its convolutions' kernels cca_kernels); the layer's cache the pair
    attn_state: str | None = None
    cca_kernels: tuple[int, int] = (0, 0)
    router_hidden_size: int = 0  # Zaya's router: its MLP's width (models/zaya.py)
    # Zamba2 (models/zamba2.py): shared transformer blocks (num_mem_blocks) the attention layers invoke in turn, their
    # norms and projections one set of parameters (nnx shared references), each invocation's LoRA adapters of
    # adapter_rank its own: on the MLP's gate/up, and on the attention's q/k/v where attn_adapters; the attention reads
    # attn_input_size values per token (None: hidden_size; Zamba2's concat of hidden and embeddings, twice as wide)
    shared_blocks: int = 0
    adapter_rank: int = 0
    attn_adapters: bool = False
    attn_input_size: int | None = None
    attn_out_scale: float = 1.0
    mamba_out_scale: float = 1.0
    # Falcon-H1's muP multipliers: the attention's input (attention_in_multiplier) and keys (key_multiplier) scaled,
    # the gated MLP's gate product and output (mlp_multipliers); the Mamba2 mixer's input (ssm_in_multiplier) and its
    # in_proj's z | x | B | C | dt parts (ssm_multipliers)
    attn_input_scale: float = 1.0
    key_scale: float = 1.0
    mlp_scales: tuple[float, float] = (1.0, 1.0)
    mamba_in_scale: float = 1.0
    mamba_proj_scales: tuple[float, ...] | None = None
    # The Mamba2 output's gated RMSNorm per group: "gate_first" (y silu(z), then normed: Bamba, Granite, Nemotron-H),
    # "norm_first" (normed, then times silu(z): Falcon-H1's mamba_norm_before_gate) or "none" (y silu(z) alone:
    # Falcon-H1 without mamba_rms_norm); out_proj's bias apart from in_proj's (None: mamba_proj_bias; Falcon-H1's projectors_bias)
    mamba_norm: str = "gate_first"
    mamba_out_bias: bool | None = None
    # Mamba (v1: Mamba, FalconMamba, Jamba): "mamba1" layers (models/mamba1.py) of mamba_inner channels, each a state of
    # mamba_state; the time step's rank mamba_dt_rank; the time step, B and C RMS-normed (mamba_bcdt_norm "weightless":
    # FalconMamba's, "weighted": Jamba's, epsilon mamba_norm_eps) or not ("none")
    # Mamba's residual_in_fp32: the residual stream kept in float32 under a lower-precision model, each layer's norm
    # reading it cast back, the head reading the final norm's output cast back
    residual_float32: bool = False
    # RWKV-4 (models/rwkv.py): "rwkv" layers (models/wkv.py) whose time mix is rwkv_attention_size channels wide
    # (attention_hidden_size); rescale_every > 0: layer i's output weights divided by 2^(i // rescale_every) as they load
    # and the hidden state halved after every rescale_every-th layer (transformers' inference-time rescaling)
    rwkv_attention_size: int = 0
    rescale_every: int = 0
    # xLSTM (models/xlstm.py): "mlstm" layers (models/mlstm.py) of num_heads heads, queries and keys head_dim wide, values
    # v_head_dim; their input and forget gates' pre-activations soft-capped at gate_softcap (None: not), the
    # normalizer's epsilon mlstm_eps; norm_bias: the layers' RMSNorms with a bias (its use_bias)
    gate_softcap: float | None = None
    mlstm_eps: float = 1e-6
    norm_bias: bool = False
    fused_projections: bool = False  # its weight_mode "fused": q|k|v|o, i|f and the MLP's gate|up each one tensor
    mamba_inner: int = 0
    lru_width: int = 0  # RecurrentGemma's "rg_lru" layers (models/rg_lru.py): the RG-LRU's channels
    mamba_dt_rank: int = 0
    mamba_bcdt_norm: str = "none"
    mamba_norm_eps: float = 1e-6
    linear_key_head_dim: int = 0
    linear_value_head_dim: int = 0
    linear_key_heads: int = 0
    linear_value_heads: int = 0
    # OLMo Hybrid's gated DeltaNet: q_proj, k_proj, v_proj apart (not one in_proj_qkv), beta times
    # linear_beta_scale (2.0: linear_allow_neg_eigval), its gated norm's own epsilon (None: norm_eps)
    linear_qkv_apart: bool = False
    linear_beta_scale: float = 1.0
    linear_norm_eps: float | None = None
    linear_norm_upcast: bool = False  # the gated norm's weight applied in float32 before the cast (LaraMini's)
    # Kimi Delta Attention's forget and output gates full-rank (f_proj, g_proj: Bailing-Hybrid's, A_log one per head)
    # rather than low-rank pairs; its decay bounded, lower * sigmoid(exp(A_log) (f + dt_bias)) (kda_safe_gate), where
    # kda_lower_bound is set (None: Kimi's -exp(A_log) softplus(f + dt_bias))
    kda_full_rank: bool = False
    kda_lower_bound: float | None = None
    # The longest sequence this model computes as transformers does, where shorter than its positions (MiniMax-M3's
    # block-sparse layers attend every earlier key while their top-k key blocks cover them all): context_length's bound
    exact_positions: int | None = None
    # HRM-Text (models/hrm.py): each stack's layers and the L stack's passes per cycle; 0 elsewhere
    hrm_stack_layers: int = 0
    hrm_l_cycles: int = 0
    attn_output_gate: bool = False
    # MiniMax-Text-01's layer: residuals from the normed input, each branch's sum residual * alpha + output * beta:
    # (full attention's alpha, beta, lightning attention's alpha, beta, the MLP's alpha, beta); () elsewhere
    residual_factors: tuple[float, ...] = ()
    sandwich_norms: bool = False  # LFM3's use_sandwich_norm: norms on the mixer's and the MLP's outputs too (gemma.SandwichLayer)
    attn_gate_bias: bool = True  # False: the output gate has no bias whatever qkv_bias says (AFMoE's gate_proj)
    # The output gate's activation: "sigmoid", or "softplus" (in float32, then cast: Laguna's g_proj); one gate per
    # head where attn_gate_per_head (Laguna's gating "per-head"), else one per head and dim
    attn_gate_act: str = "sigmoid"
    attn_gate_per_head: bool = False
    # The query heads of each layer where they differ (Laguna's num_attention_heads_per_layer; empty: num_heads)
    heads_per_layer: tuple[int, ...] = ()
    # Looped layers (Dory): the checkpoint's layers first .. first + count - 1 run `loops` times in a row, (first, count,
    # loops); num_layers and layer_types count every run, each run its own layer (its own cache) holding the first run's
    # modules (nnx shared references; checkpoint_layers maps each run to its checkpoint layer); (): no loop
    loop: tuple[int, int, int] = ()
    # The layer whose pages each layer writes and attends over, where not its own (Dory's earlier loops under
    # recurrent_kv_cache_mode "last_loop": the first run's pages, which each later run overwrites); (): every layer its own
    kv_pools: tuple[int, ...] = ()
    # Hyper-connections (HY V4, models/hyper_connections.py): hc_streams copies of the hidden state ([B, T, streams, E];
    # 0: none) mixed into each block's input and the block's output injected into each, times hc_magnitude's sigmoid gates
    hc_streams: int = 0
    hc_magnitude: float = 2.0
    hc_eps: float = 1e-6
    # nGPT (Dory): initializer_range, by which its stored scales are divided, and ngpt_alpha_init, its residual rates'
    ngpt_init: float = 1.0
    ngpt_alpha: float = 1.0
    sliding_window: int | None = None
    attention_chunk: int | None = None  # the chunk of "chunked_attention" layers (Llama 4's attention_chunk_size)
    # One entry per layer: "full_attention", "sliding_attention" or "chunked_attention".
    layer_types: tuple[str, ...] = ()
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None

    @property
    def context_length(self) -> int:
        """Positions a sequence may use, read from the config as vLLM reads its max_model_len:
        max_position_embeddings, times the factor of linear, dynamic and YaRN rope scaling (whose
        configs may keep the unscaled length there; YaRN from original_max_position_embeddings);
        llama3 and LongRoPE configs give the scaled length itself."""
        rope, n = self.rope, self.max_position_embeddings
        if rope.type in ("linear", "dynamic", "yarn") and rope.factor > 1:
            base = rope.original_max_position_embeddings if rope.type == "yarn" and rope.original_max_position_embeddings else n
            n = max(n, int(base * rope.factor))
        return n if self.exact_positions is None else min(n, self.exact_positions)

    @property
    def whole_prefill(self) -> bool:
        """Whether a prompt must be prefilled in one call, neither in chunks nor from a cached prefix: keys that depend
        on the sequence's length (dynamic NTK, LongRoPE), or pages several layers write in turn (kv_pools: Dory's
        earlier loops would read the last loop's keys of an earlier chunk where transformers reads their own)."""
        return (self.rope.length_dependent and self.position_embedding == "rope") or bool(self.kv_pools)

    @property
    def output_vocab(self) -> int:
        """The logits' width: the output head's rows (head_vocab_size), else the vocabulary's."""
        return self.head_vocab_size or self.vocab_size

    @property
    def prompt_vocab(self) -> int:
        """The ids a prompt may hold: text_vocab_size, else the vocabulary's."""
        return self.text_vocab_size or self.vocab_size

    @property
    def rotary_dim(self) -> int:
        return self.rope_dim(self.rope)

    def rope_dim(self, rope: RopeConfig) -> int:
        """The dims of each head `rope` turns: its head size times the partial factor; all of them
        for proportional rope, whose frequencies past the factor's share are zero (transformers);
        latent attention's rope part (qk_rope_head_dim) under MLA."""
        if self.mla is not None:
            return self.mla.qk_rope_head_dim
        dim = rope.head_dim or self.head_dim
        return dim if rope.type == "proportional" else int(dim * rope.partial_rotary_factor)

    def layer_is_full(self, layer: int) -> bool:
        return not self.layer_types or self.layer_types[layer] != "sliding_attention"

    def layer_o_bias(self, layer: int) -> bool:
        return self.o_bias and (self.o_bias_layers is None or layer in self.o_bias_layers)

    def layer_head_dim(self, layer: int) -> int:
        return self.global_head_dim if self.global_head_dim and self.layer_is_full(layer) else self.head_dim

    def layer_heads(self, layer: int) -> int:
        return self.heads_per_layer[layer] if self.heads_per_layer else self.num_heads

    def layer_kv_heads(self, layer: int) -> int:
        return self.global_kv_heads if self.global_kv_heads and self.layer_is_full(layer) else self.num_kv_heads

    def kv_source(self, layer: int) -> int:
        """The layer whose keys and values `layer` attends over: itself, or for the last
        kv_shared_layers layers the last layer of the same type before them (Gemma 4); kv_sources' entry where given."""
        if self.kv_sources:
            return self.kv_sources[layer]
        first = self.num_layers - self.kv_shared_layers
        if layer < first:
            return layer
        kind = self.layer_types[layer] if self.layer_types else None
        return max(i for i in range(first) if (self.layer_types[i] if self.layer_types else None) == kind)

    def kv_pool(self, layer: int) -> int:
        """The layer whose pages `layer` writes its keys and values into and attends over: its own, or kv_pools'."""
        return self.kv_pools[layer] if self.kv_pools else layer

    def checkpoint_layer(self, layer: int) -> int:
        """The checkpoint's layer (model.layers.N) whose parameters `layer` runs (checkpoint_layers)."""
        return self.checkpoint_layers[layer] if self.checkpoint_layers else layer

    def kv_shape(self, layer: int) -> tuple[int, int] | None:
        """(kv heads, head_dim) of the keys and values `layer` caches; None: it caches none (it reads
        another layer's: kv_source; it writes another's: kv_pool; or it is a recurrent layer, which keeps a state instead)."""
        if (self.layer_is_recurrent(layer) or not self.layer_has_mixer(layer) or layer != self.kv_source(layer)
                or layer != self.kv_pool(layer)):
            return None
        return self.layer_kv_heads(layer), self.layer_cache_dim(layer)

    def layer_cache_dim(self, layer: int) -> int:
        """The width of each cached key and value head of `layer` (and of the queries attending to them): its head_dim,
        doubled for differential attention, plus kv_extra_dims."""
        return self.layer_head_dim(layer) * (2 if self.differential_attention else 1) + self.kv_extra_dims

    def index_shape(self, layer: int) -> tuple[int, int] | None:
        """(1, index head_dim) of the indexer keys `layer` caches beside its keys and values (DeepSeek Sparse
        Attention: one key head per token, models/sparse_attention.py); None: it runs no indexer of its own."""
        ix = self.indexer
        if ix is None or ix.by_attention or not ix.sparse(layer) or self.kv_shape(layer) is None or layer in ix.shared:
            return None
        return 1, ix.head_dim

    def layer_has_mixer(self, layer: int) -> bool:
        """Whether `layer` mixes tokens (attention or a recurrent mixer): all but feed_forward_layers' blocks."""
        return self.feed_forward_layers is None or layer not in self.feed_forward_layers

    def layer_has_mlp(self, layer: int) -> bool:
        """Whether `layer` has a feed-forward block: every layer, or where each layer is one block, feed_forward_layers'."""
        return self.feed_forward_layers is None or layer in self.feed_forward_layers

    def layer_is_attention(self, layer: int) -> bool:
        """Whether `layer` mixes tokens by attention (neither a recurrent mixer nor a feed-forward block alone)."""
        return self.layer_has_mixer(layer) and not self.layer_is_recurrent(layer)

    def layer_mixer(self, layer: int) -> str | None:
        """The recurrent kind of `layer` (its layer type, one of RECURRENT_TYPES: models/mixers.py), or
        None for an attention layer."""
        kind = self.layer_types[layer] if self.layer_types and self.layer_has_mixer(layer) else None
        return kind if kind in RECURRENT_TYPES else None

    def layer_is_recurrent(self, layer: int) -> bool:
        """A recurrent layer: no keys cached, a state per sequence (models/recurrent.py)."""
        return self.layer_mixer(layer) is not None

    def layer_is_linear(self, layer: int) -> bool:
        """A gated-DeltaNet layer (models/linear_attention.py)."""
        return self.layer_mixer(layer) == "linear_attention"

    def layer_state_kind(self, layer: int) -> str | None:
        """The recurrent kind whose state `layer` keeps: its mixer's, or an attention layer's parallel_mixer (Falcon-H1) or
        attn_state (Zaya)."""
        return self.layer_mixer(layer) or ((self.parallel_mixer or self.attn_state) if self.layer_is_attention(layer) else None)

    @property
    def recurrent(self) -> bool:
        """Whether some layer keeps a recurrent state per sequence (the engine's state slots, no prefix cache)."""
        return any(map(self.layer_state_kind, range(self.num_layers)))

    def layer_values_are_keys(self, layer: int) -> bool:
        """Whether the layer's values are its keys' projection (no v_proj: Gemma 4's attention_k_eq_v)."""
        return self.attn_k_eq_v and self.layer_is_full(layer)

    def layer_window(self, layer: int) -> int | Chunked | None:
        """The sliding window of one layer, its chunk (Chunked) on a chunked-attention layer, or None
        for full attention."""
        kind = self.layer_types[layer] if self.layer_types else None
        if kind == "sliding_attention":
            return self.sliding_window
        if kind == "chunked_attention":
            return Chunked(self.attention_chunk)
        return None

    def layer_rope(self, layer: int) -> RopeConfig | None:
        """The rope of one layer: local_rope on sliding-window layers where the model has one, None
        on a layer without rotary positions (nope_layers)."""
        if layer in self.nope_layers:
            return None
        if self.local_rope is not None and self.layer_window(layer) is not None:
            return self.local_rope
        return dataclasses.replace(self.rope, theta=self.rope_thetas[layer]) if self.rope_thetas else self.rope

    def layer_intermediate_size(self, layer: int) -> int:
        """The width of `layer`'s dense MLP: its own where intermediate_sizes gives one per layer (Gemma 3n)."""
        return self.intermediate_sizes[layer] if self.intermediate_sizes else self.intermediate_size

    def layer_is_moe(self, layer: int) -> bool:
        return self.num_experts > 0 and layer not in self.dense_layers

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)
