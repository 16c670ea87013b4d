"""config.json values at the edges of what transformers takes: a value it runs loads with its
results, one it cannot run is refused in one line naming the field and the fix."""

import numpy as np
import pytest
import reference

import jaxllm
from jaxllm import loader
from jaxllm.errors import ConfigError
from jaxllm.models import registry

TOKENS = np.array([[3, 17, 42, 7, 99, 5]])


def test_odd_heads_without_rotary_positions_load_as_transformers_runs_them(tmp_path):
    """GPT-2's learned positions rotate nothing: heads of 5 values run in transformers, and were
    refused as an odd rotary dimension ('correct partial_rotary_factor', a field GPT-2 has not)."""
    model = reference.build("GPT2LMHeadModel", tmp_path, seed=2, n_embd=20, n_head=4, n_layer=1)
    ours = jaxllm.load(tmp_path, tokenizer=False)
    assert ours.config.head_dim == 5
    assert reference.max_rel_diff(ours.logits(TOKENS), reference.torch_logits(model, TOKENS)) < 1e-5


QWEN3 = dict(model_type="qwen3", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
             num_attention_heads=4, num_key_value_heads=2, head_dim=4)


@pytest.mark.parametrize("raw, fix", [
    (dict(QWEN3, head_dim=5), r"\(head_dim 5 x partial_rotary_factor 1\) must be even.*: correct head_dim"),
    ({**{k: v for k, v in QWEN3.items() if k != "head_dim"}, "model_type": "llama", "hidden_size": 20},
     r"\(head_dim 5 x partial_rotary_factor 1\) must be even.*: correct head_dim \(hidden_size / num_attention_heads where "
     r"config\.json gives no head_dim\)"),
    (({**{k: v for k, v in QWEN3.items() if k != "head_dim"}, "model_type": "phi", "hidden_size": 24, "partial_rotary_factor": 0.25}),
     r"1 \(head_dim 6 x partial_rotary_factor 0\.25\) must be even.*: correct partial_rotary_factor"),
], ids=["head-dim", "derived-head-dim", "partial-factor"])
def test_an_odd_rotary_dimension_names_the_field_to_correct(raw, fix):
    with pytest.raises(ConfigError, match=r"^config\.json rotary dimension .*" + fix) as info:
        loader.plan(raw)
    assert "\n" not in str(info.value)


FALCON = dict(model_type="falcon", vocab_size=32, hidden_size=16, num_hidden_layers=1, num_attention_heads=4)


@pytest.mark.parametrize("change, message", [
    (dict(new_decoder_architecture=True, parallel_attn=False), r"new_decoder_architecture=true with parallel_attn false"),
    (dict(num_ln_in_parallel_attn=2), r"num_ln_in_parallel_attn=2: transformers' Falcon runs 2"),
    (dict(multi_query=False, num_kv_heads=2), r"num_kv_heads=2 without multi_query or new_decoder_architecture"),
], ids=["new-decoder-sequential", "two-norms-old-decoder", "kv-heads-old-decoder"])
def test_falcon_layers_it_cannot_run_are_refused(change, message):
    """Layers transformers' Falcon builds but cannot run."""
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(dict(FALCON, **change))
    assert "\n" not in str(info.value)


MPT = dict(model_type="mpt", vocab_size=32, d_model=16, n_layers=1, n_heads=4)


