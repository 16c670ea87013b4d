"""CodeGen (Salesforce/codegen-*): GPT-J's model (parallel attention and biased MLP off one LayerNorm,
rotary on interleaved pairs of the first rotary_dim dims of each head at base 10,000, a biased output
head, GPT-2's key spellings) with q, k and v in one qkv_proj fused by mp_num = 4 blocks of rows, each
block q | v | k for a quarter of the hidden size (CodeGenAttention's view(..., -1, 3 * local_dim) and
split: `Blocks`), no biases on qkv_proj or out_proj."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import Architecture
from jaxllm.models.gptj import GPTJ_NAMES, GPTJ_READING, gptj_defaults
from jaxllm.models.phi import PhiForCausalLM, parallel_layout
from jaxllm.models.transforms import Blocks

MP_NUM = 4  # CodeGenAttention's mp_num: the blocks of its fused qkv_proj, hard-wired
# each block's pieces in their order: query, value, key
CODEGEN_NAMES = dict(GPTJ_NAMES, qkv=("qkv_proj", {name: Blocks(part, 3, MP_NUM) for part, name in enumerate(("q_proj", "v_proj", "k_proj"))}))


def codegen_defaults(raw: dict) -> dict:
    hidden = raw["hidden_size"]
    if hidden % MP_NUM:
        raise ConfigError(f"config.json n_embd={hidden} is not divisible by 4: CodeGen's attention splits its fused qkv_proj into 4 "
                          "blocks of n_embd / 4 (mp_num), which transformers cannot do for this width; correct n_embd")
    return gptj_defaults(raw)


ARCHITECTURES = (Architecture(
    name="CodeGenForCausalLM", module=PhiForCausalLM, weight_map=lambda cfg: parallel_layout(cfg, CODEGEN_NAMES), hf_model_type="codegen",
    config_defaults=codegen_defaults, **GPTJ_READING,
    # the causal-mask buffers of each attention block old checkpoints keep (transformers ignores them)
    ignore=(r".*\.attn\.causal_mask$", r".*\.attn\.masked_bias$"),
    # heads of 8, so each of qkv_proj's blocks (16 rows of q) spans two heads; a quarter of each head rotates
    tiny_config=dict(vocab_size=128, n_embd=64, n_layer=3, n_head=8, n_inner=96, n_positions=64, rotary_dim=2,
                     activation_function="gelu_new", bos_token_id=1, eos_token_id=2, layer_norm_epsilon=1e-5),
),)
