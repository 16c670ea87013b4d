"""OLMo 2: the shared decoder with norms after attention and after the MLP (no input norm), q/k
RMSNorm over the whole projection, and norm scales applied in float32."""

from flax import nnx

from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED, Attention
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, decoder_weight_map, norm_kwargs
from jaxllm.models.layers import GatedMLP, RMSNorm
from jaxllm.models.weights import WeightSpec


class Olmo2DecoderLayer(nnx.Module):
    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        norm = norm_kwargs(cfg, dtype, rngs)
        self.self_attn = Attention(cfg, layer, dtype=dtype, rngs=rngs)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, **norm)
        self.mlp = GatedMLP(cfg, dtype=dtype, rngs=rngs)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, **norm)

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        attn, cache = self.self_attn(x, positions, rot, cache, kv)
        x = x + self.post_attention_layernorm(attn)
        return x + self.post_feedforward_layernorm(self.mlp(x)), cache


class Olmo2ForCausalLM(CausalLM):
    layer_cls = Olmo2DecoderLayer


def olmo2_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = [s for s in decoder_weight_map(cfg) if "input_layernorm" not in s.hf_names[0]]
    for i in range(cfg.num_layers):
        specs.append(WeightSpec(f"model.layers.{i}.post_feedforward_layernorm.weight",
                                ("model", "layers", i, "post_feedforward_layernorm", "weight")))
    return specs


ARCHITECTURES = (Architecture(
    name="Olmo2ForCausalLM", module=Olmo2ForCausalLM, weight_map=olmo2_weight_map, hf_model_type="olmo2", ignored_keys=NO_WINDOW,
    hf_defaults=dict(rms_norm_eps=1e-5), not_null=RMS_NOT_NULL + ("head_dim", "attention_bias"),
    config_defaults=lambda raw: dict(qk_norm="projection", norm_upcast_scale=True, mlp_bias=False),
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                     rms_norm_eps=1e-6, rope_theta=500000.0, tie_word_embeddings=False,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
