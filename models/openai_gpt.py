"""OpenAI GPT (openai-community/openai-gpt): GPT-2's module tree (Conv1D weights, q/k/v fused along c_attn's columns,
learned positions) with the post-LN layer, x = ln_1(x + attn(x)), then ln_2(x + mlp(x)) (`norm_after_residual`: OPT's
PostNormDecoderLayer), no final norm, an MLP 4 x n_embd wide whatever the config says, its activation `afn`'s
("gelu" the tanh form) and its head tied to the embeddings by default."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, renamed
from jaxllm.models.gpt2 import gpt2_weight_map, spelled
from jaxllm.models.opt import PostNormDecoderLayer
from jaxllm.models.weights import WeightSpec

# modeling_openai.ACT_FNS: the activations its MLP takes by afn (any other fails there)
ACTIVATIONS = {"relu": "relu", "silu": "silu", "gelu": "gelu_new", "swish": "silu"}


class OpenAIGPTLMHeadModel(CausalLM):
    layer_cls = PostNormDecoderLayer


def openai_names(raw: dict) -> dict:
    out = spelled(raw, (("n_embd", "hidden_size"), ("n_layer", "num_hidden_layers"), ("n_head", "num_attention_heads"),
                        ("n_positions", "max_position_embeddings"), ("layer_norm_epsilon", "layer_norm_eps")))
    if raw["afn"] not in ACTIVATIONS:
        raise ConfigError(f"config.json afn '{raw['afn']}' is not one of OpenAI GPT's activations ({', '.join(ACTIVATIONS)}; "
                          "transformers fails on any other): use one of them")
    e = out.get("hidden_size")
    return dict(out, hidden_act=ACTIVATIONS[raw["afn"]], intermediate_size=4 * e if isinstance(e, int) else None)


def openai_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """GPT-2's map without the final norm, its embeddings spelled tokens_embed / positions_embed, ln_1 and ln_2 the
    post-LN layer's norms after the attention's and the MLP's residual sums."""
    paths = {"input_layernorm": "self_attn_layer_norm", "post_attention_layernorm": "final_layer_norm"}
    specs = [WeightSpec(s.hf_name, tuple(paths.get(p, p) for p in s.path), s.transform) for s in gpt2_weight_map(cfg)
             if s.path[:2] != ("model", "norm")]
    return renamed(specs, {"wte": "tokens_embed", "wpe": "positions_embed"})


ARCHITECTURES = (Architecture(
    name="OpenAIGPTLMHeadModel", module=OpenAIGPTLMHeadModel, weight_map=openai_weight_map, hf_model_type="openai-gpt",
    # heads of n_embd / n_head, each with its own k/v; the activation is afn's, the MLP's width 4 x n_embd
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "hidden_act", "intermediate_size"),
    not_null=("max_position_embeddings", "tie_word_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "layer_norm_epsilon", "afn"),
    common_names=openai_names, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    config_defaults=lambda raw: dict(position_embedding="learned", qkv_bias=True, o_bias=True, gated_mlp=False, mlp_bias=True,
                                     norm_after_residual=True, final_norm=False),
    hf_defaults=dict(afn="gelu", layer_norm_epsilon=1e-5, tie_word_embeddings=True, n_positions=512),
    ignore=(r".*\.attn\.bias$",),  # the causal-mask buffer older checkpoints keep
    tiny_config=dict(vocab_size=128, n_embd=64, n_layer=3, n_head=4, n_positions=64, afn="gelu", layer_norm_epsilon=1e-5,
                     bos_token_id=1, eos_token_id=2),
),)
