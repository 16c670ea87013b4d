"""XGLM (facebook/xglm-*): fairseq's pre-LN decoder (OPT's module tree under `model`, its final norm
`layer_norm`) with sinusoidal positions, read at position + 2 from rows sin | cos whose row
pad_token_id (its padding_idx) is zeros; embeddings times sqrt(d_model) where scale_embedding;
LayerNorms of epsilon 1e-5, biases everywhere, an ungated MLP of activation_function, tied embeddings
by default. Its own spellings: d_model, num_layers, attention_heads, ffn_dim."""

from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.biogpt import scaled_embeddings
from jaxllm.models.opt import OPTForCausalLM, fairseq_defaults, fairseq_layout, fairseq_names

ARCHITECTURES = (Architecture(
    name="XGLMForCausalLM", module=OPTForCausalLM, hf_model_type="xglm",
    weight_map=lambda cfg: fairseq_layout(cfg, "model", "layer_norm", "lm_head.weight"),
    # heads of d_model / attention_heads, each with its own k/v; norms of a fixed epsilon; its activation and
    # widths its own keys' (fairseq_names)
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "layer_norm_eps", "rms_norm_eps", "hidden_act", "intermediate_size",
                              "attention_bias", "mlp_bias"),
    not_null=NOT_NULL + ("d_model", "num_layers", "attention_heads", "ffn_dim", "activation_function", "scale_embedding"),
    common_names=fairseq_names,
    config_defaults=lambda raw: dict(fairseq_defaults(), position_embedding="sinusoidal", **scaled_embeddings(raw)),
    hf_defaults=dict(activation_function="gelu", max_position_embeddings=2048, scale_embedding=True, tie_word_embeddings=True,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2),
    # the positions' table transformers keeps in old checkpoints (a non-persistent buffer now)
    ignore=(r".*embed_positions\.weights$",),
    # a pad_token_id past the offset, so a row of the sinusoidal table (position 3) is zeros as transformers makes it
    tiny_config=dict(vocab_size=128, d_model=64, ffn_dim=96, num_layers=3, attention_heads=4, max_position_embeddings=64,
                     activation_function="gelu", scale_embedding=True, bos_token_id=1, eos_token_id=2, pad_token_id=5),
),)
