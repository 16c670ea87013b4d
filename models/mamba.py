"""Mamba and FalconMamba (transformers' modeling_mamba.py, modeling_falcon_mamba.py: state-spaces/mamba-*-hf,
tiiuae/falcon-mamba-7b): attention-free decoders whose every layer is x + mixer(norm(x)), the mixer Mamba's
(models/mamba1.py, a recurrent mixer keeping a state per sequence, no keys: no KV pages, no prefix cache), no MLP;
embeddings, a final RMSNorm norm_f and the head tied to the embeddings by default.

- config.json spells its keys its own way: layer_norm_epsilon (every RMSNorm's), state_size, intermediate_size (the
  inner width; expand x hidden_size where left out, as MambaConfig reads it), conv_kernel,
  use_conv_bias, use_bias (in_proj's and out_proj's), time_step_rank ("auto": ceil(hidden_size / 16));
- no positions at all: max_position_embeddings bounds nothing in transformers (MAMBA_POSITIONS here);
- FalconMamba: weightless RMS norms of the time step, B and C (mixer_rms_eps), its checkpoints' norms otherwise Mamba's;
- transformers' hidden states are each layer's output, then the final norm's (not each layer's input):
  MambaModel.trace_outputs;
- residual_in_fp32 (true by default): the residual stream in float32 under a bfloat16 model, each layer's norm and the
  head reading it cast back, as MambaBlock and MambaForCausalLM do.
"""

import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import Architecture
from jaxllm.models.attention import UNCACHED
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderModel, norm_kwargs
from jaxllm.models.gpt2 import spelled
from jaxllm.models.layers import RMSNorm
from jaxllm.models.mamba1 import mamba1_fields, mamba1_specs
from jaxllm.models.mamba2 import mamba_specs
from jaxllm.models.mixers import mixer_cls
from jaxllm.models.transforms import Linear
from jaxllm.models.weights import WeightSpec

# positions a Mamba model serves: it has no position limit (no positions), this bounds the engine's requests
MAMBA_POSITIONS = 1 << 20