@pytest.mark.parametrize("change, message", [
    (dict(attn_config=dict(attn_type="multiquery_attention")), r"attn_config\.attn_type='multiquery_attention'"),
    (dict(attn_config=dict(qk_ln=True)), r"attn_config\.qk_ln=true"),
    (dict(attn_config=dict(prefix_lm=True)), r"attn_config\.prefix_lm=true"),
    (dict(attn_config=dict(alibi=False)), r"attn_config\.alibi=false"),
    (dict(attn_config=dict(alibi_bias_max=16)), r"attn_config\.alibi_bias_max=16"),
    (dict(attn_config=dict(clip_qkv="6")), r"'attn_config\.clip_qkv' must be a positive number"),
    (dict(no_bias=False), r"no_bias=false"),
    (dict(expansion_ratio=2), r"expansion_ratio=2"),
    (dict(logit_scale=0.5), r"logit_scale: transformers' MPT never scales"),
], ids=["multiquery", "qk-ln", "prefix-lm", "no-alibi", "alibi-bias-max", "clip-type", "biases", "expansion", "logit-scale"])
def test_mpt_options_transformers_does_not_run_as_trained_are_refused(change, message):
    """MosaicML's options transformers' MPT ignores (computing another model than the checkpoint's)
    or cannot load, and attn_config's field types, each refused in one line."""
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(dict(MPT, **change))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("change, message", [
    (dict(apply_residual_connection_post_layernorm=True), r"apply_residual_connection_post_layernorm=true .* not supported"),
    (dict(slow_but_exact=True, pretraining_tp=2), r"slow_but_exact=true with pretraining_tp=2: .* drops their biases"),
], ids=["residual-after-norm", "slow-but-exact"])
def test_bloom_layers_transformers_runs_otherwise_are_refused(change, message):
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(dict(model_type="bloom", vocab_size=32, hidden_size=16, n_layer=1, n_head=4, **change))
    assert "\n" not in str(info.value)


MAMBA = dict(model_type="mamba", vocab_size=32, hidden_size=16, num_hidden_layers=2, state_size=4)
JAMBA = dict(model_type="jamba", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2)


@pytest.mark.parametrize("raw, message", [
    (dict(MAMBA, layer_types=["linear_attention"] * 2), r"gives 'layer_types', which mamba config cannot set"),
    (dict(JAMBA, layers_block_type=["mamba", "attention"]), r"gives 'layers_block_type', which jamba config cannot set"),
    (dict(JAMBA, attn_layer_period=2, attn_layer_offset=2), r"attn_layer_offset=2 is not smaller than attn_layer_period=2"),
    (dict(JAMBA, expert_layer_period=1, expert_layer_offset=1), r"expert_layer_offset=1 is not smaller than expert_layer_period=1"),
], ids=["mamba-layer-types", "jamba-block-types", "jamba-attention-offset", "jamba-expert-offset"])
def test_mamba_layer_patterns_transformers_refuses_are_refused(raw, message):
    """Layer patterns the Mamba and Jamba config classes refuse (properties they cannot set, offsets past their period)."""
    import transformers
    from huggingface_hub.errors import StrictDataclassError

    with pytest.raises((AttributeError, StrictDataclassError)):
        transformers.CONFIG_MAPPING[raw["model_type"]].from_dict(dict(raw))
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(raw)
    assert "\n" not in str(info.value)


NEMOTRON_H = dict(model_type="nemotron_h", vocab_size=32, hidden_size=16, intermediate_size=24, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=4, mamba_num_heads=4, mamba_head_dim=8, n_groups=2, ssm_state_size=4)


@pytest.mark.parametrize("raw, message", [
    (dict(NEMOTRON_H, hybrid_override_pattern="M*X"), r"hybrid_override_pattern 'M\*X' is not a string of M \(Mamba2\)"),
    (dict(NEMOTRON_H, hybrid_override_pattern="ME", n_routed_experts=0), r"n_routed_experts is 0 beside MoE \(E\) blocks"),
    (dict(NEMOTRON_H, hybrid_override_pattern="M", n_groups=3), r"mamba_num_heads=4 is not a multiple of n_groups=3"),
    (dict(model_type="falcon_h1", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4,
          mamba_d_ssm=32, mamba_n_heads=4, ssm_multipliers=[1.0, 2.0]), r"ssm_multipliers has 2 values where Falcon-H1 reads 5"),
    (dict(model_type="mamba2", vocab_size=32, hidden_size=16, num_hidden_layers=1, num_heads=4, head_dim=4, n_groups=1),
     r"num_heads=4 x head_dim=4 is not expand x hidden_size = 32"),
], ids=["nemotron-h-pattern", "nemotron-h-no-experts", "nemotron-h-groups", "falcon-h1-multipliers", "mamba2-heads"])
def test_mamba2_hybrids_refuse_what_transformers_cannot_run(raw, message):
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(raw)
    assert "\n" not in str(info.value)


RECURRENT_GEMMA = dict(model_type="recurrent_gemma", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                       num_attention_heads=4)


