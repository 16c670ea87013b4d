"""xLSTM (transformers' xLSTMForCausalLM, its native code: NX-AI/xLSTM-7b): the shared pre-norm layer with an mLSTM
mixer (models/mlstm.py, a state per sequence, no keys: no KV pages, no prefix cache) under norm_mlstm and a gated
SiLU MLP under norm_ffn, RMSNorms (a bias each where use_bias); embeddings, out_norm (weight only, whatever use_bias
says), a head of its own (xLSTMForCausalLM ties nothing, whatever tie_word_embeddings says), the logits soft-capped at
output_logit_soft_cap.

- config.json's keys: num_heads; qk_dim_factor, v_dim_factor (the mLSTM's query/key and value widths, int(factor x
  hidden_size) as its layer computes them, split over the heads); ffn_proj_factor, ffn_round_up_to_multiple_of (the
  MLP's width, rounded up); gate_soft_cap, eps (the normalizer's), norm_eps (every norm's); use_bias; weight_mode
  "single" or "fused" (q|k|v|o in qkv_opreact, i|f in ifgate_preact, gate|up in proj_up_gate_z, read as parts);
  embedding_dim and num_blocks, hidden_size's and num_hidden_layers' aliases;
- chunk_size, max_inference_chunksize and the kernel names choose how transformers computes the same values: not
  read; add_out_norm neither (its native model always applies out_norm);
- refused in one line: a mode other than "inference" (transformers' "train" modes run whole chunks only: no
  generation), inference_state_dtype other than float32 and norm_reduction_force_float32 false (jaxllm keeps the
  state and the norms' reductions in float32), embedding_dim other than hidden_size (transformers' embeddings and
  blocks would not fit), widths the heads do not divide, and the widths given as keys (qk_dim, v_dim, qk_head_dim,
  v_head_dim: properties of xLSTMConfig, which transformers refuses to set);
- no positions: max_position_embeddings bounds nothing (MAMBA_POSITIONS, as Mamba).
"""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderModel, dense
from jaxllm.models.layers import RMSNorm
from jaxllm.models.mamba import MAMBA_POSITIONS, refuse_layer_types
from jaxllm.models.transforms import Copy, Linear, Part
from jaxllm.models.weights import WeightSpec


class XlstmModel(DecoderModel):
    def __init__(self, cfg: ModelConfig, layer_cls, *, dtype, rngs, final_norm=None):
        super().__init__(cfg, layer_cls, dtype=dtype, rngs=rngs, final_norm=final_norm)
        self.norm = RMSNorm(cfg.hidden_size, cfg.norm_eps, dtype=dtype, rngs=rngs)  # out_norm: no bias whatever use_bias


class XlstmForCausalLM(CausalLM):
    model_cls = XlstmModel


