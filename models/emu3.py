"""Emu3's text model (BAAI Emu3-Chat / Emu3-Gen): Llama's decoder as it is; its layer's extra dropout is
off at inference. Emu3ForCausalLM saves its config as model_type "emu3_text_model" (Emu3TextConfig, whose own
defaults: rope base 1e6, 8 kv heads); Emu3ForConditionalGeneration (model_type "emu3") holds it as `text_model`
beside its VQ-VAE image tokenizer (`vqmodel`), never read for text, under its own untied lm_head."""

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.decoder import CausalLM, decoder_weight_map

# Emu3TextConfig's defaults where the generic reading differs (Emu3-Chat's shapes come with its files)
TEXT_DEFAULTS = dict(num_key_value_heads=8, max_position_embeddings=9216, rms_norm_eps=1e-5, rope_theta=1_000_000.0)

# Emu3Config builds its text_config with Emu3TextConfig whatever it names; its lm_head is the wrapper's own, tied by its
# top-level tie_word_embeddings (false where left out); transformers 4 saved the text model as text_model.model.*
EMU3 = Wrapper(name="Emu3ForConditionalGeneration", model_type="emu3", text_model_type="emu3_text_model", text_module="text_model",
               other_modules=("vqmodel",), top_level=dict(tie_word_embeddings=False),
               text_defaults={"emu3_text_model": dict(TEXT_DEFAULTS, vocab_size=184622, hidden_size=4096, intermediate_size=14336,
                                                      num_hidden_layers=32, num_attention_heads=32)})

ARCHITECTURES = (Architecture(
    name="Emu3ForCausalLM", module=CausalLM, weight_map=decoder_weight_map, hf_model_type="emu3_text_model", ignored_keys=NO_WINDOW,
    hf_defaults=TEXT_DEFAULTS, not_null=RMS_NOT_NULL + ("num_key_value_heads", "head_dim"), wrappers=(EMU3,),
    # GQA, q/k/v/o and MLP biases (Emu3's checkpoints have none: the switches Llama's code reads)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, attention_bias=True,
                     mlp_bias=True, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