@pytest.mark.parametrize("raw, message", [
    (dict(RECURRENT_GEMMA, lru_width=18), r"lru_width=18 is not a multiple of num_attention_heads=4"),
    (dict(RECURRENT_GEMMA, rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}), r"rope type 'linear' is not"),
    (dict(RECURRENT_GEMMA, layer_types=["sliding_attention"] * 3), r"gives 'layer_types', which recurrent_gemma config cannot set"),
    (dict(RECURRENT_GEMMA, block_types=["recurrent", "mlp"]), r"block_types has 'mlp', not a block RecurrentGemma has"),
    (dict(RECURRENT_GEMMA, hidden_size=2), r"hidden_size=2 is less than num_attention_heads=4"),
], ids=["lru-blocks", "rope-scaling", "layer-types", "block-type", "no-head-width"])
def test_recurrent_gemma_refuses_what_it_cannot_run(raw, message):
    """RecurrentGemma configs transformers fails on (an RG-LRU its gate blocks cannot split, a rope but the default, a
    layer_types its config cannot set, heads 0 wide) or would read otherwise than they say (a block type but recurrent
    or attention, which transformers takes for attention)."""
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(raw)
    assert "\n" not in str(info.value)


SMALL = dict(vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("raw, message", [
    (dict(SMALL, model_type="bitnet", head_dim=8), r"num_attention_heads=4 x head_dim=8 is not hidden_size=16: .*attn_sub_norm"),
    (dict(SMALL, model_type="diffllama", num_key_value_heads=1), r"num_key_value_heads=1 is odd: .*give an even number"),
    (dict(SMALL, model_type="hyperclovax", hidden_size=18, head_dim=4), r"hidden_size=18 is not a multiple of num_attention_heads=4"),
    (dict(SMALL, model_type="cohere2_moe", expert_selection_fn="relu"), r"expert_selection_fn 'relu' is not one .*: use softmax or sigmoid"),
    (dict(SMALL, model_type="cohere2_moe", num_shared_experts=1, shared_expert_combination_strategy="max"),
     r"shared_expert_combination_strategy 'max' is not one .*: use sum or average"),
    (dict(SMALL, model_type="granite_swa", num_hidden_layers=2, layer_rope_theta=[1e4]), r"layer_rope_theta has 1 entries for 2 layers"),
    (dict(JAMBA, hidden_act=""), r"hidden_act '' is not supported; supported: "),  # was read as absent (silu): transformers fails
], ids=["bitnet-heads", "diffllama-odd-kv-heads", "hyperclovax-heads", "cohere2-moe-selection", "cohere2-moe-combination",
        "granite-swa-thetas", "empty-activation"])
def test_shapes_a_family_cannot_run_are_refused(raw, message):
    """Shapes transformers builds a family's model of but cannot run (or refuses), each refused in one line."""
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(raw)
    assert "\n" not in str(info.value)


def tiny(name: str, **changes) -> dict:
    """The registered tiny config of architecture `name` (what the parity tests build), `changes` applied."""
    arch = registry.get(name)
    return dict(arch.tiny_config, model_type=arch.hf_model_type, **changes)


DOGE = dict(model_type="doge", vocab_size=32, hidden_size=16, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4)


@pytest.mark.parametrize("raw, message", [
    (dict(model_type="openai-gpt", vocab_size=32, n_embd=16, n_layer=1, n_head=4, afn="tanh"), r"afn 'tanh' is not one of OpenAI GPT's"),
    (dict(model_type="aria_text", vocab_size=32, hidden_size=16, intermediate_size=8, num_hidden_layers=1, num_attention_heads=4,
          moe_topk=[2]), r"moe_topk is a list, which AriaTextConfig refuses"),
    (dict(DOGE, is_moe=True), r"is_moe is true: Doge's cross-domain MoE"),
    (dict(DOGE, keep_window_size=512), r"keep_window_size=512 is below max_position_embeddings=2048"),
    (dict(model_type="lara_mini", num_hidden_layers=2, layer_types=["linear_attention", "hybrid"]),
     r"layer type 'hybrid' is not one LaraMini layers run \(transformers has no attention mask for it\): use linear_attention"),
    (dict(model_type="lara_mini", num_hidden_layers=2, linear_num_key_heads=3),
     r"linear_num_value_heads=16 is not a multiple of linear_num_key_heads=3"),
    (dict(model_type="zaya", num_hidden_layers=1, num_experts_per_tok=2), r"num_experts_per_tok=2, but Zaya routes each token "
     r"to one expert \(ZayaConfig refuses others\): set it to 1"),
    (dict(model_type="zaya", num_hidden_layers=1, layer_types=["sliding_attention"]), r"layer type 'sliding_attention' is not "
     r"one Zaya layers run .*: use hybrid or hybrid_sliding"),
    (dict(model_type="zaya", num_hidden_layers=1, num_key_value_heads=1, head_dim=9), r"num_key_value_heads x head_dim = 9 is odd"),
    # the newer families' own fields, as a hostile config.json gives them: each a TypeError, MemoryError or hang before
    (tiny("OpenAIGPTLMHeadModel", afn=["gelu"]), r"'afn' must be a string, got \[\"gelu\"\]"),
    (tiny("KimiLinearForCausalLM", linear_attn_config=dict(tiny("KimiLinearForCausalLM")["linear_attn_config"], head_dim=None)),
     r"'linear_attn_config\.head_dim' must be a positive integer <= 2147483647, got null"),
    (tiny("ZayaForCausalLM", rope_parameters={"hybrid": {"rope_type": "default", "rope_theta": "1e4"}}),
     r"'rope_parameters\.hybrid\.rope_theta' must be a positive number, got \"1e4\""),  # a per-layer-type entry of its own names
    (tiny("DoryForCausalLM", n_recurrent_loops=10**12), r"n_input_layers 1 \+ n_recurrent_layers 2 x n_recurrent_loops "
     r"1000000000000 \+ n_output_layers 1 make 2,000,000,000,002 layers, more than the 1024 jaxllm builds"),
    (tiny("HrmTextForCausalLM", H_cycles=10**6), r"num_hidden_layers 2 x H_cycles 1000000 x \(L_cycles 2 \+ 1\) make 6,000,000 layers"),
    (tiny("LongcatFlashForCausalLM", num_layers=1000), r"num_layers 1000 \(each two layers of jaxllm's: .*\) make 2,000 layers"),
    # Ergo: a head_dim its rotary embedding turns but its attention does not have (a shape error), no interval of full
    # layers (a ZeroDivisionError), layers without a mask, a layer type without its rope entry (a KeyError), nulls
    # ErgoConfig refuses or its model cannot run, a negative scale of the full layers' logits (its square root complex,
    # whose imaginary part transformers drops with a warning: a scale of ~1e-33)
    (tiny("ErgoForCausalLM", head_dim=8), r"head_dim=8 is not hidden_size // num_attention_heads = 16, .*: remove head_dim"),
    (tiny("ErgoForCausalLM", global_attention_every_n_layers=0), r"global_attention_every_n_layers is 0 and layer_types is left out"),
    (tiny("ErgoForCausalLM", layer_types=["chunked_attention"] * 3), r"layer type 'chunked_attention' is not one Ergo layers run"),
    (tiny("ErgoForCausalLM", rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1e4}}),
     r"rope_parameters has no sliding_attention entry, which Ergo reads for its sliding_attention layers"),
    (tiny("ErgoForCausalLM", rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": None}, "full_attention": None}),
     r"rope_theta is null for the sliding_attention layers' rotary positions"),
    (tiny("ErgoForCausalLM", local_attention_window=None), r"'local_attention_window' is null"),
    (tiny("ErgoForCausalLM", num_dense_blocks=None), r"'num_dense_blocks' is null"),
    (tiny("ErgoForCausalLM", global_attention_scale=-1.0), r"'global_attention_scale' must be a non-negative number"),
], ids=["openai-gpt-activation", "aria-topk-per-layer", "doge-moe", "doge-key-selection", "lara-mini-layer-type",
        "lara-mini-linear-heads", "zaya-top-k", "zaya-layer-type", "zaya-odd-values", "openai-gpt-activation-list",
        "kimi-null-linear-heads", "zaya-rope-entry", "dory-loops", "hrm-cycles", "longcat-layers", "ergo-head-dim",
        "ergo-full-interval", "ergo-chunked", "ergo-rope-entry", "ergo-null-theta", "ergo-null-window", "ergo-null-dense",
        "ergo-negative-scale"])