class MambaBlock(nnx.Module):
    """x + mixer(norm(x)): transformers' MambaBlock (its `norm` our input_layernorm), no MLP; the mixer the layer type's
    (Mamba's, or Mamba2's: models/mamba2_lm.py)."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.norm_eps, **norm_kwargs(cfg, dtype, rngs))
        self.mixer = mixer_cls(cfg, layer)(cfg, layer, dtype=dtype, rngs=rngs)
        self.dtype, self.residual_float32 = dtype, cfg.residual_float32

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        out, cache = self.mixer(self.input_layernorm(x.astype(self.dtype)), positions, cache, kv)
        return (x.astype(jnp.float32) if self.residual_float32 else x) + out, cache


class MambaModel(DecoderModel):
    trace_outputs = True  # transformers' hidden states: each layer's output, then the final norm's


class MambaForCausalLM(CausalLM):
    layer_cls = MambaBlock
    model_cls = MambaModel

    def __init__(self, cfg: ModelConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        super().__init__(cfg, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def head(self, hidden):
        """The head of the final norm's output cast to the model's dtype (float32 where residual_in_fp32)."""
        return super().head(hidden.astype(self.dtype))


def mamba_names(raw: dict) -> dict:
    """Mamba's spellings as the common keys: its epsilon, the inner width intermediate_size (expand x hidden_size where
    config.json leaves it out: MambaConfig's reading), one attention head (it has none: no layer reads it), no
    position limit."""
    out = spelled(raw, (("layer_norm_epsilon", "rms_norm_eps"),))
    e = out.get("hidden_size")
    out.update(num_attention_heads=1, max_position_embeddings=MAMBA_POSITIONS)
    if "intermediate_size" not in raw and isinstance(e, int):
        out["intermediate_size"] = int(raw["expand"] * e)
    return out


def refuse_layer_types(raw: dict, fix: str, keys=("layer_types",)) -> None:
    """A config.json giving layer_types (Jamba's layers_block_type too: `keys`), properties of the config classes of
    Mamba and Jamba, which transformers refuses to set: refused in one line, `fix` saying what sets the layers instead."""
    for key in keys:
        if key in raw:
            raise ConfigError(f"config.json gives '{key}', which {raw.get('model_type') or 'this'} config cannot set "
                              f"(transformers refuses it): {fix}")


def mamba_defaults(raw: dict, norms: str = "none") -> dict:
    refuse_layer_types(raw, "remove it (every layer is a Mamba layer)")
    fields = mamba1_fields(raw, raw["intermediate_size"], state="state_size", conv="conv_kernel", dt_rank="time_step_rank",
                           conv_bias="use_conv_bias", proj_bias="use_bias")
    return dict(fields, layer_types=("mamba1",) * raw["num_hidden_layers"], recurrent_kinds=("mamba1",), mamba_bcdt_norm=norms,
                mamba_norm_eps=float(raw.get("mixer_rms_eps") or 1e-6), position_embedding="none",
                residual_float32=bool(raw.get("residual_in_fp32", True)))


def mamba_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = [WeightSpec("backbone.embeddings.weight", ("model", "embed_tokens", "embedding")),
             WeightSpec("backbone.norm_f.weight", ("model", "norm", "weight"))]
    specs += [] if cfg.tie_word_embeddings else [WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear())]
    for i in range(cfg.num_layers):
        hf, ours = f"backbone.layers.{i}.", ("model", "layers", i)
        specs.append(WeightSpec(hf + "norm.weight", ours + ("input_layernorm", "weight")))
        specs += mamba1_specs(cfg, hf + "mixer.", ours + ("mixer",)) if cfg.layer_types[i] == "mamba1" else []
    return specs + mamba_specs(cfg, "backbone.layers.{i}.mixer", attr="mixer")  # Mamba2's layers


# MambaConfig's field defaults (state-spaces/mamba-2.8b's block, 768 wide)
_DEFAULTS = dict(vocab_size=50280, hidden_size=768, state_size=16, num_hidden_layers=32, layer_norm_epsilon=1e-5, pad_token_id=0,
                 bos_token_id=0, eos_token_id=0, expand=2, conv_kernel=4, use_bias=False, use_conv_bias=True, hidden_act="silu",
                 time_step_rank="auto", tie_word_embeddings=True)
# keys no Mamba code reads for inference (initialisation, training kernels' choice)
_IGNORED = ("sliding_window", "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta", "rope_scaling", "rope_parameters",
                        "max_position_embeddings", "attention_bias", "mlp_bias")
_NOT_NULL = ("tie_word_embeddings", "intermediate_size", "vocab_size", "hidden_size", "state_size", "layer_norm_epsilon", "expand", "conv_kernel", "use_bias",
                        "use_conv_bias", "hidden_act", "time_step_rank", "residual_in_fp32")
_TINY = dict(vocab_size=128, hidden_size=64, state_size=8, num_hidden_layers=3, layer_norm_epsilon=1e-5, expand=2, conv_kernel=4,
             time_step_rank=6, pad_token_id=0, bos_token_id=0, eos_token_id=0)

ARCHITECTURES = (Architecture(
    name="MambaForCausalLM", module=MambaForCausalLM, weight_map=mamba_weight_map, hf_model_type="mamba",
    config_defaults=mamba_defaults, common_names=mamba_names, norm_eps_key="layer_norm_epsilon", hf_defaults=_DEFAULTS,
    base_prefix="backbone", ignored_keys=_IGNORED, not_null=_NOT_NULL,
    # untied head; in_proj / out_proj biases and the conv's; a time step of rank 6
    tiny_config=dict(_TINY, use_bias=True, use_conv_bias=True, tie_word_embeddings=False),
), Architecture(
    name="FalconMambaForCausalLM", module=MambaForCausalLM, weight_map=mamba_weight_map, hf_model_type="falcon_mamba",
    config_defaults=lambda raw: mamba_defaults(raw, "weightless"), common_names=mamba_names, norm_eps_key="layer_norm_epsilon",
    hf_defaults=dict(_DEFAULTS, mixer_rms_eps=1e-6), base_prefix="backbone", ignored_keys=_IGNORED,
    not_null=_NOT_NULL + ("mixer_rms_eps",),
    # tied head; the time step, B and C RMS-normed (an epsilon of 1e-3 that shows); no projection biases, no conv bias
    tiny_config=dict(_TINY, use_bias=False, use_conv_bias=False, tie_word_embeddings=True, mixer_rms_eps=1e-3),
))
