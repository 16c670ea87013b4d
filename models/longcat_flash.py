"""LongCat-Flash (LongcatFlashForCausalLM; transformers' modeling_longcat_flash.py): each of its num_layers layers is
two of ours (ModelConfig.num_layers = 2 x num_layers, as its config's num_hidden_layers), each the shared pre-norm
layer around DeepSeek-V3's latent attention and a dense MLP; the first of the pair also runs the shortcut MoE on
its MLP's input, handed to the second (`carries`), which adds it to its output:

    h = x + attn0(ln0(x));  s = moe(pln0(h));  h = h + mlp0(pln0(h))
    h = h + attn1(ln1(h));  out = h + mlp1(pln1(h)) + s

- latent attention with q_lora_rank always, the queries and the normed kv latent times the LoRA scales
  sqrt(hidden / q_lora_rank) and sqrt(hidden / kv_lora_rank) (MlaConfig.q_scale, kv_scale); interleaved rope of
  head_dim (which must be qk_rope_head_dim) dims, base 1e7 by default;
- MoE: a softmax router (float32 classifier, a bias where router_bias) over n_routed_experts + zero_expert_num,
  the top moe_topk chosen by score plus e_score_correction_bias, weighed by the scores times routed_scaling_factor;
  a zero-computation expert (ModelConfig.zero_experts) gives its token back, weighted;
- hidden states: transformers records one per layer of its own, every other one of ours (DecoderModel.hidden_every);
  the attention weights per latent attention, ours per layer;
- checkpoints: model.layers.{i}.self_attn.{0,1}.*, input_layernorm.{0,1}, post_attention_layernorm.{0,1},
  mlps.{0,1}.*, mlp.router.classifier, mlp.experts.{j}.* (the zero experts' unused gate and up rows left unread).
"""

import dataclasses
import math

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import check_layer_count
from jaxllm.models.decoder import CausalLM, DecoderModel
from jaxllm.models.deepseek import latent_attention, rope_head_dim
from jaxllm.models.experts import MoE
from jaxllm.models.mla import LatentDecoderLayer, mla_weight_map
from jaxllm.models.transforms import Copy, Linear, Stack, Transpose
from jaxllm.models.weights import WeightSpec

# LongcatFlashConfig's attribute_map: the key config.json holds and its alias (which wins) -> the name the shared reading takes
_ALIASES = {"ffn_hidden_size": ("intermediate_size", "intermediate_size"),
            "expert_ffn_hidden_size": ("moe_intermediate_size", "moe_intermediate_size"),
            "moe_topk": ("num_experts_per_tok", "num_experts_per_tok"), "n_routed_experts": ("num_local_experts", "num_experts")}


class LongcatSublayer(LatentDecoderLayer):
    """One of a LongCat layer's two halves (module docstring): the first (an even layer of ours) also runs the shortcut
    MoE (`moe`) and hands its output on; the second adds the output it is handed."""

    carries = True

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs):
        super().__init__(cfg, layer, dtype=dtype, rngs=rngs)
        self.moe = MoE(cfg, dtype=dtype, rngs=rngs) if layer % 2 == 0 else None

    def __call__(self, x, positions, rot, cache, kv=UNCACHED, shortcut=None):
        attn, cache = self.mix(self.input_layernorm(x), positions, rot, cache, kv)
        x = x + attn
        h = self.post_attention_layernorm(x)
        if self.moe is not None:
            return x + self.mlp(h), cache, self.moe(h)
        return x + self.mlp(h) + shortcut, cache, None


class LongcatModel(DecoderModel):
    hidden_every = 2


class LongcatFlashForCausalLM(CausalLM):
    layer_cls = LongcatSublayer
    model_cls = LongcatModel


def longcat_names(raw: dict) -> dict:
    """config.json under the shared names: each attribute_map alias (else its key) as the shared reading's name;
    num_layers (num_hidden_layers // 2 where given: the config's property sets it so) as num_layers and, twice it,
    num_hidden_layers (our layers); head_dim the latent attention's width (after checking it is qk_rope_head_dim,
    the width its rotary embedding turns)."""
    raw = dict(raw)
    for key, (alias, name) in _ALIASES.items():
        if key in raw or alias in raw:
            raw[name] = raw[alias] if alias in raw else raw[key]
    if "num_hidden_layers" in raw:
        raw["num_layers"] = raw["num_hidden_layers"] // 2
    raw["num_hidden_layers"] = check_layer_count(2 * raw["num_layers"], f"num_layers {raw['num_layers']} (each two layers of "
                                                 "jaxllm's: attention and MLP twice)")
    return rope_head_dim(raw)