def test_values_transformers_refuses_for_these_families_are_refused(raw, message):
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(raw)
    assert "\n" not in str(info.value)


ZAMBA2 = dict(model_type="zamba2", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
              n_mamba_heads=4, mamba_ngroups=1, mamba_d_state=4, adapter_rank=2, layers_block_type=["mamba", "hybrid"])


@pytest.mark.parametrize("change, message", [
    (dict(num_key_value_heads=2, use_shared_attention_adapter=True), r"use_shared_attention_adapter with 4 query and 2 kv heads"),
    (dict(layer_types=["hybrid", "mamba"]), r"hybrid_layer_ids \[1\] are not the hybrid layers \[0\]"),
    (dict(layers_block_type=["full_attention", "hybrid"]), r"layer type 'full_attention' is not one Zamba2 runs"),
    (dict(n_mamba_heads=3), r"n_mamba_heads=3 does not divide mamba_expand x hidden_size = 32"),
    (dict(attention_hidden_size=16), r"attention_hidden_size=16 is not 2 x hidden_size = 32"),
    (dict(head_dim=4, attention_head_dim=2), r"head_dim=4 and its alias attention_head_dim=2 differ"),
    (dict(model_type="zamba", n_mamba_heads=3), r"n_mamba_heads=3 does not divide mamba_expand x hidden_size = 32"),
    (dict(model_type="zamba", layers_block_type=["mamba", "attention"]), r"layer type 'attention' is not one Zamba runs"),
], ids=["adapters-gqa", "alias-layers", "attention-layer", "mamba-heads", "attention-width", "head-dims", "zamba-mamba-heads",
        "zamba-attention-layer"])