def round_up(x: float, multiple: int) -> int:
    return int(((x + multiple - 1) // multiple) * multiple)  # transformers' round_up_to_next_multiple_of


def xlstm_names(raw: dict) -> dict:
    """The common keys: hidden_size (embedding_dim where null) and num_hidden_layers (num_blocks, which builds the blocks),
    num_heads as the heads, norm_eps, the MLP's width; no position limit."""
    out = dict(raw, num_attention_heads=raw.get("num_heads"), rms_norm_eps=raw.get("norm_eps"),
               max_position_embeddings=MAMBA_POSITIONS)
    if out.get("hidden_size") is None:
        out["hidden_size"] = raw.get("embedding_dim")
    if raw.get("num_blocks") is not None:
        out["num_hidden_layers"] = raw["num_blocks"]
    e, factor, multiple = out.get("hidden_size"), raw.get("ffn_proj_factor"), raw.get("ffn_round_up_to_multiple_of")
    out["intermediate_size"] = round_up(e * factor, multiple) if isinstance(e, int) and factor and multiple else None
    return out


def _refuse(raw: dict) -> None:
    refuse_layer_types(raw, "remove it (qk_dim_factor, v_dim_factor and num_heads set the mLSTM's widths)",
                       keys=("qk_dim", "v_dim", "qk_head_dim", "v_head_dim"))  # xLSTMConfig's properties
    for key, allowed, why in (("mode", ("inference",), "transformers' train modes run whole chunks only, so they cannot generate"),
                              ("inference_state_dtype", ("float32",), "jaxllm keeps the mLSTM state in float32"),
                              ("weight_mode", ("single", "fused"), "the layouts transformers names")):
        if raw[key] not in allowed:
            raise ConfigError(f"config.json {key} {raw[key]!r} is not supported ({why}): use {' or '.join(map(repr, allowed))}")
    if not raw["norm_reduction_force_float32"]:
        raise ConfigError("config.json norm_reduction_force_float32=false is not supported: jaxllm's norms reduce in float32; "
                          "set it to true (the same model, xLSTM-7B's setting)")
    if raw.get("embedding_dim") not in (None, raw["hidden_size"]):
        raise ConfigError(f"config.json embedding_dim={raw['embedding_dim']} differs from hidden_size={raw['hidden_size']}: "
                          "transformers' blocks could not read its embeddings; give one width")


def xlstm_defaults(raw: dict) -> dict:
    _refuse(raw)
    e, heads, layers = raw["hidden_size"], raw["num_heads"], raw["num_hidden_layers"]
    widths = {"qk_dim_factor": int(e * raw["qk_dim_factor"]), "v_dim_factor": int(e * raw["v_dim_factor"])}
    for key, width in widths.items():
        if width < heads or width % heads:
            raise ConfigError(f"config.json {key}={raw[key]} gives int({raw[key]} x hidden_size {e}) = {width} channels, not a "
                              f"multiple of num_heads={heads}: correct {key} or num_heads")
    bias = bool(raw["use_bias"])
    return dict(layer_types=("mlstm",) * layers, recurrent_kinds=("mlstm",), position_embedding="none", num_kv_heads=heads,
                head_dim=widths["qk_dim_factor"] // heads, v_head_dim=widths["v_dim_factor"] // heads,
                gate_softcap=float(raw["gate_soft_cap"]), mlstm_eps=float(raw["eps"]), final_softcap=float(raw["output_logit_soft_cap"]),
                norm_bias=bias, mlp_bias=bias, gated_mlp=True, hidden_act="silu", tie_word_embeddings=False,
                fused_projections=raw["weight_mode"] == "fused")


# our names of transformers' feed-forward projections
_FFN = {"proj_up_gate": "gate_proj", "proj_up": "up_proj", "proj_down": "down_proj"}


def _projections(cfg: ModelConfig, hf: str, fused: str, path: tuple, widths: dict, biased: bool) -> list[WeightSpec]:
    """Projections `widths` ({transformers' name: output width}) under `hf`, each its own tensor, or where
    cfg.fused_projections rows of the one tensor `fused` in that order (and its bias likewise)."""
    specs, offset, total = [], 0, sum(widths.values())
    for name, width in widths.items():
        ours = path + (_FFN.get(name, name),)
        if not cfg.fused_projections:
            specs += dense(hf + name, ours, Linear(), biased)
            continue
        specs.append(WeightSpec(f"{hf}{fused}.weight", ours + ("kernel",), Part(offset, total, Linear())))
        specs += [WeightSpec(f"{hf}{fused}.bias", ours + ("bias",), Part(offset, total, Copy(flatten=True)))] if biased else []
        offset += width
    return specs


def xlstm_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    h, bias = cfg.num_heads, cfg.mlp_bias
    qk, v, f = cfg.head_dim * h, cfg.v_head_dim * h, cfg.intermediate_size
    specs = [WeightSpec("backbone.embeddings.weight", ("model", "embed_tokens", "embedding")),
             WeightSpec("backbone.out_norm.weight", ("model", "norm", "weight")),
             WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear())]
    for i in range(cfg.num_layers):
        hf, ours = f"backbone.blocks.{i}.", ("model", "layers", i)
        mixer, mlp = ours + ("mlstm_layer",), ours + ("mlp",)
        for theirs, norm in (("norm_mlstm", "input_layernorm"), ("norm_ffn", "post_attention_layernorm")):
            specs += [WeightSpec(f"{hf}{theirs}.{p}", ours + (norm, p)) for p in ("weight", "bias")[: 1 + bias]]
        specs += _projections(cfg, hf + "mlstm_layer.", "qkv_opreact", mixer, dict(q=qk, k=qk, v=v, ogate_preact=v), bias)
        specs += _projections(cfg, hf + "mlstm_layer.", "ifgate_preact", mixer, dict(igate_preact=h, fgate_preact=h), True)
        specs += [WeightSpec(f"{hf}mlstm_layer.multihead_norm.{p}", mixer + ("multihead_norm", p), Copy(flatten=True))
                  for p in ("weight", "bias")[: 1 + bias]]
        specs += dense(hf + "mlstm_layer.out_proj", mixer + ("out_proj",), Linear(2), bias)
        specs += _projections(cfg, hf + "ffn.", "proj_up_gate_z", mlp, dict(proj_up_gate=f, proj_up=f), bias)
        specs += dense(hf + "ffn.proj_down", mlp + ("down_proj",), Linear(), bias)
    return specs


# xLSTMConfig's field defaults (xLSTM-7B's)
_DEFAULTS = dict(vocab_size=50304, hidden_size=4096, num_hidden_layers=32, num_heads=8, use_bias=False,
                 norm_reduction_force_float32=True, tie_word_embeddings=False, add_out_norm=True, norm_eps=1e-6, qk_dim_factor=0.5,
                 v_dim_factor=1.0, mode="inference", chunk_size=64, inference_state_dtype="float32", eps=1e-6, ffn_proj_factor=2.667,
                 ffn_round_up_to_multiple_of=64, gate_soft_cap=15.0, output_logit_soft_cap=30.0, weight_mode="single",
                 pad_token_id=1, bos_token_id=0, eos_token_id=2, max_inference_chunksize=16384)
# keys no xLSTM code reads (another family's)
_IGNORED = ("sliding_window", "use_sliding_window", "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
            "rope_scaling", "rope_parameters", "partial_rotary_factor", "hidden_act", "attention_bias", "mlp_bias", "layer_types",
            "intermediate_size", "max_position_embeddings")
_NOT_NULL = ("vocab_size", "num_heads", "use_bias", "norm_reduction_force_float32", "tie_word_embeddings", "add_out_norm", "norm_eps")

ARCHITECTURES = (Architecture(
    name="xLSTMForCausalLM", module=XlstmForCausalLM, weight_map=xlstm_weight_map, hf_model_type="xlstm",
    config_defaults=xlstm_defaults, common_names=xlstm_names, norm_eps_key="norm_eps", hf_defaults=_DEFAULTS,
    base_prefix="backbone", ignored_keys=_IGNORED, not_null=_NOT_NULL,
    # 4 heads of 16 (queries, keys) and 32 (values); chunks of 8, so transformers' 20-token forward runs two chunks and four
    # steps; biases everywhere; gate and logit caps that show; the MLP 1.4 x hidden_size (179.2) rounded up to 192
    tiny_config=dict(vocab_size=128, hidden_size=128, num_hidden_layers=3, num_heads=4, qk_dim_factor=0.5, v_dim_factor=1.0,
                     ffn_proj_factor=1.4, ffn_round_up_to_multiple_of=64, chunk_size=8, gate_soft_cap=4.0,
                     output_logit_soft_cap=5.0, use_bias=True, norm_eps=1e-5, eps=1e-6, weight_mode="single",
                     tie_word_embeddings=False, pad_token_id=1, bos_token_id=0, eos_token_id=2),
),)
