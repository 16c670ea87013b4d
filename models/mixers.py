"""The recurrent mixer of each recurrent layer type (models/recurrent.py), and what the decoder, the
engine and its memory sizing ask of a model's recurrent layers without knowing their kind."""

from __future__ import annotations

from jaxllm.models.cca import CcaProjection
from jaxllm.models.config import ModelConfig
from jaxllm.models.lightning_attention import LightningAttention
from jaxllm.models.linear_attention import GatedDeltaNet, KimiDeltaAttention
from jaxllm.models.mamba1 import Mamba, MultiHeadMamba
from jaxllm.models.mamba2 import Mamba2
from jaxllm.models.mlstm import MLstm
from jaxllm.models.recurrent import RecurrentMixer, StateShape, shape_bytes
from jaxllm.models.rg_lru import RgLru
from jaxllm.models.short_conv import ShortConv
from jaxllm.models.wkv import RwkvTimeMix

# layer type (ModelConfig.layer_types; config_fields.RECURRENT_TYPES) -> its mixer
MIXERS: dict[str, type[RecurrentMixer]] = {"linear_attention": GatedDeltaNet, "conv": ShortConv, "mamba": Mamba2,
                                            "mamba1": Mamba, "mamba1_heads": MultiHeadMamba, "lightning_attention": LightningAttention,
                                            "kimi_delta_attention": KimiDeltaAttention, "rg_lru": RgLru,
                                            "rwkv": RwkvTimeMix, "mlstm": MLstm,
                                            "cca": CcaProjection}  # an attention layer's own state (ModelConfig.attn_state)


def mixer_cls(cfg: ModelConfig, layer: int) -> type[RecurrentMixer] | None:
    """The recurrent mixer class of `layer`, or None for an attention layer."""
    kind = cfg.layer_mixer(layer)
    return None if kind is None else MIXERS[kind]


def state_shape(cfg: ModelConfig, layer: int) -> StateShape | None:
    """The recurrent state of `layer` per sequence (its mixer's, or its parallel mixer's beside attention: Falcon-H1),
    or None where it keeps none."""
    kind = cfg.layer_state_kind(layer)
    return None if kind is None else MIXERS[kind].state_shape(cfg, layer)


def state_shapes(cfg: ModelConfig) -> tuple:
    """Every layer's state_shape, or () for a model without recurrent layers (the engine's steps' key)."""
    return tuple(state_shape(cfg, i) for i in range(cfg.num_layers)) if cfg.recurrent else ()


def state_bytes(cfg: ModelConfig, dtype) -> int:
    """Bytes of one sequence's recurrent state, every layer (conv inputs in `dtype`)."""
    return sum(shape_bytes(shape, dtype) for shape in state_shapes(cfg) if shape is not None)


def index_shapes(cfg: ModelConfig) -> tuple:
    """Every layer's ModelConfig.index_shape, or () for a model without sparse attention (the engine's steps' key)."""
    return tuple(map(cfg.index_shape, range(cfg.num_layers))) if cfg.indexer is not None else ()


def layer_parts(kv, state, index=None):
    """A layer's cache: its pages of keys and values (a LayerCache), its RecurrentState, or both (Falcon-H1's attention
    and Mamba2 mixer in one layer: the pair (pages, state), as DecoderLayer.mix reads it); None for neither. A sparse
    attention layer's indexer key pages (`index`: ModelConfig.index_shape) come beside its keys and values: the pair
    (pages, index pages), as models/sparse_attention.py reads it."""
    if index is not None:
        return kv, index
    return state if kv is None else kv if state is None else (kv, state)
