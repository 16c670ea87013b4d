"""The GGUF families: what llama.cpp's general.architecture names mean for us. Each is a `Family`
(the HF architecture it reads as, its tensor names, the values llama.cpp changed, a hook for its
own metadata keys), with the metadata keys each cannot do without and the tensor name table they
share. jaxllm/gguf.py reads the files by it.

The architectures (ARCHITECTURES) are those jaxllm serves whose GGUF files transformers' GGUF
loader reads too, and each reads as that loader reads it (tests/test_quant.py holds the two to the
same logits). What llama.cpp changed on the way in is undone: Llama-family q/k rows permuted for its
rotary layout, BLOOM's per-head q/k/v rows grouped as q | k | v, Gemma's and Nemotron's norms stored as 1 + w, GPT-2's Conv1D weights transposed, the MoE experts
stacked in one tensor, Qwen2-MoE's shared-expert gate squeezed to a vector, Mamba's, LFM2's and
Qwen3.5's convs squeezed, Mamba's and Qwen3.5's A stored as -exp(A_log), Qwen3.5's value heads tiled
over its key heads; where that loader drops metadata llama.cpp reads (Phi-3's
LongRoPE, Gemma 27B's attention scale, the MoE experts' widths, ...), we read it as llama.cpp does.
Families that loader lists but cannot read (GPT-OSS, Gemma 4: _UNREADABLE) are refused, saying why.
"""

from __future__ import annotations

import math
import re
from typing import Callable, NamedTuple

import numpy as np

from jaxllm.errors import CheckpointError


class Family(NamedTuple):
    """How llama.cpp writes one GGUF architecture, read back as transformers' GGUF loader reads it."""

    hf: str  # the HF architecture (config.json "architectures")
    permuted: bool = False  # q/k rows permuted for llama.cpp's rotary layout (Llama, Mistral): undone
    names: dict = {}  # GGUF name -> HF name, over _NAMES and _LAYER_NAMES
    norm_shift: float = 0.0  # stored as w + this (Gemma's (1 + w) RMSNorm): subtracted, in float32
    transposed: tuple = ()  # layer weights stored [out, in] where HF keeps [in, out] (GPT-2's Conv1D): transposed
    # layer weights HF keeps with a size-1 axis before the last that converters may drop: {part: HF's rank} (Qwen2-MoE's
    # shared-expert gate [1, in] stored as [in], Mamba's and LFM2's convs [channels, 1, taps] as [channels, taps])
    squeezed: dict = {}
    values: dict = {}  # {part: HF's float32 values of the file's}: values llama.cpp changed (Mamba's A as -exp(A_log))
    # {part: (config -> (axis, index))}: rows (axis 0) or columns (axis 1) llama.cpp reordered (Qwen3.5's value heads
    # tiled over the key heads), read back in HF's order by the index
    reordered: dict = {}
    unshifted: tuple = ()  # norms norm_shift leaves as they are (Qwen3.5's ssm_norm, which scales by w)
    mtp: bool = False  # layers past num_hidden_layers are the multi-token-prediction block (named mtp.*; the model drops it)
    per_head_qkv: tuple = ()  # fused q | k | v rows that HF keeps per head, [heads, 3, head_dim] (BLOOM's attn_qkv): regrouped
    config: Callable = lambda get, raw: None  # (metadata getter, config so far): adds the family's own keys
    tensors: Callable = lambda names, raw: None  # (the file's tensor names, config so far): flags read off which it holds


def _gemma_config(get, raw: dict) -> None:
    """Gemma 2 and 3: llama.cpp's attention scale, 1 / sqrt(head_dim) but 1 / sqrt(hidden / heads) for
    the 27B, which it tells by its layer count (transformers' GGUF loader keeps its default 256: the
    same for the 2B-12B, wrong for the 27B); the window, soft caps where the file has them, else
    the family's defaults (transformers' loader ignores the soft caps, which equal its defaults)."""
    del raw["sliding_window"]
    for key in ("attention.sliding_window", "attn_logit_softcapping", "final_logit_softcapping"):
        if get(key) is not None:
            raw[key.removeprefix("attention.")] = decimal(get(key))
    heads, hidden, head_dim = raw["num_attention_heads"], raw["hidden_size"], raw.get("head_dim")
    if not positive(heads, hidden) or (head_dim is not None and not positive(head_dim)):
        return  # nothing to derive from: the config's checks name the bad value
    is_27b = raw["num_hidden_layers"] == {"gemma2": 46, "gemma3_text": 62}[raw["model_type"]]
    raw["query_pre_attn_scalar"] = hidden // heads if is_27b else head_dim or hidden // heads


