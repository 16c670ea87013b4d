"""StarCoder 2: the shared decoder layer with LayerNorms (sequential residual) with
biases on q/k/v/o and an ungated c_fc/c_proj MLP (all as use_bias says, on by default), the
norms' epsilon spelled norm_epsilon, a sliding window on every layer where sliding_window is set
(no layer_types), whole-head rotary and tied embeddings by default."""

from jaxllm.models.architecture import NO_WINDOW_SWITCH, NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, LayerNormDecoderLayer, dense
from jaxllm.models.layers import LayerNorm
from jaxllm.models.stablelm import layernorm_weight_map
from jaxllm.models.weights import WeightSpec


class Starcoder2ForCausalLM(CausalLM):
    layer_cls = LayerNormDecoderLayer
    final_norm = LayerNorm


def starcoder2_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = [s for s in layernorm_weight_map(cfg) if ".mlp." not in s.hf_names[0]]
    for i in range(cfg.num_layers):
        hf, ours = f"model.layers.{i}.mlp.", ("model", "layers", i, "mlp")
        for theirs, name in (("c_fc", "up_proj"), ("c_proj", "down_proj")):
            specs += dense(f"{hf}{theirs}", ours + (name,), bias=cfg.mlp_bias)
    return specs


def starcoder2_names(raw: dict) -> dict:
    """norm_epsilon as the common layer_norm_eps."""
    return {**{k: v for k, v in raw.items() if k != "norm_epsilon"}, "layer_norm_eps": raw.get("norm_epsilon")}


def starcoder2_defaults(raw: dict) -> dict:
    bias = raw.get("use_bias") is not False
    return dict(qkv_bias=bias, o_bias=bias, mlp_bias=bias, gated_mlp=False, parallel_residual=False)


ARCHITECTURES = (Architecture(
    name="Starcoder2ForCausalLM", module=Starcoder2ForCausalLM, weight_map=starcoder2_weight_map, hf_model_type="starcoder2",
    # its window is on every layer (sliding_window alone says); its biases are use_bias's
    ignored_keys=NO_WINDOW_SWITCH + ("layer_types",), common_names=starcoder2_names, config_defaults=starcoder2_defaults,
    norm_eps_key="norm_epsilon", not_null=NOT_NULL + ("norm_epsilon", "hidden_act", "rope_theta", "use_bias", "num_key_value_heads"),
    hf_defaults=dict(norm_epsilon=1e-5, hidden_act="gelu_pytorch_tanh", use_bias=True, tie_word_embeddings=True,
                     num_key_value_heads=2, max_position_embeddings=4096),
    # GQA, a window shorter than the parity tests' sequence, biases, tied (StarCoder 2 3B/7B/15B's form)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                     num_key_value_heads=2, max_position_embeddings=256, norm_epsilon=1e-5, hidden_act="gelu_pytorch_tanh",
                     rope_theta=100000.0, sliding_window=8, use_bias=True, tie_word_embeddings=True,
                     bos_token_id=1, eos_token_id=2),
),)
