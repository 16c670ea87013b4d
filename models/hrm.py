"""HRM-Text (HrmTextForCausalLM; transformers' modeling_hrm_text.py): two stacks of Llama layers, L_module and
H_module, run as a recurrence. With z_H the embeddings times embedding_scale and z_L a learned z_L_init, each of
H_cycles cycles runs the L stack L_cycles times on z_L + z_H (its output the new z_L), then the H stack once on
z_H + z_L (the new z_H); each stack's output goes through a weightless RMSNorm (final_norm), the last z_H is the
head's input (no other final norm).

Each pass of a stack is num_layers_per_stack of our layers (`HrmLayer`), every one holding the very modules of the
stack's layer it runs (nnx shared references, read at its first pass: as Zamba2's shared blocks), and caching keys
and values of its own, as transformers' cache keeps one slot per pass: num_hidden_layers, which HrmTextConfig derives,
counts every pass's layers. What the layers pass on is [3, B, T, E]: the running state and z_L, z_H.

The layers: Llama's with weightless RMSNorms, multi-head attention (no kv head grouping) whose output is gated per
head and dim by sigmoid(gate_proj(x)) (the shared output gate). Causal only: prefix_lm's bidirectional instruction
block needs token_type_ids, which text generation never gives (transformers is causal without them too).
"""

import functools

import jax.numpy as jnp
from flax import nnx

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import RMS_NOT_NULL, Architecture
from jaxllm.models.attention import UNCACHED
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import check_layer_count
from jaxllm.models.decoder import CausalLM, DecoderLayer, DecoderModel, dense
from jaxllm.models.layers import RMSNorm, param
from jaxllm.models.transforms import Linear, Part
from jaxllm.models.weights import WeightSpec

Weightless = functools.partial(RMSNorm, weight=False)
STACKS = ("L_module", "H_module")


class HrmDecoderLayer(DecoderLayer):
    norm_cls = Weightless


def stack_pass(cfg: ModelConfig, layer: int) -> tuple[str, int, bool, bool]:
    """Which stack layer `layer` (a pass's) runs, its layer there, and whether it starts or ends the pass."""
    per, cycle = cfg.hrm_stack_layers, layer // cfg.hrm_stack_layers
    j = layer % per
    return STACKS[cycle % (cfg.hrm_l_cycles + 1) == cfg.hrm_l_cycles], j, j == 0, j == per - 1


class HrmLayer(nnx.Module, pytree=False):
    """One layer of one pass of a stack over (state, z_L, z_H) [3, B, T, E]: a pass's first layer reads z_L + z_H, the
    others the state; its output is the new state and, after the stack's weightless norm, a pass's last layer's is
    the new z_L (L stack) or z_H (H stack). `shared`: the stacks' layers built so far, shared by their later passes."""

    shares_modules = True

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs, shared: dict):
        stack, j, self.start, self.end = stack_pass(cfg, layer)
        self.low = stack == "L_module"
        if (stack, j) not in shared:
            shared[stack, j] = HrmDecoderLayer(cfg, j, dtype=dtype, rngs=rngs)
        self.layer = shared[stack, j]
        self.final_norm = Weightless(cfg.hidden_size, cfg.norm_eps, dtype=dtype, rngs=rngs) if self.end else None

    @property
    def self_attn(self):
        return self.layer.self_attn

    def attention_input(self, x):
        """What the layer's attention reads of x (research.attention_weights)."""
        return self.layer.input_layernorm(self._input(x))

    def _input(self, x):
        return x[1] + x[2] if self.start else x[0]

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        out, cache = self.layer(self._input(x), positions, rot, cache, kv)
        z_l, z_h = x[1], x[2]
        if self.end:
            z_l, z_h = (self.final_norm(out), z_h) if self.low else (z_l, self.final_norm(out))
        return jnp.stack([out, z_l, z_h]), cache


class HrmModel(DecoderModel):
    def __init__(self, cfg: ModelConfig, layer_cls, *, dtype, rngs: nnx.Rngs, final_norm=None):
        super().__init__(cfg, layer_cls, dtype=dtype, rngs=rngs, final_norm=final_norm)
        self.z_L_init = param((cfg.hidden_size,), ("norm",), dtype)

    def streams_in(self, x):
        z_l = jnp.broadcast_to(self.z_L_init[...].astype(x.dtype), x.shape)
        return jnp.stack([z_l + x, z_l, x])  # the state: the first layer's input, as transformers records it

    def streams_out(self, x):
        return x[2]

    def traced(self, x):
        return x[0]


class HrmForCausalLM(CausalLM):
    layer_cls = HrmLayer
    model_cls = HrmModel