def whole(*values) -> bool:
    """Whether every value is a whole number, 0 or more (metadata read as it is: any type)."""
    return all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values)


def positive(*values) -> bool:
    """Whether every value is a positive whole number (metadata read as it is: any type)."""
    return whole(*values) and all(v > 0 for v in values)


def _rotary_part(get, raw: dict, prefix: str) -> float | None:
    """rope.dimension_count over the head's dims (llama.cpp's rotary part of each head), or None
    where the file gives nothing to derive it from (the config's checks name a bad shape)."""
    hidden, heads, rotary = raw["hidden_size"], raw["num_attention_heads"], get("rope.dimension_count")
    if rotary is not None and (not isinstance(rotary, int) or isinstance(rotary, bool) or rotary < 1):
        raise CheckpointError(f"GGUF {prefix}.rope.dimension_count is {rotary!r}, not a positive whole number: the file is "
                              "damaged: re-convert it with llama.cpp's convert_hf_to_gguf.py")
    head_dim = raw.get("head_dim")
    if not positive(hidden, heads, rotary) or (head_dim is None and hidden % heads) or not positive(head_dim or 1):
        return None
    return rotary / (head_dim or hidden // heads)


def _phi3_config(get, raw: dict) -> None:
    """Phi-3 / Phi-4: a rotary part of the head (Phi-4-mini's 3/4), which transformers' GGUF loader
    drops. Its window: none, as llama.cpp (which disabled it) and transformers' GGUF loader read it."""
    part = _rotary_part(get, raw, "phi3")
    if part is not None and part != 1:
        raw["partial_rotary_factor"] = part


def _stablelm_config(get, raw: dict) -> None:
    """StableLM: LayerNorm's epsilon; the rotary part of each head from rope.dimension_count, as
    llama.cpp reads it (transformers' GGUF loader drops the key for StableLmConfig's 0.25)."""
    del raw["rms_norm_eps"], raw["attention_bias"]
    raw["layer_norm_eps"] = decimal(get("attention.layer_norm_epsilon", 1e-5))
    part = _rotary_part(get, raw, "stablelm")
    if part is not None:
        raw["partial_rotary_factor"] = part


def _stablelm_tensors(names: set, raw: dict) -> None:
    """StableLM's flags as transformers' GGUF loader reads them off the tensors: q/k/v biases where
    the file has them, the parallel residual where it has no ffn_norm. Per-head q/k norms (StableLM
    2 12B) are refused: that loader drops them (no reference to hold them to)."""
    if "blk.0.attn_q_norm.weight" in names:
        raise CheckpointError("GGUF stablelm file with per-head q/k norms (StableLM 2 12B): not supported from GGUF; load "
                              "the model's Hugging Face checkpoint instead")
    raw["use_qkv_bias"] = "blk.0.attn_q.bias" in names
    raw["use_parallel_residual"] = "blk.0.ffn_norm.weight" not in names


def _starcoder2_config(get, raw: dict) -> None:
    """StarCoder 2: LayerNorm's epsilon (norm_epsilon); its biases (use_bias) where the file has
    them, as llama.cpp reads them (transformers' GGUF loader assumes them); the file's rope base,
    as llama.cpp reads it (that loader keeps StarCoder2Config's 10,000: the 3B's is 999,999)."""
    del raw["rms_norm_eps"]
    raw["norm_epsilon"] = decimal(get("attention.layer_norm_epsilon", 1e-5))
    raw["use_bias"] = raw.pop("attention_bias")


def _moe_config(get, raw: dict) -> None:
    """The routed experts of Qwen3-MoE, Qwen2-MoE, MiniMax-M2 and Qwen3.5-MoE, every layer routed
    (llama.cpp reads no dense layers for any): their count, top k and width from the file (transformers' GGUF loader keeps
    its config's default width: Qwen3-30B-A3B's 768, Qwen1.5-MoE-A2.7B's 1408 and 5632 shared)."""
    prefix, name = {"qwen3_moe": ("qwen3moe", "Qwen3-MoE"), "qwen2_moe": ("qwen2moe", "Qwen2-MoE"),
                    "minimax_m2": ("minimax-m2", "MiniMax-M2"), "qwen3_5_moe_text": ("qwen35moe", "Qwen3.5-MoE")}[raw["model_type"]]
    experts = get("expert_count")
    if not isinstance(experts, int) or isinstance(experts, bool) or experts < 1:
        raise CheckpointError(f"GGUF {prefix}.expert_count is {experts!r}: a {name} file has at least one expert; the file "
                              "is damaged: re-convert it with llama.cpp's convert_hf_to_gguf.py")
    raw.update(num_experts=experts, num_experts_per_tok=get("expert_used_count"),
               moe_intermediate_size=get("expert_feed_forward_length"))


def _qwen3_moe_config(get, raw: dict) -> None:
    """Qwen3-MoE: the top-k weights renormalised, as llama.cpp does (and transformers' GGUF loader)."""
    _moe_config(get, raw)
    raw["norm_topk_prob"] = True


def _qwen2_moe_config(get, raw: dict) -> None:
    """Qwen2-MoE: the top-k weights as the router gives them (llama.cpp, and Qwen2MoeConfig's default);
    a shared expert in every layer. Widths the file leaves out are llama.cpp's: the experts'
    feed_forward_length / expert_used_count (the files written before expert_feed_forward_length
    existed: Qwen1.5-MoE's 5632 / 4 = 1408), the shared expert's feed_forward_length (0 too, as llama.cpp)."""
    _moe_config(get, raw)
    used, ffn = raw["num_experts_per_tok"], raw["intermediate_size"]
    if raw["moe_intermediate_size"] in (None, 0) and positive(used, ffn):  # else the config's checks name the bad value
        raw["moe_intermediate_size"] = ffn // used
    raw["norm_topk_prob"] = False
    shared = get("expert_shared_feed_forward_length")
    raw["shared_expert_intermediate_size"] = ffn if shared in (None, 0) else shared


def _gpt2_config(get, raw: dict) -> None:
    """GPT-2: LayerNorm's epsilon; learned positions, no rope."""
    del raw["rms_norm_eps"], raw["rope_theta"]
    raw["layer_norm_epsilon"] = decimal(get("attention.layer_norm_epsilon", 1e-5))
    raw["n_inner"] = raw["intermediate_size"]  # GPT2Config's name for it (a config.json written back; it ignores ours)


def _bloom_config(get, raw: dict) -> None:
    """BLOOM: LayerNorm's epsilon; ALiBi, no rope; the head tied to the embeddings, as transformers'
    GGUF loader ties bloom's (llama.cpp's files hold a copy as output; one of other values unties the
    head, there as in every family: loader._own_head)."""
    del raw["rms_norm_eps"], raw["rope_theta"]
    raw["layer_norm_epsilon"] = decimal(get("attention.layer_norm_epsilon", 1e-5))
    raw["tie_word_embeddings"] = True


def _falcon_config(get, raw: dict) -> None:
    """Falcon: the layout transformers' GGUF loader reads (FalconConfig's defaults: Falcon-7B's one kv
    head, attention and MLP in parallel off one LayerNorm, no biases, rotary positions), its MLP
    width and LayerNorm epsilon from the file as llama.cpp reads them (that loader keeps 4 x hidden and
    1e-5: Falcon-7B's own); the head tied, as that loader ties falcon's. Falcon-40B/180B's new
    decoder (kv groups, ln_attn and ln_mlp) is refused: that loader reads it as Falcon-7B's."""
    kv = get("attention.head_count_kv")
    if kv != 1:
        raise CheckpointError(f"GGUF falcon file with {kv} kv heads (Falcon-40B/180B's new decoder): not supported from GGUF "
                              "(transformers' GGUF loader reads only Falcon-7B's one kv head); load the model's Hugging Face "
                              "checkpoint instead")
    del raw["rms_norm_eps"], raw["attention_bias"], raw["intermediate_size"]
    raw.update(ffn_hidden_size=get("feed_forward_length"), activation="gelu", multi_query=True, parallel_attn=True,
               new_decoder_architecture=False, bias=False, alibi=False, tie_word_embeddings=True,
               layer_norm_epsilon=decimal(get("attention.layer_norm_epsilon", 1e-5)))


def _nemotron_config(get, raw: dict) -> None:
    """Nemotron: LayerNorm's epsilon as llama.cpp reads it (attention.layer_norm_epsilon; transformers'
    GGUF loader looks for an RMS one llama.cpp does not write and keeps 1e-5), and the rotary part of
    each head from rope.dimension_count (that loader keeps NemotronConfig's 0.5, every Nemotron's)."""
    del raw["rms_norm_eps"]
    raw["norm_eps"] = decimal(get("attention.layer_norm_epsilon", 1e-5))
    part = _rotary_part(get, raw, "nemotron")
    if part is not None:
        raw["partial_rotary_factor"] = part


def _minimax_m2_config(get, raw: dict) -> None:
    """MiniMax-M2: its routed experts (every layer) as _moe_config reads them, their width the
    experts' (expert_feed_forward_length, as llama.cpp reads it; transformers' GGUF loader takes
    feed_forward_length, which llama.cpp's converter writes equal); the rotary part of each head
    (rotary_dim) and the router's scoring (expert_gating_func's number as its name), as that loader
    reads them."""
    _moe_config(get, raw)
    width = raw.pop("moe_intermediate_size")
    if width is not None:
        raw["intermediate_size"] = width
    raw["rotary_dim"] = get("rope.dimension_count")
    gating = get("expert_gating_func")
    if whole(gating):  # a number as llama.cpp writes it (anything else is left for the config's checks to name)
        gating = {0: "none", 1: "softmax", 2: "sigmoid"}.get(gating, "softmax")
    if gating is not None:
        raw["scoring_func"] = gating


def _qwen35_config(get, raw: dict) -> None:
    """Qwen3.5: full attention every full_attention_interval-th layer, gated-DeltaNet layers between
    (their key heads ssm.group_count of ssm.state_size dims, value heads ssm.time_step_rank sharing
    ssm.inner_size dims, ssm.conv_kernel taps), the rotary part of each head and the multimodal
    rope's sections, as transformers' GGUF loader reads them; the multi-token-prediction block
    (nextn_predict_layers) counted out of the layers."""
    heads, inner, head_dim = get("ssm.time_step_rank"), get("ssm.inner_size"), raw.get("head_dim")
    raw.update(full_attention_interval=get("full_attention_interval"), linear_conv_kernel_dim=get("ssm.conv_kernel"),
               linear_key_head_dim=get("ssm.state_size"), linear_num_key_heads=get("ssm.group_count"),
               linear_num_value_heads=heads, linear_value_head_dim=inner // heads if positive(inner, heads) else inner)
    nextn = get("nextn_predict_layers", 0)
    if not whole(nextn):
        prefix = "qwen35moe" if raw["model_type"] == "qwen3_5_moe_text" else "qwen35"
        raise CheckpointError(f"GGUF {prefix}.nextn_predict_layers is {str(nextn)[:60]}, not a whole number of layers: the file is "
                              "damaged; re-convert it with llama.cpp's convert_hf_to_gguf.py")
    if whole(raw["num_hidden_layers"]):  # else the config's checks name the bad value
        raw["num_hidden_layers"] -= nextn
    rope = {"rope_type": "default", "rope_theta": raw.pop("rope_theta"), "mrope_interleaved": True}
    sections = get("rope.dimension_sections")
    if isinstance(sections, list):  # one a position axis, padded to four: those it uses (the text's rope is plain rope)
        rope["mrope_section"] = [n for n in sections if n]
    rotary = get("rope.dimension_count")
    if positive(rotary, head_dim):
        rope["partial_rotary_factor"] = rotary / head_dim
    raw["rope_parameters"] = rope


def _qwen35moe_config(get, raw: dict) -> None:
    """Qwen3.5-MoE: Qwen3.5's layers, routed experts and a gated shared expert in every one."""
    _qwen35_config(get, raw)
    _moe_config(get, raw)
    raw["shared_expert_intermediate_size"] = get("expert_shared_feed_forward_length")


def _tiled_to_grouped(axis: int = 0, per_value: bool = False, qk: bool = False):
    """(config -> (axis, index) or None): Qwen3.5's value heads along `axis` (each its
    linear_value_head_dim rows where `per_value`, else one) from llama.cpp's order, tiled over the
    key heads (v0k0 v0k1 v1k0 ...), to HF's, grouped by key head (v0k0 v1k0 ... v0k1 ...), after
    in_proj_qkv's q and k rows where `qk`: transformers' TiledToGroupedRows / Inputs. None where
    the config's shapes are not whole (its checks name them)."""

    def order(raw: dict):
        k, v, dk = raw["linear_num_key_heads"], raw["linear_num_value_heads"], raw["linear_key_head_dim"]
        dim = raw["linear_value_head_dim"] if per_value else 1
        if not positive(k, v, dk, dim) or v % k:
            return None
        skip = 2 * dk * k if qk else 0
        tiled = np.arange(v * dim).reshape(k, v // k, dim).transpose(1, 0, 2).reshape(-1)
        return axis, np.concatenate([np.arange(skip), skip + np.argsort(tiled)])

    return order


def _mamba_config(get, raw: dict) -> None:
    """Mamba: no attention, no MLP; the inner width, state, conv taps and time-step rank of its mixers
    (ssm.*), and MambaConfig's biases (the conv's, none on in_proj / out_proj: all llama.cpp reads).
    FalconMamba's file (the time step, B and C RMS-normed: ssm.dt_b_c_rms) is refused: transformers'
    GGUF loader reads it as a Mamba without those norms."""
    if get("ssm.dt_b_c_rms"):
        raise CheckpointError("GGUF mamba file with ssm.dt_b_c_rms (FalconMamba): not supported from GGUF (transformers' GGUF "
                              "loader reads it as Mamba, without its norms); load the model's Hugging Face checkpoint instead")
    for key in ("rms_norm_eps", "num_attention_heads", "num_key_value_heads", "attention_bias", "sliding_window", "rope_theta"):
        del raw[key]
    raw.update(layer_norm_epsilon=decimal(get("attention.layer_norm_rms_epsilon", 1e-5)), intermediate_size=get("ssm.inner_size"),
               state_size=get("ssm.state_size"), conv_kernel=get("ssm.conv_kernel"), time_step_rank=get("ssm.time_step_rank"),
               use_bias=False, use_conv_bias=True)


def _lfm2_config(get, raw: dict) -> None:
    """LFM2: attention on the layers whose head_count_kv (a list, one a layer) is not 0, short convs
    (shortconv.l_cache taps) on the others; the MLP as wide as the file says (no auto-adjusting), as
    transformers' GGUF loader reads it (its own reader of lfm2's metadata, integrations/gguf)."""
    kv, layers = get("attention.head_count_kv"), raw["num_hidden_layers"]
    if not isinstance(kv, list) or len(kv) != layers or not whole(*kv):
        raise CheckpointError(f"GGUF lfm2.attention.head_count_kv is {str(kv)[:60]}, not a list of {layers} kv head counts (0 for "
                              "a conv layer): the file is damaged; re-convert it with llama.cpp's convert_hf_to_gguf.py")
    raw["norm_eps"] = raw.pop("rms_norm_eps")
    raw.update(num_key_value_heads=max(kv), full_attn_idxs=[i for i, k in enumerate(kv) if k], conv_L_cache=get("shortconv.l_cache"),
               block_auto_adjust_ff_dim=False)


def _lfm2_tensors(names: set, raw: dict) -> None:
    """LFM2's convs' biases where the file has in_proj's, as transformers' GGUF loader reads them."""
    raw["conv_bias"] = any(name.startswith("blk.") and name.endswith("shortconv.in_proj.bias") for name in names)


_GEMMA_NAMES = {"ffn_norm": "pre_feedforward_layernorm", "post_attention_norm": "post_attention_layernorm",
                "post_ffw_norm": "post_feedforward_layernorm"}
# Qwen2-MoE's shared expert and its gate (one score a token), beside the routed experts
_QWEN2_MOE_NAMES = {"ffn_gate_shexp": "mlp.shared_expert.gate_proj", "ffn_up_shexp": "mlp.shared_expert.up_proj",
                    "ffn_down_shexp": "mlp.shared_expert.down_proj", "ffn_gate_inp_shexp": "mlp.shared_expert_gate"}
_FALCON_NAMES = {"token_embd": "transformer.word_embeddings", "output_norm": "transformer.ln_f", "blk": "transformer.h",
                 "attn_norm": "input_layernorm", "attn_qkv": "self_attention.query_key_value",
                 "attn_output": "self_attention.dense", "ffn_up": "mlp.dense_h_to_4h", "ffn_down": "mlp.dense_4h_to_h"}
# BLOOM: Falcon's names, the embeddings' LayerNorm and a sequential layer's second norm
_BLOOM_NAMES = {**_FALCON_NAMES, "token_embd_norm": "transformer.word_embeddings_layernorm", "ffn_norm": "post_attention_layernorm"}
_MAMBA_NAMES = {"token_embd": "backbone.embeddings", "output_norm": "backbone.norm_f", "blk": "backbone.layers", "attn_norm": "norm",
                "ssm_in": "mixer.in_proj", "ssm_conv1d": "mixer.conv1d", "ssm_x": "mixer.x_proj", "ssm_dt": "mixer.dt_proj",
                "ssm_a": "mixer.A_log", "ssm_d": "mixer.D", "ssm_out": "mixer.out_proj"}
_LFM2_NAMES = {"token_embd_norm": "model.embedding_norm", "attn_norm": "operator_norm", "ffn_norm": "ffn_norm",
               "attn_output": "self_attn.out_proj", "attn_q_norm": "self_attn.q_layernorm", "attn_k_norm": "self_attn.k_layernorm",
               "ffn_gate": "feed_forward.w1", "ffn_up": "feed_forward.w3", "ffn_down": "feed_forward.w2",
               "shortconv.conv": "conv.conv", "shortconv.in_proj": "conv.in_proj", "shortconv.out_proj": "conv.out_proj"}
_MINIMAX_M2_NAMES = {"ffn_gate_inp": "block_sparse_moe.gate", "ffn_gate_exps": "block_sparse_moe.experts.{}.w1",
                     "ffn_up_exps": "block_sparse_moe.experts.{}.w3", "ffn_down_exps": "block_sparse_moe.experts.{}.w2",
                     "exp_probs_b.bias": "block_sparse_moe.e_score_correction_bias"}
# Qwen3.5: its gated-DeltaNet layers' tensors, its full layers' second norm; Qwen3.5-MoE's experts and shared expert besides
_QWEN35_NAMES = {"post_attention_norm": "post_attention_layernorm", "attn_qkv": "linear_attn.in_proj_qkv",
                 "attn_gate": "linear_attn.in_proj_z", "ssm_alpha": "linear_attn.in_proj_a", "ssm_beta": "linear_attn.in_proj_b",
                 "ssm_conv1d": "linear_attn.conv1d", "ssm_norm": "linear_attn.norm", "ssm_out": "linear_attn.out_proj",
                 "ssm_a": "linear_attn.A_log", "ssm_dt.bias": "linear_attn.dt_bias"}
_QWEN35_REORDERED = {"attn_qkv": _tiled_to_grouped(per_value=True, qk=True), "ssm_conv1d": _tiled_to_grouped(per_value=True, qk=True),
                     "attn_gate": _tiled_to_grouped(per_value=True), "ssm_out": _tiled_to_grouped(axis=1, per_value=True),
                     "ssm_alpha": _tiled_to_grouped(), "ssm_beta": _tiled_to_grouped(), "ssm_a": _tiled_to_grouped(),
                     "ssm_dt": _tiled_to_grouped()}
_A_LOG = {"ssm_a": lambda a: np.log(-a)}  # A_log, which llama.cpp stores as A = -exp(A_log) (Mamba's, Qwen3.5's)
_QWEN35 = dict(names=_QWEN35_NAMES, norm_shift=1.0, unshifted=("ssm_norm",), squeezed={"ssm_conv1d": 3}, values=_A_LOG,
               reordered=_QWEN35_REORDERED, mtp=True)
_GPT2_NAMES = {"token_embd": "transformer.wte", "position_embd": "transformer.wpe", "output_norm": "transformer.ln_f",
               "blk": "transformer.h", "attn_norm": "ln_1", "attn_qkv": "attn.c_attn", "attn_output": "attn.c_proj",
               "ffn_norm": "ln_2", "ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}

# general.architecture -> how its tensors and metadata read (the families transformers' GGUF loader reads too)
ARCHITECTURES = {
    "llama": Family("LlamaForCausalLM", permuted=True),
    "mistral": Family("MistralForCausalLM", permuted=True),
    "qwen2": Family("Qwen2ForCausalLM"),
    "qwen3": Family("Qwen3ForCausalLM"),
    "qwen3moe": Family("Qwen3MoeForCausalLM", config=_qwen3_moe_config),
    "qwen2moe": Family("Qwen2MoeForCausalLM", names=_QWEN2_MOE_NAMES, squeezed={"ffn_gate_inp_shexp": 2},
                       config=_qwen2_moe_config),
    "phi3": Family("Phi3ForCausalLM", names={"attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"},
                   config=_phi3_config),
    "gemma2": Family("Gemma2ForCausalLM", names=_GEMMA_NAMES, norm_shift=1.0, config=_gemma_config),
    "gemma3": Family("Gemma3ForCausalLM", names=_GEMMA_NAMES, norm_shift=1.0, config=_gemma_config),
    "gpt2": Family("GPT2LMHeadModel", names=_GPT2_NAMES, transposed=("attn_qkv", "attn_output", "ffn_up", "ffn_down"),
                   config=_gpt2_config),
    "stablelm": Family("StableLmForCausalLM", config=_stablelm_config, tensors=_stablelm_tensors),
    "bloom": Family("BloomForCausalLM", names=_BLOOM_NAMES, per_head_qkv=("attn_qkv",), config=_bloom_config),
    "falcon": Family("FalconForCausalLM", names=_FALCON_NAMES, config=_falcon_config),
    "nemotron": Family("NemotronForCausalLM", norm_shift=1.0, config=_nemotron_config),
    "starcoder2": Family("Starcoder2ForCausalLM", names={"ffn_up": "mlp.c_fc", "ffn_down": "mlp.c_proj"}, config=_starcoder2_config),
    # Mamba: A stored as -exp(A_log), the conv [channels, taps]
    "mamba": Family("MambaForCausalLM", names=_MAMBA_NAMES, squeezed={"ssm_conv1d": 3}, values=_A_LOG, config=_mamba_config),
    "lfm2": Family("Lfm2ForCausalLM", names=_LFM2_NAMES, squeezed={"shortconv.conv": 3}, config=_lfm2_config, tensors=_lfm2_tensors),
    "minimax-m2": Family("MiniMaxM2ForCausalLM", names=_MINIMAX_M2_NAMES, config=_minimax_m2_config),
    # Qwen3.5: norms stored as 1 + w (but the DeltaNet's own), A as -exp(A_log), the conv squeezed, value heads tiled
    "qwen35": Family("Qwen3_5ForCausalLM", config=_qwen35_config, **_QWEN35),
    "qwen35moe": Family("Qwen3_5MoeForCausalLM", config=_qwen35moe_config,
                        **dict(_QWEN35, names={**_QWEN35_NAMES, **_QWEN2_MOE_NAMES}, squeezed={"ssm_conv1d": 3, "ffn_gate_inp_shexp": 2})),
}
# families jaxllm serves whose GGUF files transformers' GGUF loader lists but cannot read (no reference to hold a
# reading to): why, for the refusal
_UNREADABLE = {
    "gpt-oss": "transformers' GGUF loader leaves its experts, their biases and the attention sinks unread, and takes no "
               "head width from the file",
    "gemma4": "transformers' GGUF loader builds Gemma4TextConfig's default head widths, per-layer inputs and layer pattern, "
              "not the file's",
}
# the keys each family cannot do without (check_required): the shared ones, and its own
_SHARED = ("embedding_length", "feed_forward_length", "block_count", "attention.head_count")
_QWEN35_KEYS = ("embedding_length", "block_count", "attention.head_count", "attention.head_count_kv", "attention.key_length",
                "full_attention_interval", "ssm.conv_kernel", "ssm.state_size", "ssm.group_count", "ssm.time_step_rank",
                "ssm.inner_size")
_REQUIRED = {"qwen3moe": (*_SHARED, "expert_count", "expert_used_count", "expert_feed_forward_length"),
             "qwen2moe": (*_SHARED, "expert_count", "expert_used_count"),
             "minimax-m2": (*_SHARED, "attention.key_length", "expert_count", "expert_used_count"),
             "lfm2": (*_SHARED, "attention.head_count_kv", "shortconv.l_cache"),
             "qwen35": (*_QWEN35_KEYS, "feed_forward_length"),
             "qwen35moe": (*_QWEN35_KEYS, "expert_count", "expert_used_count", "expert_feed_forward_length",
                           "expert_shared_feed_forward_length"),
             "mamba": ("embedding_length", "block_count", "ssm.inner_size", "ssm.state_size", "ssm.conv_kernel", "ssm.time_step_rank")}

_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head", "blk": "model.layers"}
_LAYER_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj",
    # MoE: the router, and the experts stacked on a leading axis, split into HF's one tensor per expert ({})
    "ffn_gate_inp": "mlp.gate", "ffn_gate_exps": "mlp.experts.{}.gate_proj", "ffn_up_exps": "mlp.experts.{}.up_proj",
    "ffn_down_exps": "mlp.experts.{}.down_proj",
}
# blk.N.part.weight / .bias, or a bare parameter (Mamba's blk.N.ssm_a); a part may hold dots (LFM2's shortconv.conv)
_TENSOR = re.compile(r"^(?:blk\.(\d+)\.)?(\w[\w.]*?)(?:\.(weight|bias))?$")


def part_of(name: str) -> tuple[int | None, str | None, str | None]:
    """(layer or None, part, "weight" / "bias" / None) of a GGUF tensor name: (0, "attn_q", "weight") of
    blk.0.attn_q.weight."""
    m = _TENSOR.match(name)
    return (None if not m or m[1] is None else int(m[1]), m and m[2], m and m[3])


def hf_name(name: str, family: Family = ARCHITECTURES["llama"]) -> str | None:
    """The HF name of a GGUF tensor of `family` (a "{}" in it stands for the expert), or None. A
    family's name for "part.bias" is the whole HF name (MiniMax-M2's exp_probs_b.bias:
    e_score_correction_bias), as is its name of a bare part (Mamba's ssm_a: A_log)."""
    m = _TENSOR.match(name)
    if not m:
        return None
    layer, part, kind = m.groups()
    names = {**(_NAMES if layer is None else _LAYER_NAMES), **family.names}
    prefix = "" if layer is None else f"{family.names.get('blk', _NAMES['blk'])}.{layer}."
    if f"{part}.{kind}" in names:
        return prefix + names[f"{part}.{kind}"]
    if part not in names:
        return None
    return f"{prefix}{names[part]}" + (f".{kind}" if kind else "")


def family_of(fields: dict) -> tuple[str, str]:
    """(the ARCHITECTURES key, the metadata key prefix) of a file, or a CheckpointError."""
    prefix = arch = fields.get("general.architecture")
    if not isinstance(arch, str):
        raise CheckpointError(f"GGUF general.architecture must be a string, got {str(arch)[:60]}: "
                              "the file is damaged or not a language model")
    if arch in _UNREADABLE:
        raise CheckpointError(f"GGUF architecture '{arch}' is not supported from GGUF ({_UNREADABLE[arch]}); load the model's "
                              "Hugging Face checkpoint instead")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"GGUF architecture '{arch}' is not supported; supported: {', '.join(sorted(ARCHITECTURES))}"
        )
    if arch == "llama" and fields.get("llama.expert_count"):  # transformers reads it as a dense Llama, experts dropped
        raise CheckpointError(f"GGUF llama file with {fields['llama.expert_count']} experts (Mixtral): not supported "
                              "from GGUF; load the model's Hugging Face checkpoint instead")
    name = str(fields.get("general.name", "") or "").lower()
    if arch == "llama" and "mistral" in name:  # llama.cpp files Mistral under llama
        arch = "mistral"
    return arch, prefix


def check_required(get, prefix: str) -> None:
    """A CheckpointError naming every metadata key the file lacks that its architecture needs."""
    missing = [f"{prefix}.{key}" for key in _REQUIRED.get(prefix, _SHARED) if get(key) is None]
    if missing:
        raise CheckpointError(f"GGUF metadata lacks {', '.join(missing)}: the file is incomplete or not a language model; "
                              "re-convert it with llama.cpp's convert_hf_to_gguf.py")


# config fields llama.cpp may read one a layer, and their keys: a list of equal values reads as one (config_from_metadata)
_PER_LAYER = {"num_attention_heads": "attention.head_count", "num_key_value_heads": "attention.head_count_kv",
              "intermediate_size": "feed_forward_length"}


def check_per_layer(raw: dict, prefix: str) -> None:
    """A CheckpointError for a count that differs from layer to layer (OpenELM's heads and MLP widths),
    which no family here reads (LFM2's kv heads are its own: _lfm2_config); other values are left
    for the config's checks to name."""
    for field, key in _PER_LAYER.items():
        value = raw.get(field)
        if isinstance(value, list) and value and whole(*value):
            raise CheckpointError(f"GGUF {prefix}.{key} differs from layer to layer ({str(value)[:60]}): a model whose layers "
                                  "differ so is not supported from GGUF; load its Hugging Face checkpoint instead")


def decimal(value):
    """A float32 metadata value as the shortest decimal that reads back as the same float32 (what
    the writer most likely stored: 1e-05 for 9.999999747378752e-06); anything else unchanged, for
    the config's checks to judge."""
    if isinstance(value, float) and math.isfinite(value):
        return float(str(np.float32(value)))
    return value