def longcat_defaults(raw: dict) -> dict:
    hidden, experts = raw["hidden_size"], raw["num_experts"]
    if raw.get("q_lora_rank") is None:
        raise ConfigError("config.json q_lora_rank is null, but LongCat-Flash's attention always projects its queries through "
                          "that rank (transformers fails without it): give q_lora_rank")
    width = raw["qk_nope_head_dim"] + raw["qk_rope_head_dim"]
    if raw.get("qk_head_dim") not in (None, width):
        raise ConfigError(f"config.json qk_head_dim={raw['qk_head_dim']} is not qk_nope_head_dim + qk_rope_head_dim ({width}), "
                          "the query heads' width transformers splits them by (a shape error): remove it or set it to that sum")
    if not experts:
        raise ConfigError("config.json n_routed_experts 0 is not supported (LongCat's shortcut MoE routes to experts beside its "
                          "zero-computation ones): give the checkpoint's n_routed_experts")
    attention = latent_attention(raw)
    mla = dataclasses.replace(attention["mla"], q_scale=math.sqrt(hidden / raw["q_lora_rank"]),
                              kv_scale=math.sqrt(hidden / raw["kv_lora_rank"]))
    return dict(attention, mla=mla, rope_interleaved=True, mlp_bias=False, num_experts=experts,
                experts_per_token=raw["num_experts_per_tok"], moe_intermediate_size=raw["moe_intermediate_size"],
                zero_experts=raw.get("zero_expert_num") or 0, norm_topk_prob=False, router_score_bias=True,
                router_float32=True, router_bias=bool(raw.get("router_bias")), routed_scaling=float(raw["routed_scaling_factor"]),
                dense_layers=tuple(range(2 * raw["num_layers"])))  # every layer's own MLP dense: the MoE is the shortcut's


_PAIRED = ("self_attn", "input_layernorm", "post_attention_layernorm")


def _theirs(name: str) -> str:
    """Our layer 2i + s's checkpoint name as LongCat's layer i names its half s."""
    head, sep, rest = name.partition("model.layers.")
    if not sep:
        return name
    i, module, tail = rest.split(".", 2)
    module = module if module in _PAIRED else "mlps"
    return f"{head}model.layers.{int(i) // 2}.{module}.{int(i) % 2}.{tail}"


def longcat_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """DeepSeek's latent attention and dense MLPs under LongCat's names (`_theirs`), and each pair's shortcut MoE."""
    specs = [WeightSpec(_theirs(s.hf_names[0]), s.path, s.transform) for s in mla_weight_map(cfg)]
    for i in range(cfg.num_layers // 2):
        hf, ours = f"model.layers.{i}.mlp.", ("model", "layers", 2 * i, "moe")
        specs += [WeightSpec(hf + "router.classifier.weight", ours + ("gate", "kernel"), Linear()),
                  WeightSpec(hf + "router.e_score_correction_bias", ours + ("e_score_correction_bias",), Copy())]
        if cfg.router_bias:
            specs.append(WeightSpec(hf + "router.classifier.bias", ours + ("gate", "bias"), Copy()))
        for name in ("gate_proj", "up_proj", "down_proj"):
            experts = tuple(f"{hf}experts.{j}.{name}.weight" for j in range(cfg.num_experts))
            specs.append(WeightSpec(experts, ours + (name,), Stack(Transpose(1))))
    return specs


def zero_expert_rows(cfg: ModelConfig) -> tuple:
    """The zero-computation experts' gate and up rows, which transformers' gate_up_proj holds and never reads."""
    ids = "|".join(str(j) for j in range(cfg.num_experts, cfg.num_experts + cfg.zero_experts))
    return (rf".*\.mlp\.experts\.({ids})\.(gate|up)_proj\.weight$",) if ids else ()


ARCHITECTURES = (Architecture(
    name="LongcatFlashForCausalLM", module=LongcatFlashForCausalLM, weight_map=longcat_weight_map, hf_model_type="longcat_flash",
    config_defaults=longcat_defaults, common_names=longcat_names, ignore_for=zero_expert_rows,
    ignored_keys=NO_WINDOW + ("mlp_bias", "rope_interleave", "topk_method", "n_group", "topk_group",
                              "first_k_dense_replace", "n_shared_experts", "norm_topk_prob"),
    ignore=(r".*rotary_emb\.inv_freq$", r"^model\.mtp\."),
    # LongcatFlashConfig's field defaults (LongCat-Flash-Chat's shapes), under the keys it saves
    hf_defaults=dict(vocab_size=131072, hidden_size=6144, num_layers=28, num_attention_heads=64, hidden_act="silu",
                     max_position_embeddings=131072, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
                     rope_theta=10000000.0, attention_bias=False, ffn_hidden_size=12288, q_lora_rank=1536, kv_lora_rank=512,
                     qk_nope_head_dim=128, qk_rope_head_dim=64, head_dim=64, v_head_dim=128, moe_topk=12, n_routed_experts=512,
                     zero_expert_num=256, expert_ffn_hidden_size=2048, routed_scaling_factor=6.0),
    not_null=RMS_NOT_NULL + ("num_layers", "num_hidden_layers", "attention_bias", "ffn_hidden_size", "kv_lora_rank", "qk_nope_head_dim",
                             "qk_rope_head_dim", "v_head_dim", "moe_topk", "n_routed_experts", "expert_ffn_hidden_size",
                             "routed_scaling_factor", "head_dim", "zero_expert_num", "q_lora_rank", *(a for a, _ in _ALIASES.values())),
    # two layers (four of ours); 4 experts and 2 zero-computation ones, top 2; queries through q_lora_rank; value heads
    # narrower than key heads
    tiny_config=dict(vocab_size=128, hidden_size=64, ffn_hidden_size=96, expert_ffn_hidden_size=32, num_layers=2,
                     num_attention_heads=4, num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=24, qk_nope_head_dim=16,
                     qk_rope_head_dim=8, head_dim=8, v_head_dim=12, n_routed_experts=4, zero_expert_num=2, moe_topk=2,
                     routed_scaling_factor=2.0, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, bos_token_id=1, eos_token_id=2,
                     pad_token_id=0),
),)
