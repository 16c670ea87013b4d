"""RWKV-4 (transformers' RwkvForCausalLM: RWKV/rwkv-4-169m-pile ... rwkv-raven-14b): an attention-free decoder whose
every block is x + time_mix(ln1(x)), then x + channel_mix(ln2(x)), both recurrent mixers of models/wkv.py (a state per
sequence, no keys: no KV pages, no prefix cache); embeddings, a LayerNorm of them in the first block (pre_ln: our
`embed_norm`), a final LayerNorm ln_out (nn.LayerNorm's own epsilon 1e-5, whatever layer_norm_epsilon says), an untied
`head` by default.

- config.json's keys: layer_norm_epsilon, attention_hidden_size (the time mix's width; hidden_size where null or left
  out), intermediate_size (the channel mix's; 4 x hidden_size likewise), context_length (max_position_embeddings an
  alias of it that wins, as RwkvConfig's attribute_map sets it: the context jaxllm serves), rescale_every;
- no positions: the recurrence gives the order;
- rescale_every > 0 (6 by default): transformers' eval mode divides block i's attention.output and feed_forward.value
  weights by 2^(i // rescale_every) in place and halves the hidden state after every rescale_every-th block (keeping
  16-bit activations in range); the weight map reads those weights divided the same way (transforms.Scaled, exact: a
  power of two; a checkpoint holds them undivided, as transformers saves them) and RwkvBlock halves;
- transformers' hidden states are each block's output (after its halving), then ln_out's: RwkvModel.trace_outputs.
"""

from flax import nnx

from jaxllm.models.architecture import Architecture
from jaxllm.models.attention import UNCACHED
from jaxllm.models.config import ModelConfig
from jaxllm.models.decoder import CausalLM, DecoderModel, model_ends, norm_kwargs
from jaxllm.models.gpt2 import spelled
from jaxllm.models.layers import LayerNorm
from jaxllm.models.transforms import Copy, Linear, Scaled
from jaxllm.models.weights import WeightSpec
from jaxllm.models.wkv import RwkvChannelMix, RwkvTimeMix

LN_OUT_EPS = 1e-5  # RwkvModel's ln_out: nn.LayerNorm(hidden_size), its default epsilon


