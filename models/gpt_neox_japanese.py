"""GPT-NeoX-Japanese (abeja/gpt-neox-japanese-2.7b): GPT-NeoX's module tree and fused per-head q/k/v under its own
names, with sequential residuals (x + attn(ln1 x), then + mlp(ln2 x)), no bias on q/k/v, on its MLP or on the attention
output projection but the last layer's (`dense_bias`, added after `dense`: `o_bias_layers`), an MLP
hidden_size x intermediate_multiple_size wide, its whole head rotated unless rotary_pct says otherwise, its head tied to
the embeddings unless the config says otherwise."""

from jaxllm.models.architecture import NO_WINDOW, NOT_NULL, Architecture
from jaxllm.models.decoder import renamed
from jaxllm.models.gpt_neox import GPTNeoXForCausalLM, neox_layout, neox_names

NAMES = dict(embed="gpt_neox_japanese.embed_in.weight", norm="gpt_neox_japanese.final_layer_norm", head="embed_out.weight",
             layers="gpt_neox_japanese.layers", attn="attention")


def japanese_names(raw: dict) -> dict:
    """The MLP's width (intermediate_size, which its config class has no field for, never read) and GPT-NeoX's rope spellings,
    the whole head rotated where rotary_pct is left out."""
    hidden, multiple = raw.get("hidden_size"), raw["intermediate_multiple_size"]
    width = int(hidden * multiple) if isinstance(hidden, int) else None  # no hidden_size: refused by name (require_fields)
    return neox_names(dict(raw, intermediate_size=width), rotary_pct=1.0)


def japanese_weight_map(cfg):
    return renamed(neox_layout(cfg, NAMES), {"dense.bias": "dense_bias"})


ARCHITECTURES = (Architecture(
    name="GPTNeoXJapaneseForCausalLM", module=GPTNeoXForCausalLM, weight_map=japanese_weight_map, hf_model_type="gpt_neox_japanese",
    # every head has its own k/v; its code reads no bias switch, no parallel residual, no MLP width of these names
    ignored_keys=NO_WINDOW + ("num_key_value_heads", "attention_bias", "mlp_bias", "use_parallel_residual", "intermediate_size"),
    not_null=NOT_NULL + ("layer_norm_eps", "hidden_act", "intermediate_multiple_size", "rotary_pct", "rotary_emb_base"),
    common_names=japanese_names, head_name="embed_out.weight", base_prefix="gpt_neox_japanese", partial_rotary=True,
    norm_eps_key="layer_norm_eps",
    # GPTNeoXJapaneseConfig's field defaults (tied, where GPT-NeoX is not)
    hf_defaults=dict(hidden_act="gelu", layer_norm_eps=1e-5, intermediate_multiple_size=4, max_position_embeddings=2048,
                     tie_word_embeddings=True),
    config_defaults=lambda raw: dict(qkv_bias=False, o_bias=True, o_bias_layers=(raw["num_hidden_layers"] - 1,), gated_mlp=False,
                                     mlp_bias=False),
    # half of each head rotated (rotary_pct), an MLP twice as wide, untied (its own embed_out)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_multiple_size=2, num_hidden_layers=3, num_attention_heads=4,
                     max_position_embeddings=256, layer_norm_eps=1e-5, rotary_pct=0.5, rotary_emb_base=10000, hidden_act="gelu",
                     tie_word_embeddings=False, bos_token_id=1, eos_token_id=2),
),)
