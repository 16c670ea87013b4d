"""Config variants real checkpoints use, read as transformers reads them (the logits of most are
compared against transformers in test_parity_hub_spellings.py); here the ones transformers cannot run, refused in one line."""

import re

import pytest

from jaxllm.errors import ConfigError
from jaxllm.models import config_fields, registry


@pytest.mark.parametrize("arch, changes", [
    ("MistralForCausalLM", dict(sliding_window=0)),
    ("Gemma2ForCausalLM", dict(sliding_window=0)),
    ("Cohere2ForCausalLM", dict(sliding_window=0)),
    ("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=1, sliding_window=0)),
])
def test_a_window_of_zero_on_sliding_layers_is_refused(arch, changes):
    """A window of 0 lets a token see no key (transformers fails in forward); off (Qwen2-MoE saves 0
    beside use_sliding_window false) or on no layer it is no window at all."""
    spec = registry.get(arch)
    with pytest.raises(ConfigError, match=r"sliding_window is 0.*window's width") as info:
        spec.config(dict(spec.tiny_config, **changes))
    assert "\n" not in str(info.value)


def test_a_window_of_zero_turned_off_reads_as_no_window():
    """Off by its switch, on no layer (Qwen2's from max_window_layers on), or a family without windows (Llama)."""
    for arch, changes in (("Qwen2MoeForCausalLM", dict(use_sliding_window=False)), ("Qwen3ForCausalLM", dict(use_sliding_window=False)),
                          ("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=3)), ("LlamaForCausalLM", {})):
        spec = registry.get(arch)
        cfg = spec.config(dict(spec.tiny_config, sliding_window=0, **changes))
        assert all(cfg.layer_window(i) is None for i in range(cfg.num_layers)), arch


@pytest.mark.parametrize("changes, message", [
    (dict(sliding_window=None), r"sliding_window is null and gives no layer_types"),
    (dict(sliding_window_pattern="LLLG"), r"sliding_window_pattern 'LLLG' cannot set the layers' attention"),
    (dict(sliding_window_pattern=0), r"sliding_window_pattern 0 cannot set the layers' attention"),
])
def test_exaone4_layers_transformers_cannot_build_are_refused(changes, message):
    """Without layer_types, Exaone4Config divides by the pattern (0 where the window is null): a
    ZeroDivisionError or TypeError in transformers, one line here."""
    spec = registry.get("Exaone4ForCausalLM")
    with pytest.raises(ConfigError, match=message) as info:
        spec.config(dict(spec.tiny_config, **changes))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("changes, message", [
    (dict(head_dim=24), r"head_dim=24 gives StableLM's rotary embedding 6 dims where its heads of 16 .* rotate 4.*remove head_dim"),
    (dict(hidden_size=66, head_dim=16), r"hidden_size=66 is not divisible by num_attention_heads=4.*correct either"),
])
def test_stablelm_heads_transformers_cannot_run_are_refused(changes, message):
    """StableLM's attention takes heads of hidden_size / num_attention_heads (a ValueError in transformers where
    that is no whole number); its rotary embedding reads head_dim (a shape error in forward where that rotates
    other dims). A head_dim rotating the same dims loads: test_parity_hub_spellings.py's SPELLINGS."""
    spec = registry.get("StableLmForCausalLM")
    with pytest.raises(ConfigError, match=message) as info:
        spec.config(dict(spec.tiny_config, **changes))
    assert "\n" not in str(info.value)


def test_codegen_width_its_fused_qkv_cannot_split_is_refused():
    """CodeGen splits qkv_proj into mp_num = 4 blocks of n_embd / 4 rows (transformers' view fails otherwise)."""
    spec = registry.get("CodeGenForCausalLM")
    with pytest.raises(ConfigError, match=r"n_embd=66 is not divisible by 4.*correct n_embd") as info:
        spec.config(dict(spec.tiny_config, n_embd=66, n_head=6, rotary_dim=2))
    assert "\n" not in str(info.value)


def test_dbrx_weight_norms_other_than_the_sum_are_refused():
    """DBRX divides its chosen experts' weights by their p-norm (moe_normalize_expert_weights): 1 (the sum) or none served."""
    spec = registry.get("DbrxForCausalLM")
    ffn = dict(spec.tiny_config["ffn_config"], moe_normalize_expert_weights=2.0)
    with pytest.raises(ConfigError, match=r"moe_normalize_expert_weights=2.0.*not supported") as info:
        spec.config(dict(spec.tiny_config, ffn_config=ffn))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("arch, changes, message", [
    # MiniMax's own keys, which transformers never reads, asking for other than what it runs
    ("MiniMaxM2ForCausalLM", dict(use_qk_norm=False), r"use_qk_norm=False is not supported.*set it to True"),
    ("MiniMaxM2ForCausalLM", dict(scoring_func="softmax"), r"scoring_func='softmax' is not supported.*'sigmoid'"),
    ("MiniMaxM2ForCausalLM", dict(qk_norm_type="per_head"), r"qk_norm_type='per_head' is not supported"),
    ("MiniMaxM2ForCausalLM", dict(shared_intermediate_size=16), r"shared_intermediate_size=16 asks for a shared expert"),
    ("MiniMaxM2ForCausalLM", dict(attn_type_list=[0, 1, 1]), r"attn_type_list asks for lightning-attention layers"),
    # rotary on part of the rotary part (a shape error in transformers' attention)
    ("Glm4MoeLiteForCausalLM", dict(partial_rotary_factor=0.5), r"partial_rotary_factor 0.5 rotates part"),
    ("SolarOpenForCausalLM", dict(partial_rotary_factor=0.5), r"partial_rotary_factor 0.5 asks to rotate part"),
    # the checkpoint's dense layers as first_k_dense_replace says, which transformers' GLM-4.7-Flash never reads
    ("Glm4MoeLiteForCausalLM", dict(mlp_layer_types=None, first_k_dense_replace=2), r"first_k_dense_replace=2 without mlp_layer_types"),
    ("Glm4MoeLiteForCausalLM", dict(mlp_layer_types=["dense", "moe", "dense"]), r"mlp_layer_types .* must give one of dense, sparse"),
    # DeepSeek-V3.2's indexer: a top-k that selects nothing, a head narrower than the part its rope rotates
    ("DeepseekV32ForCausalLM", dict(index_topk=0), r"index_topk=0 must be a positive integer.*give the checkpoint's index_topk"),
    ("DeepseekV32ForCausalLM", dict(index_head_dim=4), r"index_head_dim=4 is narrower than qk_rope_head_dim=8"),
    # GLM-5's indexer types: a shared first layer (nothing to share), an unknown pattern letter
    ("GlmMoeDsaForCausalLM", dict(indexer_types=["shared", "full", "full", "full"]), r"indexer_types .* the first full"),
    ("GlmMoeDsaForCausalLM", dict(indexer_types=None, index_topk_pattern="FSXF"), r"index_topk_pattern 'FSXF' must be"),
    # A.X-K2: expert groups without the number picked
    ("AXK2ForCausalLM", dict(n_group=4), r"n_group=4 with topk_group=None: AXK2Config takes both or neither"),
    ("YoutuForCausalLM", dict(head_dim=16), r"head_dim=16 differs from qk_rope_head_dim=8"),
    ("MiniCPM3ForCausalLM", dict(logits_scaling=4.0), r"sets logits_scaling, which MiniCPM3Config derives"),
    # OLMo Hybrid: OlmoHybridConfig refuses a model without both layer kinds; its layers are linear or full attention
    ("OlmoHybridForCausalLM", dict(layer_types=["linear_attention"] * 4), r"has no full_attention layer"),
    ("OlmoHybridForCausalLM", dict(layer_types=["linear_attention", "sliding_attention"] * 2),
     r"'sliding_attention' is not one OLMo Hybrid layers run.*use linear_attention or full_attention"),
    # LFM3: its rotary embedding reads one rope per attention layer type (a flat one fails there); no Mamba layers
    ("Lfm3ForCausalLM", dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
     r"rope_parameters has no (full|sliding)_attention entry.*which LFM3 reads"),
    ("Lfm3ForCausalLM", dict(layer_types=["conv", "mamba", "full_attention", "conv"]), r"'mamba' is not one LFM3 layers run"),
    ("Lfm3ForCausalLM", dict(use_attention_gate="yes"), r"'use_attention_gate' must be"),
    # MiniMax: its layers are full or (lightning) linear attention
    ("MiniMaxForCausalLM", dict(layer_types=["full_attention", "mamba"] * 2), r"'mamba' is not one MiniMax layers run"),
    # the families' own keys, typed
    ("MiniMaxForCausalLM", dict(mlp_beta_factor="2"), r"'mlp_beta_factor' must be a number"),
    ("MiniMaxForCausalLM", dict(block_size=0), r"'block_size' must be a positive integer"),
    ("OlmoHybridForCausalLM", dict(linear_allow_neg_eigval="yes"), r"'linear_allow_neg_eigval' must be"),
    ("MiniMaxM2ForCausalLM", dict(attn_type_list="1"), r"'attn_type_list' must be a list of integers"),
    ("Glm4MoeLiteForCausalLM", dict(mlp_layer_types="dense"), r"'mlp_layer_types' must be a list of strings"),
    ("ExaoneMoeForCausalLM", dict(num_shared_experts="1"), r"'num_shared_experts' must be a non-negative integer"),
    ("MiniCPM3ForCausalLM", dict(scale_emb="12"), r"'scale_emb' must be a positive number"),
    # ropes read per layer type (a flat or missing entry, rope_scaling in their place: failures in transformers)
    ("MiMoV2FlashForCausalLM", dict(rope_scaling=None), r"rope_scaling \(null too\) takes the place of rope_parameters"),
    ("MiMoV2FlashForCausalLM", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4}), r"must give an entry for each layer type"),
    ("MellumForCausalLM", dict(rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": 0.5},
                                                "sliding_attention": {"rope_theta": 1e4}}), r"partial_rotary_factor, which transformers' Mellum"),
    ("MiMoV2FlashForCausalLM", dict(num_key_value_heads=4), r"not a multiple of the sliding layers' 8 kv heads"),
    ("MiMoV2FlashForCausalLM", dict(v_head_dim=32), r"v_head_dim=32 is wider than head_dim=24"),
    ("LagunaForCausalLM", dict(num_attention_heads_per_layer=[4, 3, 4]), r"num_attention_heads_per_layer .* multiple of num_key_value_heads=2"),
    ("LagunaForCausalLM", dict(moe_apply_router_weight_on_input=True), r"moe_apply_router_weight_on_input=true is not implemented"),
    ("AfmoeForCausalLM", dict(layer_types=None, global_attn_every_n_layers=None), r"neither layer_types nor global_attn_every_n_layers"),
    ("JetMoeForCausalLM", dict(rms_norm_eps=1e-5), r"rms_norm_eps=1e-05 applies to JetMoE's final norm alone"),
    ("Apertus1p5TextForCausalLM", dict(output_vocab_size=161), r"output_vocab_size=161 is more than vocab_size=160"),
    # values transformers cannot run, each refused by its field's one rule (config_fields) or a rule of every family:
    # an empty layer list (read as absent), a string other than "auto", a fraction
    # for an integer, 0 chunks, a dropout past 1, a null rope type, billions of heads (hung building slopes)
    ("MiniMaxForCausalLM", dict(layer_types=[]), r"'layer_types' must be a non-empty list of non-empty strings, got \[\]"),
    ("Mamba2ForCausalLM", dict(time_step_rank="x"), r"'time_step_rank' must be a positive integer <= \d+ or \"auto\", got \"x\""),
    ("MambaForCausalLM", dict(expand=1.5), r"'expand' must be a positive integer"),
    ("NemotronHForCausalLM", dict(chunk_size=0), r"'chunk_size' must be a positive integer"),
    ("Jais2ForCausalLM", dict(attention_dropout=-1), r"'attention_dropout' must be a non-negative number <= 1, got -1"),
    ("BitNetForCausalLM", dict(rope_parameters={"rope_type": None, "rope_theta": 1e4}), r"'rope_parameters\.rope_type' must be .*got null"),
    ("MiniMaxForCausalLM", dict(num_attention_heads=10**9), r"'num_attention_heads' must be a positive integer <= 65536"),
    # nulls transformers computes with (read as their defaults): in the rope settings, Falcon-H1's multipliers, a time step limit
    ("AfmoeForCausalLM", dict(rope_parameters={"rope_type": "default", "rope_theta": None}), r"'rope_parameters\.rope_theta' is null"),
    ("LagunaForCausalLM", dict(rope_parameters={t: {"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": None}
                                                for t in ("full_attention", "sliding_attention")}),
     r"rope_parameters\.(full|sliding)_attention must be a default rope with a rope_theta and a non-null partial_rotary_factor"),
    ("Qwen3NextForCausalLM", dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4, "partial_rotary_factor": None}),
     r"'rope_parameters\.partial_rotary_factor' is null"),
    ("FalconH1ForCausalLM", dict(key_multiplier=None), r"'key_multiplier' is null"),
    ("FalconH1ForCausalLM", dict(time_step_limit=None), r"time_step_limit is null"),
    # an empty rope_parameters where it is read per layer type (not the default's), experts counted 0 beside picks per token
    ("MiMoV2FlashForCausalLM", dict(rope_parameters={}), r"must give an entry for each layer type"),
    ("MiniMaxForCausalLM", dict(num_local_experts=0), r"experts' count .* as 0, while num_experts_per_tok=2"),
])
def test_options_the_new_families_do_not_run_are_refused(arch, changes, message):
    """Config values transformers' code of these families cannot run, or never reads where the checkpoint's own code would
    run something else: one line naming the key and the fix, not a model of something else."""
    spec = registry.get(arch)
    with pytest.raises(ConfigError, match=message) as info:
        spec.config(dict(spec.tiny_config, **changes))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("raw, where", [
    (dict(registry.get("LlamaForCausalLM").tiny_config, quantization_config={"quant_method": "gptq", "bits": 4}), "quantization_config"),
    ({"model_type": "llava", "text_config": dict(registry.get("LlamaForCausalLM").tiny_config, model_type="llama",
                                                 quantization_config={"quant_method": "awq"})}, "text_config.quantization_config"),
    ({"model_type": "llava", "quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True},
      "text_config": dict(registry.get("LlamaForCausalLM").tiny_config, model_type="llama")}, "quantization_config"),
])
def test_a_quantization_config_is_refused_where_it_lies(raw, where):
    """A pre-quantized checkpoint's quantization_config, at the top or inside a multimodal config's text_config (where
    the refusal named config.json's top level): refused before any tensor is read, naming the key and the fix."""
    with pytest.raises(ConfigError, match=rf"^config\.json has a {re.escape(where)} \(quant_method '\w+'\): jaxllm reads float "
                                          r"\(float32, bfloat16, float16\) weights; use the model's unquantized checkpoint") as info:
        registry.architecture_of(registry.unwrap(config_fields.check_config(raw))[0])  # as checkpoint.read_config, then load
    assert "\n" not in str(info.value)
