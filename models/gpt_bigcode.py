"""GPTBigCode (StarCoder 1, SantaCoder): GPT-2's model (learned positions, LayerNorms, biased
attention and GELU MLP, tied embeddings, its config spellings) with nn.Linear weights ([out, in],
not Conv1D's [in, out]) and multi-query attention: one key/value head where multi_query says (on by
default), read out of c_attn's fused q | k | v rows; without it, c_attn holds [heads, 3, head_dim]."""

from jaxllm.models.architecture import NO_WINDOW, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import dense
from jaxllm.models.gpt2 import GPT2LMHeadModel, gpt2_defaults, gpt2_layout, gpt2_names
from jaxllm.models.transforms import FusedQKV, Linear
from jaxllm.models.weights import WeightSpec


def bigcode_defaults(raw: dict) -> dict:
    """GPT-2's flags, one kv head with multi_query (GPTBigCodeConfig sets num_key_value_heads from it)."""
    return dict(gpt2_defaults(raw), num_kv_heads=1 if raw["multi_query"] else raw["num_attention_heads"])


def bigcode_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    group = cfg.num_heads // cfg.num_kv_heads

    def attention(hf, ours):
        specs = [WeightSpec(f"{hf}attn.c_attn.{p}", ours + ("self_attn", name, kind), FusedQKV(part, group))
                 for part, name in enumerate(("q_proj", "k_proj", "v_proj")) for p, kind in (("weight", "kernel"), ("bias", "bias"))]
        return specs + dense(f"{hf}attn.c_proj", ours + ("self_attn", "o_proj"), Linear(2))

    return gpt2_layout(cfg, Linear(), attention)


ARCHITECTURES = (Architecture(
    name="GPTBigCodeForCausalLM", module=GPT2LMHeadModel, weight_map=bigcode_weight_map, hf_model_type="gpt_bigcode",
    # heads of n_embd / n_head, its kv heads multi_query's; GPT-2's layer-index scaling its code never applies
    ignored_keys=NO_WINDOW + ("head_dim", "num_key_value_heads", "hidden_act", "scale_attn_by_inverse_layer_idx"),
    not_null=("max_position_embeddings", "tie_word_embeddings", "n_embd", "n_layer", "n_head", "n_positions", "layer_norm_epsilon",
              "activation_function", "multi_query"),
    common_names=gpt2_names, config_defaults=bigcode_defaults, base_prefix="transformer", norm_eps_key="layer_norm_epsilon",
    hf_defaults=dict(activation_function="gelu_pytorch_tanh", layer_norm_epsilon=1e-5, tie_word_embeddings=True, n_positions=1024,
                     multi_query=True),
    # StarCoder's form: multi-query, n_inner unlike 4 x n_embd; SPELLINGS has the multi-head layout
    tiny_config=dict(vocab_size=128, n_embd=64, n_layer=3, n_head=4, n_inner=96, n_positions=64, activation_function="gelu_pytorch_tanh",
                     multi_query=True, bos_token_id=1, eos_token_id=2, layer_norm_epsilon=1e-5),
),)
