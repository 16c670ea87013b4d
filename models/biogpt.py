"""BioGPT (microsoft/biogpt): fairseq's pre-LN decoder (OPT's module tree under `biogpt`, its final norm
`layer_norm`), learned positions read at position + 2, embeddings times sqrt(hidden_size) where
scale_embedding (a Python float: unrounded), LayerNorms of epsilon 1e-5 whatever layer_norm_eps says
(nn.LayerNorm's default; BioGptConfig's 1e-12 is never read), biases everywhere, an ungated MLP of
hidden_act, and an output head `output_projection` tied to the embeddings by default."""

from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.opt import OPTForCausalLM, fairseq_defaults, fairseq_layout


def scaled_embeddings(raw: dict) -> dict:
    """fairseq's embeddings times sqrt(d_model) where scale_embedding, in float32 (BioGPT, XGLM)."""
    return dict(embed_scale=float(raw["hidden_size"]) ** 0.5 if raw["scale_embedding"] else 1.0, embed_scale_exact=True)


ARCHITECTURES = (Architecture(
    name="BioGptForCausalLM", module=OPTForCausalLM, hf_model_type="biogpt", base_prefix="biogpt",
    weight_map=lambda cfg: fairseq_layout(cfg, "biogpt", "layer_norm", "output_projection.weight"), head_name="output_projection.weight",
    # heads of hidden_size / num_attention_heads, each with its own k/v; norms of a fixed epsilon
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "layer_norm_eps", "rms_norm_eps", "attention_bias", "mlp_bias"),
    not_null=NOT_NULL + ("hidden_act", "scale_embedding", "layer_norm_eps"),
    config_defaults=lambda raw: dict(fairseq_defaults(), **scaled_embeddings(raw)),
    hf_defaults=dict(hidden_act="gelu", max_position_embeddings=1024, scale_embedding=True, tie_word_embeddings=True, pad_token_id=1,
                     bos_token_id=0, eos_token_id=2),
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     max_position_embeddings=64, hidden_act="gelu", scale_embedding=True, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
