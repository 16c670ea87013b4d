"""Config variants real checkpoints use, read as transformers reads them (the logits of most are
compared against transformers in test_parity.py); here the ones transformers cannot run, refused in one line."""

import pytest

from jaxllm.errors import ConfigError
from jaxllm.models import registry


@pytest.mark.parametrize("arch, changes", [
    ("MistralForCausalLM", dict(sliding_window=0)),
    ("Gemma2ForCausalLM", dict(sliding_window=0)),
    ("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=1, sliding_window=0)),
])
def test_a_window_of_zero_on_sliding_layers_is_refused(arch, changes):
    """A window of 0 lets a token see no key (transformers fails in forward); off (Qwen2-MoE saves 0
    beside use_sliding_window false) or on no layer it is no window at all."""
    spec = registry.get(arch)
    with pytest.raises(ConfigError, match=r"sliding_window is 0.*window's width") as info:
        spec.config(dict(spec.tiny_config, **changes))
    assert "\n" not in str(info.value)


def test_a_window_of_zero_turned_off_reads_as_no_window():
    """Off by its switch, on no layer (Qwen2's from max_window_layers on), or a family without windows (Llama)."""
    for arch, changes in (("Qwen2MoeForCausalLM", dict(use_sliding_window=False)), ("Qwen3ForCausalLM", dict(use_sliding_window=False)),
                          ("Qwen2ForCausalLM", dict(use_sliding_window=True, max_window_layers=3)), ("LlamaForCausalLM", {})):
        spec = registry.get(arch)
        cfg = spec.config(dict(spec.tiny_config, sliding_window=0, **changes))
        assert all(cfg.layer_window(i) is None for i in range(cfg.num_layers)), arch
