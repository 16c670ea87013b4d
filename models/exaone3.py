"""EXAONE 3.0 / 3.5 (ExaoneForCausalLM, model_type "exaone"): transformers builds Llama's model from
its config (LlamaForCausalLM: the shared decoder as Llama reads it), and so do we. What is its own
is the checkpoint's naming (transformer.wte, transformer.h.N.attn.attention.*, ln_1 / ln_2,
mlp.c_fc_0 / c_fc_1 / c_proj, transformer.ln_f: transformers' conversion mapping renames them) and
the config's spellings (ExaoneConfig's attribute_map: num_layers, layer_norm_epsilon and
activation_function name num_hidden_layers, rms_norm_eps and hidden_act, and win over them)."""

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, decoder_weight_map
from jaxllm.models.weights import WeightSpec

# Llama's names -> EXAONE's, in order (o_proj before the rest of self_attn)
NAMES = (("model.embed_tokens.", "transformer.wte."), ("model.layers.", "transformer.h."), ("model.norm.", "transformer.ln_f."),
         (".self_attn.o_proj.", ".attn.attention.out_proj."), (".self_attn.", ".attn.attention."), (".input_layernorm.", ".ln_1."),
         (".post_attention_layernorm.", ".ln_2."), (".mlp.gate_proj.", ".mlp.c_fc_0."), (".mlp.up_proj.", ".mlp.c_fc_1."),
         (".mlp.down_proj.", ".mlp.c_proj."))
ALIASES = {"num_layers": "num_hidden_layers", "layer_norm_epsilon": "rms_norm_eps", "activation_function": "hidden_act"}


def exaone_name(name: str) -> str:
    for ours, theirs in NAMES:
        name = name.replace(ours, theirs, 1)
    return name


def exaone_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    return [WeightSpec(exaone_name(s.hf_name), s.path, s.transform) for s in decoder_weight_map(cfg)]


def exaone_names(raw: dict) -> dict:
    """ExaoneConfig's attribute_map: each alias the file gives replaces the key it names."""
    return dict(raw, **{key: raw[alias] for alias, key in ALIASES.items() if alias in raw})


ARCHITECTURES = (Architecture(
    name="ExaoneForCausalLM", module=CausalLM, weight_map=exaone_weight_map, hf_model_type="exaone", common_names=exaone_names,
    base_prefix="transformer", ignored_keys=NO_WINDOW, norm_eps_key=("rms_norm_eps", "layer_norm_epsilon"),
    # ExaoneConfig's field defaults (EXAONE-3.0-7.8B's shapes, LlamaConfig's where it keeps them; its rope base default_theta)
    hf_defaults=dict(vocab_size=102400, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=500_000.0,
                     bos_token_id=1, eos_token_id=361, pad_token_id=0),
    not_null=RMS_NOT_NULL + ("num_layers", "layer_norm_epsilon", "activation_function", "attention_bias", "mlp_bias"),
    # tied embeddings (EXAONE-3.5-2.4B); GQA
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
                     tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
