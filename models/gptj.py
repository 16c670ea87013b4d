"""GPT-J: attention and an ungated, biased MLP in parallel off one LayerNorm (x + attn(ln x) +
mlp(ln x), Phi's form of the shared layer), no attention biases, rotary positions on interleaved
pairs (rope_interleaved) of the first rotary_dim dims of each head at a fixed base of 10,000, and an
output head with a bias (Phi's causal LM). Its config keys are GPT-2's (n_embd, n_layer, ...)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import RopeConfig, rotary_fraction
from jaxllm.models.gpt2 import gpt2_names
from jaxllm.models.phi import PhiForCausalLM, parallel_layout


def gptj_defaults(raw: dict) -> dict:
    hidden, heads, dims = raw["hidden_size"], raw["num_attention_heads"], raw["rotary_dim"]
    head = hidden // heads
    if dims > head:
        raise ConfigError(f"config.json rotary_dim={dims} is wider than GPT-J's heads of {head} (n_embd / n_head): transformers "
                          "cannot apply that rotary embedding; set rotary_dim to at most the head size")
    return dict(rope=RopeConfig(theta=10000.0, partial_rotary_factor=rotary_fraction(dims, head)), rope_interleaved=True,
                parallel_residual=True, gated_mlp=False, mlp_bias=True, qkv_bias=False, o_bias=False, head_bias=True)


GPTJ_NAMES = dict(embed="transformer.wte.weight", norm="transformer.ln_f", layers="transformer.h", ln="ln_1", attn="attn",
                  out="out_proj", mlp=("fc_in", "fc_out"))


# How GPT-J's config.json reads, CodeGen's too (CodeGenConfig is GPTJConfig's copy)
GPTJ_READING = dict(
    # heads of n_embd / n_head, each with its own k/v; rotary_dim and a fixed base its only rope settings
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "hidden_act", "rope_parameters", "rope_scaling", "rope_theta"),
    not_null=("max_position_embeddings", "tie_word_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "layer_norm_epsilon",
              "activation_function", "rotary_dim"),
    common_names=gpt2_names, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    hf_defaults=dict(activation_function="gelu_new", layer_norm_epsilon=1e-5, tie_word_embeddings=False, n_positions=2048, rotary_dim=64),
)

ARCHITECTURES = (Architecture(
    name="GPTJForCausalLM", module=PhiForCausalLM, weight_map=lambda cfg: parallel_layout(cfg, GPTJ_NAMES), hf_model_type="gptj",
    config_defaults=gptj_defaults, **GPTJ_READING,
    # GPT-J 6B keeps the causal-mask buffers of each attention block (transformers ignores them)
    ignore=(r".*\.attn\.bias$", r".*\.attn\.masked_bias$"),
    # a quarter of each head of 16 rotates (GPT-J 6B: 64 of 256)
    tiny_config=dict(vocab_size=128, n_embd=64, n_layer=3, n_head=4, n_inner=96, n_positions=64, rotary_dim=4,
                     activation_function="gelu_new", bos_token_id=1, eos_token_id=2, layer_norm_epsilon=1e-5),
),)