def test_zamba_models_transformers_cannot_run_are_refused(change, message):
    """Zamba2 and Zamba configs transformers builds but cannot run (or reads two ways), each refused in one line."""
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(dict(ZAMBA2, **change))
    assert "\n" not in str(info.value)


MLLAMA = dict(model_type="mllama_text_model", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, cross_attention_layers=[1])
MODERNBERT = dict(model_type="modernbert-decoder", vocab_size=32, hidden_size=16, intermediate_size=24, num_hidden_layers=3,
                  num_attention_heads=4)


@pytest.mark.parametrize("raw, message", [
    (dict(MLLAMA, cross_attention_layers=[0, 1]), r"cross_attention_layers names every one of the 2 layers"),
    (dict(MLLAMA, cross_attention_layers=7), r"'cross_attention_layers' must be a list of integers"),
    (dict(MLLAMA, head_dim=8), r"head_dim 8 is not hidden_size / num_attention_heads \(16 / 4\)"),
    (dict(MODERNBERT, head_dim=8), r"head_dim 8 is not hidden_size / num_attention_heads \(16 / 4\)"),
    (dict(MODERNBERT, local_attention=1), r"local_attention=1 leaves the sliding_attention layers a window of no token"),
    (dict(MODERNBERT, layer_types=["full_attention", "chunked_attention", "full_attention"]),
     r"layer type 'chunked_attention' is not one ModernBERT-decoder runs"),
    (dict(MODERNBERT, rope_parameters={"rope_type": "default", "rope_theta": 5.0}), r"rope_parameters must hold one entry per layer type"),
    (dict(MODERNBERT, classifier_activation="nope"), r"classifier_activation 'nope' is not supported"),
], ids=["mllama-no-self-layer", "mllama-cross-not-list", "mllama-head-dim", "modernbert-head-dim", "modernbert-no-window",
        "modernbert-chunked", "modernbert-flat-rope", "modernbert-head-act"])
def test_mllama_and_modernbert_configs_transformers_cannot_run_are_refused(raw, message):
    with pytest.raises(ConfigError, match=r"^config\.json " + message) as info:
        loader.plan(raw)
    assert "\n" not in str(info.value)