def hrm_defaults(raw: dict) -> dict:
    """HrmTextConfig's reading: num_hidden_layers the per-stack count unless num_layers_per_stack is given (then every
    pass's layers, which must be num_layers_per_stack x H_cycles x (L_cycles + 1)); embedding_scale null:
    1 / initializer_range; a kv head per head."""
    for key in ("attention_bias", "mlp_bias"):
        if raw.get(key):
            raise ConfigError(f"config.json {key} is true, which jaxllm's HRM-Text does not read (its checkpoints fuse the "
                              "projections without biases): set it false")
    h, low, per = raw["H_cycles"], raw["L_cycles"], raw.get("num_layers_per_stack")
    stack = "num_layers_per_stack" if per is not None else "num_hidden_layers"
    layers = check_layer_count((per or raw["num_hidden_layers"]) * h * (low + 1),
                               f"{stack} {per or raw['num_hidden_layers']} x H_cycles {h} x (L_cycles {low} + 1)")
    if per is not None and raw["num_hidden_layers"] != layers:
        raise ConfigError(f"config.json num_hidden_layers={raw['num_hidden_layers']} is not num_layers_per_stack x H_cycles x "
                          f"(L_cycles + 1) = {layers}, the layer passes transformers' cache holds (it fails on it): remove "
                          "num_layers_per_stack, giving num_hidden_layers per stack, or correct it")
    scale = raw.get("embedding_scale")
    return dict(num_layers=layers, hrm_stack_layers=per or raw["num_hidden_layers"], hrm_l_cycles=low,
                num_kv_heads=raw["num_attention_heads"], final_norm=False, attn_output_gate=True, qkv_bias=False, o_bias=False,
                mlp_bias=False,
                embed_scale=1.0 / raw["initializer_range"] if scale is None else float(scale), embed_scale_exact=True)


def hrm_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """The embeddings, z_L_init, the head; each stack's layers read at their first pass (our layer i's `layer`), as the
    Hub's files (and transformers' save) fuse them: attn.gqkv_proj the gate | q | k | v rows, mlp.gate_up_proj gate | up,
    attn.o_proj. No biases: its projections have none whatever attention_bias and mlp_bias say (refused otherwise)."""
    specs = [WeightSpec("model.embed_tokens.weight", ("model", "embed_tokens", "embedding")),
             WeightSpec("model.z_L_init", ("model", "z_L_init"))]
    specs += [] if cfg.tie_word_embeddings else [WeightSpec("lm_head.weight", ("lm_head", "kernel"), Linear())]
    for i in range(cfg.num_layers):
        stack, j, *_ = stack_pass(cfg, i)
        if i >= cfg.hrm_stack_layers * (cfg.hrm_l_cycles + 1):  # the first H-cycle's passes hold every layer
            break
        if stack == "L_module" and i >= cfg.hrm_stack_layers:
            continue
        hf, ours = f"model.{stack}.layers.{j}.", ("model", "layers", i, "layer")
        width, f = cfg.num_heads * cfg.head_dim, cfg.intermediate_size
        specs += [WeightSpec(f"{hf}attn.gqkv_proj.weight", ours + ("self_attn", name, "kernel"), Part(k * width, 4 * width, Linear()))
                  for k, name in enumerate(("gate_proj", "q_proj", "k_proj", "v_proj"))]
        specs += dense(f"{hf}attn.o_proj", ours + ("self_attn", "o_proj"), Linear(2), bias=False)
        specs += [WeightSpec(f"{hf}mlp.gate_up_proj.weight", ours + ("mlp", name, "kernel"), Part(k * f, 2 * f, Linear()))
                  for k, name in enumerate(("gate_proj", "up_proj"))]
        specs += dense(f"{hf}mlp.down_proj", ours + ("mlp", "down_proj"), bias=False)
    return specs


ARCHITECTURES = (Architecture(
    name="HrmTextForCausalLM", module=HrmForCausalLM, weight_map=hrm_weight_map, hf_model_type="hrm_text",
    config_defaults=hrm_defaults,
    # no window; one kv head per head whatever the file says; keys of training alone
    ignored_keys=("sliding_window", "use_sliding_window", "layer_types", "num_key_value_heads", "L_bp_cycles", "prefix_lm",
                  "pretraining_tp"),
    # HrmTextConfig's field defaults (HRM-Text-1B's shapes)
    hf_defaults=dict(vocab_size=151808, hidden_size=1536, intermediate_size=4096, num_hidden_layers=16, num_attention_heads=12,
                     head_dim=128, H_cycles=2, L_cycles=3, initializer_range=0.02, rms_norm_eps=1e-6, max_position_embeddings=2048,
                     rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False),
    not_null=RMS_NOT_NULL + ("H_cycles", "L_cycles", "initializer_range", "head_dim", "attention_bias", "mlp_bias", "prefix_lm"),
    # two layers a stack, two H-cycles of two L passes: 12 passes' layers; a learned z_L_init (seeded), no embedding scale
    # beyond its default 1 / initializer_range (set smaller here, so that the logits stay in range)
    tiny_config=dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, head_dim=16,
                     H_cycles=2, L_cycles=2, max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=10000.0,
                     embedding_scale=2.0, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0),
),)
