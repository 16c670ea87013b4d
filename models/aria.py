"""Aria's text model (rhymes-ai/Aria): Llama's attention with routed experts in every layer beside shared ones.
Its router takes the top k logits, then softmax over those k (`router` "topk_softmax", no bias); its experts are always
SiLU-gated (`expert_act`) and intermediate_size wide, the shared ones one gated MLP moe_num_shared_experts times as
wide under hidden_act, added without a gate; mlp_bias applies to the shared MLP alone.

The checkpoint keeps each layer's experts in two tensors laid out as their products read them: experts.fc1 [X, E, 2F]
(gate columns, then up) and experts.fc2 [X, F, E] (transformers reads them as gate_up_proj / down_proj and saves them
back under these names). AriaForConditionalGeneration (model_type "aria") holds this text model in LLaVA's layout."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture, Wrapper
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM
from jaxllm.models.moe import empty_shared, moe_weight_map
from jaxllm.models.transforms import Copy, Part, Stacked
from jaxllm.models.weights import WeightSpec

KEYS = ("moe_num_experts", "moe_topk", "moe_num_shared_experts")


def aria_defaults(raw: dict) -> dict:
    if isinstance(raw["moe_topk"], list):
        raise ConfigError("config.json moe_topk is a list, which AriaTextConfig refuses (one number of experts per token for "
                          "every layer): give one number")
    f = raw["intermediate_size"]
    return dict(num_experts=raw["moe_num_experts"], experts_per_token=raw["moe_topk"], moe_intermediate_size=f,
                shared_expert_intermediate_size=f * raw["moe_num_shared_experts"], shared_expert_gated=False,
                router="topk_softmax", expert_act="silu")


_shared = moe_weight_map("mlp", {}, router="router.weight", shared="shared_experts")


def aria_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """Llama's names, the router at mlp.router, the shared MLP at mlp.shared_experts, the experts' fused tensors."""
    specs, f = _shared(cfg), cfg.moe_intermediate_size
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.mlp.experts.", ("model", "layers", i, "mlp")
        specs += [WeightSpec(hf + "fc1.weight", ours + ("gate_proj",), Stacked(Part(0, 2 * f, axis=1))),
                  WeightSpec(hf + "fc1.weight", ours + ("up_proj",), Stacked(Part(f, 2 * f, axis=1))),
                  WeightSpec(hf + "fc2.weight", ours + ("down_proj",), Copy())]
    return specs


# AriaConfig builds its text_config with AriaTextConfig whatever it names; LLaVA's layout (transformers 4's
# language_model.model.*, 5's model.language_model.*), the wrapper's own lm_head, tied by its top level (false where left out)
ARIA = Wrapper(name="AriaForConditionalGeneration", model_type="aria", text_model_type="aria_text",
               top_level=dict(tie_word_embeddings=False))

ARCHITECTURES = (Architecture(
    name="AriaTextForCausalLM", module=CausalLM, weight_map=aria_weight_map, hf_model_type="aria_text", config_defaults=aria_defaults,
    ignored_keys=NO_WINDOW, ignore_for=empty_shared("shared_experts"), wrappers=(ARIA,),
    # AriaTextConfig's field defaults (its num_key_value_heads: num_attention_heads, as the generic reading)
    hf_defaults=dict(max_position_embeddings=2048, rms_norm_eps=1e-6, moe_num_experts=8, moe_topk=2, moe_num_shared_experts=2),
    not_null=RMS_NOT_NULL + ("attention_bias", "mlp_bias") + KEYS,
    # GQA, 4 experts (top 2) beside 2 shared ones under another activation, q/k/v/o and shared-MLP biases
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=32, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="gelu",
                     attention_bias=True, mlp_bias=True, moe_num_experts=4, moe_topk=2, moe_num_shared_experts=2,
                     tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