class RwkvBlock(nnx.Module):
    """transformers' RwkvBlock under its names (ln1, attention, ln2, feed_forward); pre_ln is the model's embed_norm."""

    def __init__(self, cfg: ModelConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        norm = norm_kwargs(cfg, dtype, rngs, LayerNorm)
        self.ln1, self.ln2 = (LayerNorm(cfg.hidden_size, cfg.norm_eps, **norm) for _ in range(2))
        self.attention = RwkvTimeMix(cfg, layer, dtype=dtype, rngs=rngs)
        self.feed_forward = RwkvChannelMix(cfg, layer, dtype=dtype, rngs=rngs)
        self.halve = cfg.rescale_every > 0 and (layer + 1) % cfg.rescale_every == 0

    def __call__(self, x, positions, rot, cache, kv=UNCACHED):
        out, cache = self.attention(self.ln1(x), positions, cache, kv)
        x = x + out
        out, cache = self.feed_forward(self.ln2(x), positions, cache, kv)
        x = x + out
        return (x / 2 if self.halve else x), cache


class RwkvModel(DecoderModel):
    trace_outputs = True  # transformers' hidden states: each block's output, then ln_out's

    def __init__(self, cfg: ModelConfig, layer_cls, *, dtype, rngs: nnx.Rngs, final_norm=None):
        super().__init__(cfg, layer_cls, dtype=dtype, rngs=rngs, final_norm=final_norm)
        self.norm = LayerNorm(cfg.hidden_size, LN_OUT_EPS, dtype=dtype, rngs=rngs)


class RwkvForCausalLM(CausalLM):
    layer_cls = RwkvBlock
    model_cls = RwkvModel
    final_norm = LayerNorm  # and pre_ln's class (cfg.embed_norm)


def rwkv_names(raw: dict) -> dict:
    """The common keys: layer_norm_epsilon as layer_norm_eps, max_position_embeddings (the alias, which wins) or
    context_length, the channel mix's width (4 x hidden_size where null), one attention head (no layer reads it)."""
    out = spelled(raw, (("layer_norm_epsilon", "layer_norm_eps"), ("context_length", "max_position_embeddings")))
    e = out.get("hidden_size")
    if out.get("intermediate_size") is None and isinstance(e, int):
        out["intermediate_size"] = 4 * e
    return dict(out, num_attention_heads=1)


def rwkv_defaults(raw: dict) -> dict:
    layers = raw["num_hidden_layers"]
    return dict(layer_types=("rwkv",) * layers, recurrent_kinds=("rwkv",), position_embedding="none", embed_norm=True,
                hidden_act="relu2", rwkv_attention_size=raw.get("attention_hidden_size") or raw["hidden_size"],
                rescale_every=max(raw["rescale_every"], 0))


def rwkv_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    specs = model_ends(cfg, "rwkv.embeddings.weight", "rwkv.ln_out", "head.weight")
    specs += [WeightSpec(f"rwkv.blocks.0.pre_ln.{p}", ("model", "embed_norm", p)) for p in ("weight", "bias")]
    for i in range(cfg.num_layers):
        hf, ours = f"rwkv.blocks.{i}.", ("model", "layers", i)
        specs += [WeightSpec(f"{hf}{n}.{p}", ours + (n, p)) for n in ("ln1", "ln2") for p in ("weight", "bias")]
        rescaled = Scaled(Linear(), 2.0 ** -(i // cfg.rescale_every) if cfg.rescale_every else 1.0)
        specs += [WeightSpec(hf + f"attention.{n}", ours + ("attention", n)) for n in ("time_decay", "time_first")]
        for mixer, mixes, projections, out in (("attention", ("key", "value", "receptance"), ("key", "value", "receptance"), "output"),
                                               ("feed_forward", ("key", "receptance"), ("key", "receptance"), "value")):
            specs += [WeightSpec(f"{hf}{mixer}.time_mix_{n}", ours + (mixer, "time_mix", n), Copy(lead=2)) for n in mixes]
            specs += [WeightSpec(f"{hf}{mixer}.{n}.weight", ours + (mixer, n, "kernel"), Linear()) for n in projections]
            specs.append(WeightSpec(f"{hf}{mixer}.{out}.weight", ours + (mixer, out, "kernel"), rescaled))
    return specs


# RwkvConfig's field defaults (its 4096-wide, 32-layer model)
_DEFAULTS = dict(vocab_size=50277, context_length=1024, hidden_size=4096, num_hidden_layers=32, layer_norm_epsilon=1e-5,
                 bos_token_id=0, eos_token_id=0, rescale_every=6, tie_word_embeddings=False)
# keys no RWKV code reads (another family's)
_IGNORED = ("sliding_window", "use_sliding_window", "num_attention_heads", "num_key_value_heads", "head_dim", "rope_theta",
            "rope_scaling", "rope_parameters", "partial_rotary_factor", "hidden_act", "attention_bias", "mlp_bias", "layer_types")
_NOT_NULL = ("vocab_size", "hidden_size", "num_hidden_layers", "context_length", "max_position_embeddings", "layer_norm_epsilon",
             "rescale_every", "tie_word_embeddings")

ARCHITECTURES = (Architecture(
    name="RwkvForCausalLM", module=RwkvForCausalLM, weight_map=rwkv_weight_map, hf_model_type="rwkv",
    config_defaults=rwkv_defaults, common_names=rwkv_names, norm_eps_key="layer_norm_epsilon", hf_defaults=_DEFAULTS,
    head_name="head.weight", base_prefix="rwkv", ignored_keys=_IGNORED, not_null=_NOT_NULL,
    # 3 blocks, halved after every second block (the third's output
    # weights divided by 2); an epsilon that shows (ln_out keeps 1e-5); untied head
    tiny_config=dict(vocab_size=128, hidden_size=64, attention_hidden_size=64, intermediate_size=160, num_hidden_layers=3,
                     context_length=64, layer_norm_epsilon=1e-3, rescale_every=2, tie_word_embeddings=False,
                     bos_token_id=0, eos_token_id=0),
),)
