"""NanoChat (NanoChatForCausalLM, karpathy/nanochat's models in transformers' layout): Llama's
pre-norm layer in which every norm is an RMSNorm without a weight (the layers', the final one and
one more of the token embeddings before the first layer), an ungated MLP (fc1, fc2; squared ReLU
by default) without biases, queries and keys rotated the other way (its rotate_half is
cat(x2, -x1): `rope_reversed`) and then RMS-normed per head without a weight (Llama 4's L2 norm
after rotation), q/k/v/o biases as attention_bias says, and the logits tanh soft-capped by
final_logit_softcapping (Gemma 2's head; 15 by default)."""

import functools

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import normed_causal_lm, renamed
from jaxllm.models.layers import RMSNorm
from jaxllm.models.olmo import olmo_weight_map
from jaxllm.models.weights import WeightSpec

NanoChatForCausalLM = normed_causal_lm(functools.partial(RMSNorm, weight=False), "NanoChatForCausalLM")


def nanochat_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Llama's naming less the norms (they hold no tensor), the MLP's fc1 and fc2."""
    return renamed(olmo_weight_map(cfg), {"up_proj": "fc1", "down_proj": "fc2"})


def nanochat_defaults(raw: dict) -> dict:
    return dict(mlp_bias=False, gated_mlp=False, embed_norm=True, qk_norm="l2", qk_norm_after_rope=True, rope_reversed=True,
                final_softcap=raw.get("final_logit_softcapping"))


ARCHITECTURES = (Architecture(
    name="NanoChatForCausalLM", module=NanoChatForCausalLM, weight_map=nanochat_weight_map, hf_model_type="nanochat",
    config_defaults=nanochat_defaults, ignored_keys=NO_WINDOW + ("mlp_bias",),
    # NanoChatConfig's field defaults (nanochat d12's shapes)
    hf_defaults=dict(vocab_size=50304, hidden_size=768, intermediate_size=8192, num_hidden_layers=12, num_attention_heads=6,
                     max_position_embeddings=2048, hidden_act="relu2", rms_norm_eps=1e-6, final_logit_softcapping=15.0,
                     attention_bias=False, bos_token_id=0, eos_token_id=1, pad_token_id=1),
    not_null=RMS_NOT_NULL + ("attention_bias", "head_dim"),
    # GQA; q/k/v/o biases; logits soft-capped at 5 (the seeded weights' logits reach past it)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                     hidden_act="relu2", final_logit_softcapping=5.0, attention_bias=True, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
