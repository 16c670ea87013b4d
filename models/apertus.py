"""Apertus (Swiss AI): the shared decoder with an RMSNorm of each q/k head, an ungated MLP without
biases whose activation is xIELU (parameters of its own in each layer: layers.XIELU), and norms
its checkpoints name attention_layernorm / feedforward_layernorm (our input_layernorm /
post_attention_layernorm). Its rope without rope settings in config.json is Llama 3's scaling of a
12,000,000 base, whatever rope_theta says.

Apertus 1.5's text model (Apertus1p5TextForCausalLM) is Apertus over a vocabulary extended by visual and audio
tokens, its output head pruned to the first output_vocab_size of them where config.json says so (`head_vocab_size`:
the logits that wide; a tied head is the embedding, every token)."""

from jaxllm.errors import ConfigError
from jaxllm.models.architecture import NO_WINDOW, RMS_NOT_NULL, Architecture
from jaxllm.models.config import ModelConfig
from jaxllm.models.config_fields import COUNT, check_fields
from jaxllm.models.config_options import check_null_original
from jaxllm.models.decoder import CausalLM, decoder_weight_map, renamed
from jaxllm.models.weights import WeightSpec

APERTUS_THETA = 12_000_000.0  # ApertusConfig.default_theta
# ApertusConfig's rope where config.json gives neither rope_parameters nor rope_scaling
APERTUS_ROPE = {"rope_type": "llama3", "rope_theta": APERTUS_THETA, "factor": 8.0, "original_max_position_embeddings": 8192,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0}
NORM_NAMES = {"input_layernorm": "attention_layernorm", "post_attention_layernorm": "feedforward_layernorm"}


def apertus_rope(raw: dict) -> dict:
    """The rope as ApertusConfig builds it: without rope settings, APERTUS_ROPE (a top-level
    rope_theta unread); with them, rope_theta from them, else the top-level one, else 12,000,000.
    A null top-level original_max_position_embeddings takes the place of a scaled rope's own, which
    transformers then cannot compute: refused."""
    if not raw.get("rope_parameters") and not raw.get("rope_scaling"):
        raw = dict(raw, rope_parameters=dict(APERTUS_ROPE), rope_scaling=None, rope_theta=None)
    rope = raw.get("rope_scaling") or raw["rope_parameters"]
    check_null_original(raw, "ApertusForCausalLM")
    if raw.get("rope_theta") is None and not rope.get("rope_theta"):
        return dict(raw, rope_theta=APERTUS_THETA)
    return raw


def apertus_weight_map(cfg: ModelConfig) -> list[WeightSpec]:
    """decoder_weight_map with Apertus' norm names, and each layer's xIELU parameters."""
    specs = renamed(decoder_weight_map(cfg), NORM_NAMES)
    if cfg.hidden_act == "xielu":
        for i in range(cfg.num_layers):
            specs += [WeightSpec(f"model.layers.{i}.mlp.act_fn.{p}", ("model", "layers", i, "mlp", "act_fn", p))
                      for p in ("alpha_p", "alpha_n", "beta", "eps")]
    return specs


def apertus_defaults(raw: dict) -> dict:
    return dict(qk_norm="per_head", gated_mlp=False, mlp_bias=False)


def apertus1p5_defaults(raw: dict) -> dict:
    """Apertus' with the head output_vocab_size rows wide where given, untied and narrower than the vocabulary
    (Apertus1p5TextConfig reads output_vocab_size == vocab_size as unpruned; a tied head is the embedding)."""
    check_fields(raw, {"output_vocab_size": COUNT}, "config.json")
    rows, vocab = raw.get("output_vocab_size"), raw["vocab_size"]
    if rows is not None and rows > vocab:
        raise ConfigError(f"config.json output_vocab_size={rows} is more than vocab_size={vocab} (transformers refuses it): "
                          "give the pruned head's rows, at most vocab_size, or leave the key out")
    pruned = rows is not None and rows < vocab and not raw.get("tie_word_embeddings")
    return dict(apertus_defaults(raw), head_vocab_size=rows if pruned else None)


_APERTUS = dict(
    module=CausalLM, weight_map=apertus_weight_map, ignored_keys=NO_WINDOW, common_names=apertus_rope,
    # its attention reads head_dim with getattr: a null one reaches the scale as None
    not_null=RMS_NOT_NULL + ("attention_bias", "head_dim"),
)
# Llama 3 rope as the Hub's (a base and original length of a tiny model's), GQA, attention biases
_TINY = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-5, tie_word_embeddings=False,
             attention_bias=True, hidden_act="xielu",
             rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                              "high_freq_factor": 4.0, "original_max_position_embeddings": 16},
             bos_token_id=1, eos_token_id=2, pad_token_id=0)

ARCHITECTURES = (Architecture(
    name="ApertusForCausalLM", hf_model_type="apertus", config_defaults=apertus_defaults,
    hf_defaults=dict(hidden_act="xielu", rms_norm_eps=1e-5, max_position_embeddings=65536), tiny_config=_TINY, **_APERTUS,
), Architecture(
    name="Apertus1p5TextForCausalLM", hf_model_type="apertus1p5_text", config_defaults=apertus1p5_defaults,
    hf_defaults=dict(vocab_size=266752, hidden_act="xielu", rms_norm_eps=1e-5, max_position_embeddings=65536),
    # the head pruned to the 128 tokens the tests feed, of 160
    tiny_config=dict(_TINY, vocab_size=160, output_vocab_size=128), **_APERTUS,
),)
