"""Reference parity of config.json as Hub checkpoints spell it (older keys, keys left to the family's
transformers defaults, other families' keys) and of their safetensors files' forms: transformers reloads
each edited folder as the reference."""

import json
import shutil

import pytest
import reference
from reference import ROPE_KINDS, TOKENS, TOL

import jaxllm


def _edit(drop=(), **values):
    """A config.json edit: keys dropped, then values set (a Hub file's spelling of the same model)."""
    def edit(raw):
        for key in drop:
            raw.pop(key, None)
        raw.update(values)
    return edit


def _tensors(rename=lambda name: name, add=lambda tensors: {}):
    """A model.safetensors edit: tensors renamed, then add(tensors)'s added (a Hub file's form of the same weights)."""
    def rewrite(path):
        from safetensors.torch import load_file, save_file
        tensors = {rename(name): value for name, value in load_file(path).items()}
        save_file(dict(tensors, **add(tensors)), path, metadata={"format": "pt"})
    return rewrite


def _cast(*dtypes: str):
    """A model.safetensors edit: the tensors stored in `dtypes` by turns (one dtype: all of them; several: a mixed file)."""
    def rewrite(path):
        import torch
        from safetensors.torch import load_file, save_file
        tensors = load_file(path)
        save_file({n: t.to(getattr(torch, dtypes[i % len(dtypes)])) for i, (n, t) in enumerate(sorted(tensors.items()))}, path,
                  metadata={"format": "pt"})
    return rewrite


def _sharded(path):
    """model.safetensors as two shards and model.safetensors.index.json (a larger Hub checkpoint's form), beside a
    stray .safetensors file the index does not name (its values other ones), which transformers does not read."""
    from safetensors.torch import load_file, save_file
    tensors, folder = load_file(path), path.parent
    path.unlink()
    names = sorted(tensors)
    files = {name: f"model-0000{1 + i % 2}-of-00002.safetensors" for i, name in enumerate(names)}
    for file in sorted(set(files.values())):
        save_file({n: tensors[n] for n in names if files[n] == file}, folder / file, metadata={"format": "pt"})
    save_file({n: 2 * t for n, t in tensors.items()}, folder / "stray.safetensors", metadata={"format": "pt"})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": files}))


def _fuse(path):
    from safetensors.torch import load_file, save_file
    save_file(reference.fused_experts(load_file(path)), path, metadata={"format": "pt"})


def _olmo_hybrid_as_hub_holds_it(path):
    """OLMo Hybrid's tensors as its Hub files hold them: each conv's q, k and v weights at their own sizes (16, 16
    and 48 rows of the tiny config; transformers saves torch.chunk's equal thirds), the norms under transformers'
    own names (input_layernorm, post_attention_layernorm), which it reads as well."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = {n.replace("attention_layer_norm", "input_layernorm").replace("feedforward_layer_norm", "post_attention_layernorm"): t
               for n, t in load_file(path).items()}
    for conv in [n[: -len("q_conv1d.weight")] for n in tensors if n.endswith("q_conv1d.weight")]:
        whole = torch.cat([tensors.pop(f"{conv}{p}_conv1d.weight") for p in "qkv"])
        tensors.update({f"{conv}{p}_conv1d.weight": part.contiguous() for p, part in zip("qkv", torch.split(whole, [16, 16, 48]))})
    save_file(tensors, path, metadata={"format": "pt"})


def _axk1_as_hub_holds_it(path):
    """A.X-K1's tensors as its Hub files hold them: no score biases (transformers routes with zeros), a
    post_mlp_layernorm on the dense layer too (which transformers ignores)."""
    from safetensors.torch import load_file, save_file

    tensors = {n: t for n, t in load_file(path).items() if not n.endswith("e_score_correction_bias")}
    tensors["model.layers.0.post_mlp_layernorm.weight"] = 2 * tensors["model.layers.1.post_mlp_layernorm.weight"]
    save_file(tensors, path, metadata={"format": "pt"})


def _gemma4_as_hub_spells_it(raw):
    """A saved tiny Gemma 4 config.json as google/gemma-4-*'s files spell it."""
    layers = raw.pop("per_layer_config")
    full = layers[next(iter(layers))]
    raw.update(global_head_dim=full["head_dim"], num_global_key_value_heads=full["num_key_value_heads"],
               use_bidirectional_attention="vision")
    for key in ("tie_word_embeddings", "rms_norm_eps", "hidden_activation", "attention_bias", "max_position_embeddings"):
        raw.pop(key)


def _gemma4_shared_kv_tensors(tensors):
    """k/v projections and norms of Gemma 4's shared-kv layers (3 and 4 of the tiny config), which transformers ignores."""
    import torch

    return {f"model.layers.{i}.self_attn.{name}.weight": torch.ones(shape) for i in (3, 4)
            for name, shape in (("k_proj", (32, 64)), ("v_proj", (32, 64)), ("k_norm", (32,)))}


def _causal_buffers(name: str, size: int, layers: int = 3, masked: str | None = None):
    """The causal-mask buffers old checkpoints keep per layer (`name`, and `masked` for the masked
    value, with {i}), which transformers ignores."""
    import torch

    def add(tensors):
        out = {name.format(i=i): torch.tril(torch.ones(1, 1, size, size, dtype=torch.bool)) for i in range(layers)}
        return dict(out, **{masked.format(i=i): torch.tensor(-1e9) for i in range(layers)} if masked else {})
    return add


def _head(copy: bool = False):
    """An lm_head.weight beside a tied model's embeddings: seeded random values, or a copy of them."""
    import torch
    return lambda tensors: {"lm_head.weight": tensors["model.embed_tokens.weight"].clone() if copy else
                            torch.randn(128, 64, generator=torch.Generator().manual_seed(1))}


def _score_biases(block: str, layers, experts: int):
    """Seeded random e_score_correction_bias of the MoE `block` in `layers` (the saved ones are zeros), large
    enough to change which experts are chosen."""
    import torch
    return lambda tensors: {f"model.layers.{i}.{block}.e_score_correction_bias": 0.3 * torch.randn(
        experts, generator=torch.Generator().manual_seed(i)) for i in layers}


def _xielu_constants(tensors):
    """xIELU's beta and eps of each layer, unlike their initial values (0.5, -1e-6) that the seeded weights keep."""
    import torch
    return {f"model.layers.{i}.mlp.act_fn.{name}": torch.tensor(value) for i in range(3) for name, value in
            (("beta", 0.3 + 0.1 * i), ("eps", -0.2))}


# Configs as Hub checkpoints spell them: older keys, keys left to the family's transformers
# defaults; and a few forms of their safetensors files (an optional fourth entry rewrites it).
# transformers reloads the edited folder as the reference, so a key jaxllm reads differently (or
# not at all) shows as a difference.
SPELLINGS = {
    "neox-rotary-pct": ("GPTNeoXForCausalLM", {}, _edit(("rope_parameters", "partial_rotary_factor", "rope_theta"),
                                                        rotary_pct=0.5, rotary_emb_base=5000)),
    "neox-no-rope-keys": ("GPTNeoXForCausalLM", {}, _edit(("rope_parameters", "partial_rotary_factor", "rope_theta",
                                                           "rotary_pct", "rotary_emb_base", "hidden_act"))),
    "neox-ignores-top-level-partial-rotary": ("GPTNeoXForCausalLM", {}, lambda raw: raw.update(
        partial_rotary_factor=2 * raw["rope_parameters"].pop("partial_rotary_factor"))),
    # GPTNeoXJapaneseConfig's defaults: every dim of each head rotated, the head tied
    "neox-japanese-defaults": ("GPTNeoXJapaneseForCausalLM", dict(tie_word_embeddings=True), _edit(("rotary_pct", "rotary_emb_base", "tie_word_embeddings"))),
    "ctrl-untied": ("CTRLLMHeadModel", dict(tie_word_embeddings=False), _edit()),  # its own head, biased as the tied one
    "openai-gpt-untied-relu": ("OpenAIGPTLMHeadModel", dict(tie_word_embeddings=False, afn="relu"), _edit()),
    "neox-no-attention-bias": ("GPTNeoXForCausalLM", dict(attention_bias=False), _edit()),
    "gpt2-unscaled-attention": ("GPT2LMHeadModel", dict(scale_attn_weights=False, scale_attn_by_inverse_layer_idx=True), _edit()),
    "gpt2-untied": ("GPT2LMHeadModel", dict(tie_word_embeddings=False), _edit(("activation_function",))),
    "qwen2-window-without-flag": ("Qwen2ForCausalLM", dict(sliding_window=8), _edit(("layer_types", "use_sliding_window"))),
    "qwen2-default-window-layers": ("Qwen2ForCausalLM", dict(num_hidden_layers=30, use_sliding_window=True, sliding_window=8),
                                    _edit(("layer_types", "max_window_layers"))),
    "qwen2-window-flag-null-window": ("Qwen2ForCausalLM", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
                                      _edit(("layer_types",), sliding_window=None)),
    "qwen3-window-flag-default-window": ("Qwen3ForCausalLM", dict(use_sliding_window=True, sliding_window=8, max_window_layers=1),
                                         _edit(("layer_types", "sliding_window"))),
    # the same weights as Hub files store them: half precision, mixed dtypes, shards with their index, the rotary
    # inv_freq buffers older transformers saved (which it ignores)
    **{f"llama-{'-'.join(dtypes)}-weights": ("LlamaForCausalLM", {}, _edit(("dtype",)), _cast(*dtypes))
       for dtypes in (("float16",), ("bfloat16",), ("float16", "bfloat16", "float32"))},
    "llama-sharded-with-index": ("LlamaForCausalLM", {}, _edit(), _sharded),
    "llama-rotary-inv-freq-buffers": ("LlamaForCausalLM", {}, _edit(dtype="auto"), _tensors(add=lambda tensors: {
        f"model.layers.{i}.self_attn.rotary_emb.inv_freq": tensors["model.norm.weight"][:8].clone() for i in range(3)})),
    "gemma-tied-by-default": ("GemmaForCausalLM", {}, _edit(("tie_word_embeddings",))),
    # tied by its config, yet the file holds a head of its own: transformers keeps that head
    "llama-tied-config-own-head": ("LlamaForCausalLM", dict(tie_word_embeddings=True), _edit(), _tensors(add=_head())),
    # shapes the config class assumes: Gemma's head_dim 256 and Qwen3's 128 (not hidden / heads), GPT-2's 1,024 positions
    "gemma2-default-head-dim": ("Gemma2ForCausalLM", dict(head_dim=256), _edit(("head_dim",))),
    "gemma3-default-head-dim": ("Gemma3ForCausalLM", dict(head_dim=256), _edit(("head_dim",))),
    "qwen3-default-head-dim": ("Qwen3ForCausalLM", dict(head_dim=128), _edit(("head_dim",))),
    # num_key_value_heads left out: the config class's own default, not num_attention_heads (Llama's reading)
    "mistral-default-kv-heads": ("MistralForCausalLM", dict(num_attention_heads=16, num_key_value_heads=8), _edit(("num_key_value_heads",))),
    "mixtral-default-kv-heads": ("MixtralForCausalLM", dict(num_attention_heads=16, num_key_value_heads=8), _edit(("num_key_value_heads",))),
    "qwen2-default-kv-heads": ("Qwen2ForCausalLM", dict(num_attention_heads=64, num_key_value_heads=32, head_dim=8),
                               _edit(("num_key_value_heads",))),
    "qwen3-default-kv-heads": ("Qwen3ForCausalLM", dict(num_attention_heads=64, num_key_value_heads=32, head_dim=8),
                               _edit(("num_key_value_heads",))),
    "qwen3moe-default-kv-heads": ("Qwen3MoeForCausalLM", dict(num_attention_heads=8, num_key_value_heads=4), _edit(("num_key_value_heads",))),
    "gemma-default-kv-heads": ("GemmaForCausalLM", dict(num_attention_heads=32, num_key_value_heads=16, head_dim=8),
                               _edit(("num_key_value_heads",))),
    "gemma2-default-kv-heads": ("Gemma2ForCausalLM", dict(num_attention_heads=8, num_key_value_heads=4), _edit(("num_key_value_heads",))),
    "gemma3-default-kv-heads": ("Gemma3ForCausalLM", dict(num_attention_heads=8, num_key_value_heads=4), _edit(("num_key_value_heads",))),
    # max_position_embeddings left out: the config class's own (Phi-3's 4,096 sets LongRoPE's attention
    # factor; Mistral's 131,072 is YaRN's original length when its rope parameters give none)
    "phi3-default-positions": ("Phi3ForCausalLM", {}, _edit(("max_position_embeddings",))),
    "llama-yarn-default-positions": ("LlamaForCausalLM", dict(rope_parameters=dict(ROPE_KINDS["yarn"], rope_theta=10000.0)),
                                     lambda raw: [raw.pop("max_position_embeddings"),
                                                  raw["rope_parameters"].pop("original_max_position_embeddings")]),
    "mistral-yarn-default-positions": ("MistralForCausalLM", dict(rope_parameters=dict(ROPE_KINDS["yarn"], rope_theta=10000.0)),
                                       lambda raw: [raw.pop("max_position_embeddings"),
                                                    raw["rope_parameters"].pop("original_max_position_embeddings")]),
    # YaRN's factor given as null: transformers takes max_position_embeddings / original_max_position_embeddings (4)
    "llama-yarn-null-factor": ("LlamaForCausalLM", dict(rope_parameters=dict(ROPE_KINDS["yarn"], original_max_position_embeddings=256,
                                                                             rope_theta=10000.0)),
                               lambda raw: raw["rope_parameters"].update(factor=None)),
    "gpt2-default-positions": ("GPT2LMHeadModel", dict(n_positions=1024), _edit(("n_positions",))),
    "gemma-reads-hidden-act": ("GemmaForCausalLM", dict(hidden_act="silu"), _edit(hidden_activation="gelu_pytorch_tanh")),
    "gemma2-exact-gelu": ("Gemma2ForCausalLM", dict(hidden_activation="gelu"), _edit()),
    "gemma3-v4-scaling-no-theta": ("Gemma3ForCausalLM", {}, _edit(("rope_parameters", "rope_theta"), rope_local_base_freq=10000.0,
                                                                  rope_scaling={"rope_type": "linear", "factor": 8.0})),
    # Gemma 3's pattern is sliding_window_pattern's (6 without it): transformers sets the private
    # _sliding_window_pattern from that key, over any value config.json gives it
    "gemma3-ignores-private-window-pattern": ("Gemma3ForCausalLM", {}, _edit(("layer_types",), _sliding_window_pattern=2)),
    # Gemma 3's rope as Gemma3TextConfig builds it: one entry per layer type, each without rope_theta
    # taking rope_theta (1e6) or rope_local_base_freq (1e4); a flat rope_parameters is no entry (ignored)
    "gemma3-ignores-flat-rope-parameters": ("Gemma3ForCausalLM", {}, _edit(
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0}, rope_local_base_freq=5000.0)),
    "gemma3-ignores-incomplete-flat-rope-parameters": ("Gemma3ForCausalLM", {}, _edit(
        rope_parameters={"rope_type": "llama3", "factor": 8.0}, rope_theta=100000.0)),
    "gemma3-per-layer-rope-top-level-bases": ("Gemma3ForCausalLM", {}, _edit(
        rope_theta=50000.0, rope_local_base_freq=5000.0,
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0}, "sliding_attention": {"rope_type": "default"}})),
    "gemma3-per-layer-rope-default-bases": ("Gemma3ForCausalLM", {}, _edit(
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 2.0}})),
    "mixtral-default-theta": ("MixtralForCausalLM", {}, _edit(("rope_parameters", "rope_theta"))),
    "phi3-original-context-in-rope-only": ("Phi3ForCausalLM", {}, lambda raw: raw["rope_parameters"].update(
        original_max_position_embeddings=raw.pop("original_max_position_embeddings"))),
    # Phi3Config reads rope type "yarn" (like "su") as LongRoPE, its short and long factors
    "phi3-yarn-is-longrope": ("Phi3ForCausalLM", {}, lambda raw: raw["rope_parameters"].update(rope_type="yarn", factor=4.0)),
    "phi3-v4-su-is-longrope": ("Phi3ForCausalLM", {}, lambda raw: raw.update(rope_scaling=dict(
        {k: v for k, v in raw.pop("rope_parameters").items() if k not in ("rope_type", "rope_theta")}, type="su"))),
    "mixtral-num-experts-spelling": ("MixtralForCausalLM", {}, lambda raw: raw.update(num_experts=raw.pop("num_local_experts"))),
    "qwen3moe-default-top-k": ("Qwen3MoeForCausalLM", dict(num_experts=10, num_experts_per_tok=8), _edit(("num_experts_per_tok",))),
    "qwen3moe-default-width": ("Qwen3MoeForCausalLM", dict(moe_intermediate_size=768), _edit(("moe_intermediate_size",))),
    # Qwen2MoeConfig's defaults: 60 experts, top 4, no renormalisation, q/k/v biases, 16 kv heads; Mixtral's
    # num_local_experts and Llama's attention_bias it never reads
    "qwen2moe-default-experts": ("Qwen2MoeForCausalLM", dict(num_experts=60, num_experts_per_tok=4, norm_topk_prob=False, qkv_bias=True,
                                                             num_attention_heads=16, num_key_value_heads=16),
                                 _edit(("num_experts", "num_experts_per_tok", "norm_topk_prob", "qkv_bias", "num_key_value_heads"),
                                       num_local_experts=2, attention_bias=False)),
    # its widths (1,408 routed, 5,632 shared), experts every other layer (decoder_sparse_step)
    "qwen2moe-default-widths-sparse-step": ("Qwen2MoeForCausalLM", dict(moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                                                                        decoder_sparse_step=2, mlp_only_layers=[]),
                                            _edit(("moe_intermediate_size", "shared_expert_intermediate_size"))),
    # its window layers without layer_types: the even ones below max_window_layers (28), not Qwen2's from it on;
    # qkv_bias false drops the biases
    # the window turned off as transformers 5 saves it: "sliding_window": 0 beside "use_sliding_window": false
    "qwen2moe-window-off-saved-as-zero": ("Qwen2MoeForCausalLM", dict(use_sliding_window=False), _edit()),
    "qwen2moe-window-layers-qkv-bias-off": ("Qwen2MoeForCausalLM", dict(max_window_layers=1, qkv_bias=False),
                                            _edit(("layer_types", "max_window_layers"), attention_bias=True)),
    # a key the family's modeling code ignores: every head rotates whole (transformers' Llama, Qwen3)
    # both rope spellings (a v5 config given a rope_scaling, as model cards advise): rope_scaling
    # wins; a flat rope_parameters without rope_theta takes the top-level one
    "rope-scaling-beside-rope-parameters": ("LlamaForCausalLM", {}, _edit(rope_scaling={"rope_type": "linear", "factor": 2.0})),
    "rope-theta-beside-rope-parameters": ("LlamaForCausalLM", dict(rope_parameters={"rope_type": "linear", "factor": 2.0}),
                                          lambda raw: raw.update(rope_theta=raw["rope_parameters"].pop("rope_theta") / 2)),
    # a null rope_theta beside rope settings of their own: transformers takes theirs (refused where they give none)
    "llama-null-rope-theta-beside-rope-parameters": ("LlamaForCausalLM", dict(rope_parameters={"rope_type": "default", "rope_theta": 5000.0}),
                                                     _edit(rope_theta=None)),
    "phi3-null-rope-theta-beside-rope-parameters": ("Phi3ForCausalLM", {}, _edit(rope_theta=None)),
    "llama-ignores-partial-rotary": ("LlamaForCausalLM", {}, _edit(partial_rotary_factor=0.5)),
    "qwen3-ignores-partial-rotary": ("Qwen3ForCausalLM", {}, _edit(partial_rotary_factor=0.5)),
    # bias keys of families whose code hard-wires the biases off (Llama's honours them)
    "mistral-ignores-bias-keys": ("MistralForCausalLM", {}, _edit(attention_bias=True, mlp_bias=True)),
    "phi3-ignores-attention-bias": ("Phi3ForCausalLM", {}, _edit(attention_bias=True)),
    "olmo2-ignores-mlp-bias": ("Olmo2ForCausalLM", {}, _edit(mlp_bias=True)),
    # norm epsilon and activation keys of other families: each family's code reads one of each
    "llama-ignores-layer-norm-eps": ("LlamaForCausalLM", {}, _edit(("rms_norm_eps",), layer_norm_eps=0.5)),
    "neox-ignores-rms-norm-eps": ("GPTNeoXForCausalLM", {}, _edit(rms_norm_eps=0.5)),
    "gpt2-ignores-common-keys": ("GPT2LMHeadModel", {}, _edit(hidden_act="relu", layer_norm_eps=0.5, rms_norm_eps=0.5)),
    # head shapes of families whose attention takes hidden_size / num_attention_heads, whatever the config says
    "neox-ignores-kv-heads": ("GPTNeoXForCausalLM", {}, _edit(num_key_value_heads=2)),
    # GPT-NeoX's rotary embedding alone reads head_dim: int(head_dim x rotary_pct) dims rotate, heads stay hidden / heads
    "neox-head-dim-sets-rotary-dim": ("GPTNeoXForCausalLM", {}, _edit(head_dim=24)),
    "neox-head-dim-whole-head-rotary": ("GPTNeoXForCausalLM", dict(rotary_pct=0.5), _edit(head_dim=32)),
    "gpt2-ignores-head-keys": ("GPT2LMHeadModel", {}, _edit(head_dim=8, num_key_value_heads=2)),
    # both spellings of a GPT-2 key: GPT2Config's attribute_map sets the common one (hidden_size, ...) over
    # its own (n_embd, ...); intermediate_size it never reads (n_inner, else 4 x hidden_size)
    "gpt2-common-spellings-win": ("GPT2LMHeadModel", {}, _edit(n_embd=32, hidden_size=64, n_layer=1, num_hidden_layers=3,
                                                             n_head=2, num_attention_heads=4, n_positions=8,
                                                             max_position_embeddings=64, intermediate_size=96)),
    # window keys of families whose code has no window, or one on every layer (no layer_types)
    "llama-ignores-window-keys": ("LlamaForCausalLM", {}, _edit(sliding_window=8, layer_types=["sliding_attention"] * 3)),
    "olmo2-ignores-window": ("Olmo2ForCausalLM", {}, _edit(sliding_window=8)),
    "mixtral-ignores-layer-types": ("MixtralForCausalLM", {}, _edit(layer_types=["full_attention"] * 3)),
    # use_sliding_window is Qwen's switch: families whose transformers config lacks it keep their window
    **{f"{name}-ignores-window-switch": (arch, dict(sliding_window=8), _edit(use_sliding_window=False)) for name, arch in (
        ("mistral", "MistralForCausalLM"), ("gemma2", "Gemma2ForCausalLM"), ("mixtral", "MixtralForCausalLM"),
        ("phi3", "Phi3ForCausalLM"))},
    # the family comes from model_type, as AutoModelForCausalLM reads it: architectures left out (many
    # fine-tuned checkpoints), naming another head of the family or a custom class, or another family
    "no-architectures": ("LlamaForCausalLM", {}, _edit(("architectures",))),
    "architectures-another-head": ("Qwen2ForCausalLM", {}, _edit(architectures=["Qwen2ForSequenceClassification"])),
    "architectures-custom-name": ("MistralForCausalLM", {}, _edit(architectures=["MyFineTunedModel"])),
    # model_types transformers builds with one of our families' config and model classes
    "gpt-sw3-is-gpt2": ("GPT2LMHeadModel", {}, _edit(model_type="gpt-sw3")),
    "model-type-over-architectures": ("Qwen2ForCausalLM", {}, _edit(architectures=["LlamaForCausalLM"])),
    # checkpoints saved from the base model: tensor names without transformers' base_model_prefix
    # (openai-community/gpt2's form, with its mask buffers), which transformers adds while loading
    "gpt2-base-model-names": ("GPT2LMHeadModel", {}, _edit(),
                              _tensors(lambda n: n.removeprefix("transformer."), _causal_buffers("h.{i}.attn.bias", 64))),
    "qwen2-base-model-names": ("Qwen2ForCausalLM", {}, _edit(), _tensors(lambda n: n.removeprefix("model."))),
    # Granite: multipliers left out are 1.0 (the attention scale too, not head_dim ** -0.5); the Hub's
    # v4 rope keys; an untied head divided by logits_scaling; keys its code never reads
    "granite-default-multipliers": ("GraniteForCausalLM", {}, _edit(("embedding_multiplier", "residual_multiplier",
                                                                     "attention_multiplier", "logits_scaling"))),
    "granite-v4-rope-keys": ("GraniteForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw.pop("rope_parameters")["rope_theta"] / 2, rope_scaling=None)),
    "granite-untied": ("GraniteForCausalLM", dict(tie_word_embeddings=False, mlp_bias=True), _edit()),
    "granite-ignores-other-keys": ("GraniteForCausalLM", {}, _edit(partial_rotary_factor=0.5, sliding_window=8, layer_norm_eps=0.5)),
    # Phi: phi-2's v4 keys (partial_rotary_factor and rope_theta top-level, rope_scaling null); 0.5 of each
    # head rotates where no key says; a tied head keeps its bias; qk_layernorm off when left out; keys
    # its code never reads (it hard-wires every bias on)
    "phi-v4-rope-keys": ("PhiForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw["rope_parameters"]["rope_theta"] / 2, partial_rotary_factor=0.25, rope_scaling=None,
        rope_parameters=None)),
    "phi-default-partial-rotary": ("PhiForCausalLM", dict(partial_rotary_factor=0.25),
                                   lambda raw: raw["rope_parameters"].pop("partial_rotary_factor")),
    "phi-tied-head-keeps-its-bias": ("PhiForCausalLM", dict(tie_word_embeddings=True), _edit()),
    "phi-no-qk-layernorm-by-default": ("PhiForCausalLM", dict(qk_layernorm=False), _edit(("qk_layernorm",))),
    "phi-ignores-other-keys": ("PhiForCausalLM", {}, _edit(attention_bias=False, mlp_bias=False, rms_norm_eps=0.5,
                                                           sliding_window=8, layer_types=["sliding_attention"] * 3)),
    # SmolLM3: NoPE layers from no_rope_layer_interval (4 where left out), the window on those alone
    # (layer_types left out); the window off where use_sliding_window is left out; the Hub's v4 keys,
    # its tied head and 2e6 rope base where left out; keys its code never reads
    "smollm3-default-nope-interval": ("SmolLM3ForCausalLM", dict(num_hidden_layers=4, no_rope_layers=None, layer_types=None),
                                      _edit(("no_rope_layers", "layer_types", "no_rope_layer_interval"))),
    "smollm3-window-off-by-default": ("SmolLM3ForCausalLM", dict(no_rope_layers=None, layer_types=None, no_rope_layer_interval=2),
                                      _edit(("no_rope_layers", "layer_types", "use_sliding_window"))),
    "smollm3-hub-keys": ("SmolLM3ForCausalLM", {}, _edit(("rope_parameters", "tie_word_embeddings"), rope_scaling=None,
                                                         max_window_layers=1, partial_rotary_factor=0.5)),
    # OLMo 3: the Hub's v4 rope keys (rope_scaling goes to the full layers; a top-level rope_theta too, the
    # sliding ones keep 500,000); its default pattern and window (layer_types, sliding_window left out); a flat
    # rope_parameters (no entry: ignored) and keys its code never reads
    "olmo3-v4-rope-keys": ("Olmo3ForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw["rope_parameters"]["full_attention"].pop("rope_theta"), rope_parameters=None,
        rope_scaling=raw["rope_parameters"]["full_attention"])),
    "olmo3-default-layer-types-and-window": ("Olmo3ForCausalLM", dict(num_hidden_layers=4, layer_types=None),
                                             _edit(("layer_types", "sliding_window", "rms_norm_eps"))),
    "olmo3-ignores-other-keys": ("Olmo3ForCausalLM", {}, _edit(
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1234.0}, mlp_bias=True, use_sliding_window=False,
        partial_rotary_factor=0.5)),
    # Seed-OSS: q/k/v biases on and o_proj's off, head_dim 128 and 8 kv heads where left out (SeedOssConfig)
    "seedoss-default-biases-and-shapes": ("SeedOssForCausalLM", dict(attention_bias=True, attention_out_bias=False, head_dim=128,
                                                                     num_attention_heads=16, num_key_value_heads=8),
                                          _edit(("attention_bias", "attention_out_bias", "head_dim", "num_key_value_heads"))),
    # Arcee: squared ReLU and no biases where left out; a key its code never reads
    "arcee-defaults": ("ArceeForCausalLM", dict(attention_bias=False, mlp_bias=False),
                       _edit(("hidden_act", "attention_bias", "mlp_bias"), sliding_window=8)),
    # EXAONE 4: its default pattern (every 4th layer full, without rotary positions) where layer_types is left
    # out; the Hub's "LLLG" beside layer_types; no window: every layer full and rotated; keys its code never reads
    "exaone4-default-pattern": ("Exaone4ForCausalLM", dict(num_hidden_layers=4, sliding_window_pattern=4),
                                _edit(("layer_types", "sliding_window_pattern"))),
    "exaone4-hub-pattern-string": ("Exaone4ForCausalLM", {}, _edit(sliding_window_pattern="LLLG")),
    "exaone4-no-window": ("Exaone4ForCausalLM", dict(sliding_window=None, layer_types=["full_attention"] * 3), _edit()),
    "exaone4-ignores-other-keys": ("Exaone4ForCausalLM", {}, _edit(attention_bias=True, mlp_bias=True, use_sliding_window=False,
                                                                   partial_rotary_factor=0.5)),
    # Apertus: without rope settings, Llama 3 scaling of a 12,000,000 base (a top-level rope_theta unread); the
    # v4 keys; xIELU's beta and eps as the file holds them; no attention biases where left out; keys its code never reads
    "apertus-default-rope": ("ApertusForCausalLM", {}, _edit(("rope_parameters",), rope_theta=5000.0)),
    "apertus-v4-rope-keys": ("ApertusForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw["rope_parameters"].pop("rope_theta") / 2, rope_scaling=raw.pop("rope_parameters"))),
    # Apertus 1.5: a tied head is the embedding, every token, whatever output_vocab_size says
    "apertus1p5-tied-head-unpruned": ("Apertus1p5TextForCausalLM", dict(tie_word_embeddings=True), _edit()),
    "apertus-xielu-constants-from-file": ("ApertusForCausalLM", {}, _edit(), _tensors(add=_xielu_constants)),
    "apertus-defaults-and-other-keys": ("ApertusForCausalLM", dict(attention_bias=False), _edit(
        ("attention_bias", "hidden_act"), mlp_bias=True, sliding_window=8, layer_types=["sliding_attention"] * 3)),
    # StarCoder 2: the Hub's keys (starcoder2-3b: v4 rope_theta, tie_word_embeddings left out: tied, dropouts and
    # keys of its own no code reads); use_bias off, untied, no window, heads wider than hidden / heads (head_dim, which
    # its attention and rotary embedding read); keys of other families its code never reads
    "starcoder2-hub-keys": ("Starcoder2ForCausalLM", {}, _edit(("tie_word_embeddings", "rope_parameters"), rope_theta=999999.44,
                                                               norm_type="layer_norm", mlp_type="default", residual_dropout=0.1)),
    "starcoder2-no-bias-untied-no-window-head-dim": ("Starcoder2ForCausalLM", dict(use_bias=False, tie_word_embeddings=False,
                                                                                  sliding_window=None, head_dim=32), _edit()),
    "starcoder2-ignores-other-keys": ("Starcoder2ForCausalLM", {}, _edit(
        rms_norm_eps=0.5, layer_norm_eps=0.5, attention_bias=False, mlp_bias=False, use_sliding_window=False,
        layer_types=["full_attention"] * 3, partial_rotary_factor=0.5)),
    # StableLM: StableLM 2 1.6B's form (sequential, no q/k norms, q/k/v biases) in the Hub's v4 keys; stablelm-3b-4e1t's
    # (every flag off) with the flags and the partial factor left to StableLmConfig (off, 0.25); a head_dim giving the
    # same rotary dims (its attention takes hidden / heads) and keys its code never reads
    "stablelm-2-hub-keys": ("StableLmForCausalLM", dict(use_parallel_residual=False, qk_layernorm=False), lambda raw: raw.update(
        rope_theta=raw["rope_parameters"]["rope_theta"] / 2, partial_rotary_factor=0.5, rope_parameters=None, rope_scaling=None)),
    "stablelm-default-flags": ("StableLmForCausalLM", dict(use_parallel_residual=False, qk_layernorm=False, use_qkv_bias=False),
                               lambda raw: [raw.pop(k) for k in ("use_parallel_residual", "qk_layernorm", "use_qkv_bias")]
                               + [raw["rope_parameters"].pop("partial_rotary_factor")]),
    "stablelm-ignores-other-keys": ("StableLmForCausalLM", {}, _edit(
        head_dim=17, attention_bias=True, mlp_bias=True, rms_norm_eps=0.5, sliding_window=8, layer_types=["sliding_attention"] * 3)),
    # OLMoE: OlmoeConfig's routing where left out (64 experts, top 8, not renormalised); Mixtral's spelling
    # of the expert count (its attribute_map); keys its code never reads (its mask has no window)
    "olmoe-default-routing": ("OlmoeForCausalLM", dict(num_experts=64, num_experts_per_tok=8, norm_topk_prob=False),
                              _edit(("num_experts", "num_experts_per_tok", "norm_topk_prob"))),
    # OPT: opt-125m's config.json (pre-LN, word_embed_proj_dim = hidden_size; no tie_word_embeddings, enable_bias or
    # layer_norm_elementwise_affine: tied, biased, affine); the switches off; the final norm removed
    "opt-125m-hub-keys": ("OPTForCausalLM", dict(do_layer_norm_before=True, word_embed_proj_dim=64),
                          _edit(("tie_word_embeddings", "enable_bias", "layer_norm_elementwise_affine"))),
    "opt-no-bias-no-affine-untied": ("OPTForCausalLM", dict(do_layer_norm_before=True, enable_bias=False, tie_word_embeddings=False,
                                                            layer_norm_elementwise_affine=False), _edit(layer_norm_eps=0.5, hidden_act="gelu")),
    "opt-removed-final-norm": ("OPTForCausalLM", dict(do_layer_norm_before=True, _remove_final_layer_norm=True), _edit()),
    # facebook/opt-*'s files, saved from OPTModel: decoder.* without the model. prefix
    "opt-base-model-names": ("OPTForCausalLM", {}, _edit(), _tensors(lambda n: n.removeprefix("model."))),
    # BioGPT: microsoft/biogpt's config.json (its unread layer_norm_eps 1e-12; tied, scaled, gelu where left out);
    # unscaled and untied; XGLM: facebook/xglm-564M's (pad_token_id 1 where left out: no position row zeroed)
    "biogpt-hub-keys": ("BioGptForCausalLM", {}, _edit(("tie_word_embeddings", "scale_embedding", "hidden_act"), layer_norm_eps=1e-12)),
    "biogpt-unscaled-untied": ("BioGptForCausalLM", dict(scale_embedding=False, tie_word_embeddings=False), _edit(rms_norm_eps=0.5)),
    "xglm-hub-keys": ("XGLMForCausalLM", {}, _edit(("tie_word_embeddings", "scale_embedding", "activation_function", "pad_token_id"))),
    "xglm-unscaled-untied": ("XGLMForCausalLM", dict(scale_embedding=False, tie_word_embeddings=False),
                             _edit(layer_norm_eps=0.5, hidden_act="relu")),
    # CodeGen: Salesforce/codegen-350M-mono's keys (n_inner null: 4 x n_embd; n_ctx and scale_attn_weights unread)
    "codegen-hub-keys": ("CodeGenForCausalLM", dict(n_inner=None), _edit(("activation_function",), n_ctx=64, scale_attn_weights=True,
                                                                       hidden_act="relu")),
    # Persimmon: persimmon-8b's v4 keys (rope_theta and partial_rotary_factor top-level, rope_scaling null); half of each
    # head rotating where no key says, q/k LayerNorms off, and keys its code never reads
    "persimmon-v4-rope-keys": ("PersimmonForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw["rope_parameters"]["rope_theta"] / 2, partial_rotary_factor=0.25, rope_scaling=None, rope_parameters=None)),
    "persimmon-default-partial-no-qk-norm": ("PersimmonForCausalLM", dict(partial_rotary_factor=0.25, qk_layernorm=False),
                                             lambda raw: [raw["rope_parameters"].pop("partial_rotary_factor"),
                                                          raw.update(attention_bias=False, num_key_value_heads=2, rms_norm_eps=0.5)]),
    # VaultGemma: v4 rope_theta, soft caps off (null), a use_bidirectional_attention its code never reads; its default
    # layer pattern and tied head where left out
    "vaultgemma-v4-keys-no-caps": ("VaultGemmaForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw.pop("rope_parameters")["rope_theta"], attn_logit_softcapping=None, final_logit_softcapping=None,
        use_bidirectional_attention=True)),
    "vaultgemma-default-pattern": ("VaultGemmaForCausalLM", {}, _edit(("layer_types", "tie_word_embeddings"))),
    # DBRX: dbrx-instruct's keys (no rope keys, attn_config's rope_theta unread; ffn_config without ffn_act_fn or
    # moe_normalize_expert_weights: silu, weights summing to 1; a training-only jitter); the weights left unnormalised
    "dbrx-hub-keys": ("DbrxForCausalLM", {}, lambda raw: [raw.pop("rope_parameters"), raw.update(router_aux_loss_coef=0.05), raw.update(
        ffn_config={k: v for k, v in raw["ffn_config"].items() if k not in ("ffn_act_fn", "moe_normalize_expert_weights")}
        | dict(moe_jitter_eps=0.01))]),
    "dbrx-unnormalised-weights": ("DbrxForCausalLM", dict(ffn_config=dict(ffn_hidden_size=32, moe_num_experts=4, moe_top_k=2,
                                                                          moe_normalize_expert_weights=None)), _edit()),
    "olmoe-num-local-experts-spelling": ("OlmoeForCausalLM", {}, lambda raw: raw.update(num_local_experts=raw.pop("num_experts"))),
    "olmoe-ignores-other-keys": ("OlmoeForCausalLM", {}, _edit(sliding_window=4, layer_types=["sliding_attention"] * 3,
                                                               mlp_bias=True, partial_rotary_factor=0.5)),
    # GraniteMoE: 8 experts, top 2, multipliers 1.0 where left out; keys its code never reads (the shared
    # MLP's width is GraniteMoeShared's); GraniteMoeShared without shared_intermediate_size: no shared MLP
    "granitemoe-defaults": ("GraniteMoeForCausalLM", dict(num_local_experts=8, num_experts_per_tok=2), _edit((
        "num_local_experts", "num_experts_per_tok", "embedding_multiplier", "residual_multiplier", "attention_multiplier",
        "logits_scaling"))),
    "granitemoe-ignores-other-keys": ("GraniteMoeForCausalLM", {}, _edit(num_experts=3, shared_intermediate_size=16, sliding_window=4,
                                                                         mlp_bias=True, partial_rotary_factor=0.5)),
    "granitemoeshared-none-by-default": ("GraniteMoeSharedForCausalLM", dict(shared_intermediate_size=0),
                                         _edit(("shared_intermediate_size",))),
    # PhiMoE: Phi-3.5-MoE's v4 LongRoPE keys, sequences past original_max_position_embeddings (transformers
    # keeps the short factors there, and the tables times long_mscale); PhimoeConfig's router, expert count
    # and unbiased head where left out; a tied head keeps its bias
    "phimoe-longrope-hub-keys": ("PhimoeForCausalLM", {}, lambda raw: raw.update(rope_parameters=None, rope_theta=5000.0, rope_scaling={
        "type": "longrope", "short_factor": [1.0, 1.1, 1.3, 1.6, 2.0, 2.5, 3.1, 3.8], "long_factor": [1.0, 2.0, 4, 6, 8, 10, 12, 14],
        "short_mscale": 1.2, "long_mscale": 1.2, "original_max_position_embeddings": 8})),
    "phimoe-defaults": ("PhimoeForCausalLM", dict(num_local_experts=16, router_jitter_noise=0.01, lm_head_bias=False),
                        _edit(("num_local_experts", "router_jitter_noise", "lm_head_bias"))),
    "phimoe-tied-head-keeps-its-bias": ("PhimoeForCausalLM", dict(tie_word_embeddings=True), _edit()),
    # Cohere: logit_scale 0.0625, no q/k norms and a rope base of 500,000 where left out (the Hub's v4 keys); head_dim
    # read where given; keys its code never reads. Cohere 2: its default pattern (every 4th layer full, or
    # sliding_window_pattern's), tied by default; Cohere's q/k norm key and Qwen's window switch it never reads
    "cohere-default-scale-qk-norm-theta": ("CohereForCausalLM", dict(use_qk_norm=False), _edit(("logit_scale", "use_qk_norm", "rope_parameters"))),
    "cohere-head-dim": ("CohereForCausalLM", dict(head_dim=8), _edit()),
    "cohere-ignores-other-keys": ("CohereForCausalLM", {}, _edit(mlp_bias=True, rms_norm_eps=0.5, sliding_window=8, partial_rotary_factor=0.5)),
    "cohere2-default-pattern": ("Cohere2ForCausalLM", dict(num_hidden_layers=4, layer_types=None, tie_word_embeddings=True),
                                _edit(("layer_types", "tie_word_embeddings"))),
    "cohere2-window-pattern": ("Cohere2ForCausalLM", dict(num_hidden_layers=4, layer_types=None), _edit(("layer_types",), sliding_window_pattern=2)),
    "cohere2-ignores-other-keys": ("Cohere2ForCausalLM", {}, _edit(use_qk_norm=True, use_sliding_window=False, mlp_bias=True)),
    # GLM and GLM-4: half of each head rotates and heads of 128 where left out, 2 kv heads (not num_attention_heads);
    # the Hub's v4 keys (partial_rotary_factor and rope_theta top-level); attention_bias off; keys their code never reads
    "glm-default-partial-rotary-head-dim-kv-heads": ("GlmForCausalLM", dict(head_dim=128), lambda raw: [
        raw.pop("head_dim"), raw.pop("num_key_value_heads"), raw["rope_parameters"].pop("partial_rotary_factor")]),
    "glm4-v4-rope-keys": ("Glm4ForCausalLM", {}, _edit(("rope_parameters",), rope_theta=5000.0, partial_rotary_factor=0.25)),
    "glm4-no-attention-bias": ("Glm4ForCausalLM", dict(attention_bias=False), _edit()),
    "glm4-ignores-other-keys": ("Glm4ForCausalLM", {}, _edit(mlp_bias=True, layer_norm_eps=0.5, sliding_window=8,
                                                             layer_types=["sliding_attention"] * 3)),
    # ERNIE 4.5: tied, heads of 128, 2 kv heads and a rope base of 500,000 where left out; biases off by default
    "ernie-defaults": ("Ernie4_5ForCausalLM", dict(head_dim=128, use_bias=False), _edit(
        ("tie_word_embeddings", "head_dim", "num_key_value_heads", "rope_parameters", "use_bias"))),
    "ernie-ignores-other-keys": ("Ernie4_5ForCausalLM", {}, _edit(attention_bias=False, mlp_bias=False, partial_rotary_factor=0.5,
                                                                  sliding_window=8)),
    # gpt-oss: the Hub's v4 rope keys (rope_scaling, a top-level rope_theta) and keys its code never
    # reads; its defaults (YaRN x32 from 4,096 at base 150,000 for null rope settings, sliding and
    # full layers alternating, biases, the SwiGLU limit) where left out; num_experts for num_local_experts
    "gpt-oss-hub-keys": ("GptOssForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw["rope_parameters"].pop("rope_theta"), rope_scaling=raw.pop("rope_parameters"), use_sliding_window=False,
        mlp_bias=True, norm_topk_prob=False, experts_per_token=3, initial_context_length=64)),
    "gpt-oss-defaults": ("GptOssForCausalLM", dict(num_hidden_layers=4, layer_types=None),
                         _edit(("layer_types", "attention_bias", "swiglu_limit", "num_local_experts"), rope_parameters=None,
                               num_experts=4)),
    # GPTBigCode: SantaCoder-style multi-head c_attn ([heads, 3, head_dim]); multi-query, the tanh GELU and a 4 x n_embd MLP
    # where left out; untied, unscaled scores; keys its code never reads (GPT-2's layer-index scaling, kv heads, head_dim)
    "bigcode-multi-head": ("GPTBigCodeForCausalLM", dict(multi_query=False), _edit()),
    "bigcode-defaults": ("GPTBigCodeForCausalLM", dict(n_inner=256), _edit(("multi_query", "activation_function", "n_inner"))),
    "bigcode-untied-unscaled-ignores-other-keys": ("GPTBigCodeForCausalLM", dict(tie_word_embeddings=False, scale_attn_weights=False),
                                                   _edit(scale_attn_by_inverse_layer_idx=True, num_key_value_heads=4, head_dim=8,
                                                         hidden_act="relu", layer_norm_eps=0.5)),
    # GPT-J: rotary_dim 64, gelu_new and an untied head where left out; a tied head keeps its bias, whole heads rotate;
    # rope keys (its base is fixed) and others its code never reads; GPT-J 6B's mask buffers
    "gptj-defaults": ("GPTJForCausalLM", dict(n_embd=128, n_head=2, rotary_dim=64), _edit(("rotary_dim", "activation_function",
                                                                                           "tie_word_embeddings"))),
    "gptj-tied-whole-head-rotary": ("GPTJForCausalLM", dict(tie_word_embeddings=True, rotary_dim=16), _edit()),
    "gptj-ignores-other-keys": ("GPTJForCausalLM", {}, _edit(rope_theta=5000.0, rope_parameters={"rope_type": "linear", "factor": 2.0},
                                                             partial_rotary_factor=0.5, num_key_value_heads=2, head_dim=8,
                                                             hidden_act="relu", rms_norm_eps=0.5),
                                _tensors(add=_causal_buffers("transformer.h.{i}.attn.bias", 64, masked="transformer.h.{i}.attn.masked_bias"))),
    # Falcon: Falcon-7B's layer (multi-query, parallel off one norm, old decoder) from FalconConfig's defaults; the sequential
    # layer with every head's own k/v; the new decoder with one norm; its width, activation and tied head where left out,
    # n_embed (older configs), the v4 rope keys and keys its code never reads
    "falcon-7b-defaults": ("FalconForCausalLM", dict(new_decoder_architecture=False, num_kv_heads=None),
                           _edit(("num_kv_heads", "multi_query", "parallel_attn", "new_decoder_architecture", "alibi"))),
    "falcon-sequential-multi-head": ("FalconForCausalLM", dict(new_decoder_architecture=False, parallel_attn=False, multi_query=False,
                                                               num_kv_heads=None), _edit()),
    "falcon-new-decoder-one-norm": ("FalconForCausalLM", dict(num_ln_in_parallel_attn=1), _edit()),
    "falcon-defaults-and-other-keys": ("FalconForCausalLM", dict(ffn_hidden_size=256, tie_word_embeddings=True), _edit(
        ("ffn_hidden_size", "activation", "tie_word_embeddings"), intermediate_size=32, hidden_act="relu", num_key_value_heads=1,
        attention_bias=False, mlp_bias=False, sliding_window=8, rms_norm_eps=0.5, layer_norm_eps=0.5, partial_rotary_factor=0.5)),
    "falcon-n-embed-v4-rope": ("FalconForCausalLM", {}, lambda raw: raw.update(
        n_embed=raw.pop("hidden_size"), rope_theta=raw.pop("rope_parameters")["rope_theta"] / 2, rope_scaling=None)),
    # BLOOM: n_embed (bigscience/bloom's spelling), its epsilon, tied head and residual where left out; an untied head;
    # keys its code never reads, and pretraining_tp's sliced output projections (the same sums)
    "bloom-n-embed-defaults": ("BloomForCausalLM", {}, lambda raw: [raw.pop(k) for k in (
        "layer_norm_epsilon", "tie_word_embeddings", "apply_residual_connection_post_layernorm")] + [raw.update(n_embed=raw.pop("hidden_size"))]),
    "bloom-untied": ("BloomForCausalLM", dict(tie_word_embeddings=False), _edit()),
    "bloom-ignores-other-keys": ("BloomForCausalLM", {}, _edit(intermediate_size=32, hidden_act="relu", num_key_value_heads=2, head_dim=4,
                                                               rope_theta=5000.0, max_position_embeddings=8, sliding_window=4, rms_norm_eps=0.5,
                                                               layer_norm_eps=0.5, attention_bias=False, mlp_bias=False, pretraining_tp=2,
                                                               offset_alibi=100, n_inner=None)),
    # MPT: attn_config left out (no clamp, 1/sqrt(head_dim)), its epsilon, tied head and flags where left out; mpt-7b's
    # config.json (every attn_config key, the training keys); keys its code never reads (OLMo's clip_qkv among them)
    "mpt-defaults": ("MptForCausalLM", {}, _edit(("attn_config", "layer_norm_epsilon", "tie_word_embeddings", "no_bias",
                                                  "expansion_ratio", "learned_pos_emb", "logit_scale"))),
    "mpt-7b-spelling": ("MptForCausalLM", {}, _edit(
        attn_config=dict(alibi=True, alibi_bias_max=8, attn_impl="torch", attn_pdrop=0, attn_type="multihead_attention",
                         attn_uses_sequence_id=False, clip_qkv=None, prefix_lm=False, qk_ln=False, softmax_scale=None),
        learned_pos_emb=True, logit_scale=None, no_bias=True, norm_type="low_precision_layernorm", init_device="cpu",
        embedding_fraction=1.0, emb_pdrop=0, resid_pdrop=0, verbose=0, use_cache=False, expansion_ratio=4)),
    "mpt-ignores-other-keys": ("MptForCausalLM", {}, _edit(intermediate_size=32, hidden_act="relu", num_key_value_heads=2, head_dim=4,
                                                           max_position_embeddings=8, clip_qkv=0.1, rope_theta=5000.0, sliding_window=4,
                                                           rms_norm_eps=0.5, layer_norm_eps=0.5, attention_bias=True, mlp_bias=True)),
    # OLMo: no clamp, no biases where left out (OLMo-7B-hf's form), the Hub's v4 rope keys; keys its code never reads
    "olmo-defaults-v4-rope": ("OlmoForCausalLM", dict(attention_bias=False), lambda raw: [raw.pop(k) for k in ("clip_qkv", "attention_bias")]
                              + [raw.update(rope_theta=raw.pop("rope_parameters")["rope_theta"] / 2, rope_scaling=None)]),
    "olmo-ignores-other-keys": ("OlmoForCausalLM", {}, _edit(mlp_bias=True, rms_norm_eps=0.5, layer_norm_eps=0.5, sliding_window=8,
                                                             partial_rotary_factor=0.5)),
    # OLMoE with clip_qkv: the clamp after the q/k norms
    "olmoe-clip-qkv": ("OlmoeForCausalLM", dict(clip_qkv=0.5), _edit()),
    # Nemotron: squared ReLU, half of each head rotated, no biases where left out; the v4 rope keys (partial_rotary_factor
    # and rope_theta top-level); heads wider than hidden / heads; keys its code never reads
    "nemotron-defaults": ("NemotronForCausalLM", dict(attention_bias=False, mlp_bias=False), lambda raw: [
        raw.pop(k) for k in ("hidden_act", "norm_eps", "attention_bias", "mlp_bias")] + [raw["rope_parameters"].pop("partial_rotary_factor")]),
    "nemotron-v4-rope-keys-head-dim": ("NemotronForCausalLM", dict(head_dim=32), lambda raw: raw.update(
        rope_theta=raw.pop("rope_parameters")["rope_theta"] / 2, partial_rotary_factor=0.25, rope_scaling=None)),
    "nemotron-ignores-other-keys": ("NemotronForCausalLM", {}, _edit(rms_norm_eps=0.5, layer_norm_eps=0.5, sliding_window=8,
                                                                     layer_types=["sliding_attention"] * 3)),
    # Helium: heads of 128 and 20 kv heads where left out; no biases and a 1e-8 epsilon where left out, the v4 rope keys;
    # keys its code never reads
    "helium-default-head-dim": ("HeliumForCausalLM", dict(hidden_size=256, num_attention_heads=2, num_key_value_heads=1, head_dim=128),
                                _edit(("head_dim",))),
    "helium-default-kv-heads": ("HeliumForCausalLM", dict(hidden_size=320, num_attention_heads=20, num_key_value_heads=20),
                                _edit(("num_key_value_heads",))),
    "helium-defaults-v4-rope": ("HeliumForCausalLM", dict(attention_bias=False, mlp_bias=False), lambda raw: [
        raw.pop(k) for k in ("attention_bias", "mlp_bias", "rms_norm_eps")] + [raw.update(
            rope_theta=raw.pop("rope_parameters")["rope_theta"] / 2, rope_scaling=None)]),
    "helium-ignores-other-keys": ("HeliumForCausalLM", {}, _edit(partial_rotary_factor=0.5, sliding_window=8, layer_norm_eps=0.5,
                                                                 attention_out_bias=True)),
    # GPT-Neo: 24 layers alternating global and local, a window of 256, gelu_new, a 4 x hidden_size MLP and a tied head where
    # left out; untied; window keys of other families and keys its code never reads; GPT-Neo 125M's mask buffers
    "gptneo-defaults": ("GPTNeoForCausalLM", dict(num_layers=24, attention_types=[[["global", "local"], 12]], intermediate_size=256),
                        _edit(("attention_types", "window_size", "activation_function", "intermediate_size", "tie_word_embeddings"))),
    "gptneo-untied-ignores-other-keys": ("GPTNeoForCausalLM", dict(tie_word_embeddings=False), _edit(
        sliding_window=4, layer_types=["full_attention"] * 3, use_sliding_window=True, head_dim=8, num_key_value_heads=2,
        hidden_act="relu", layer_norm_eps=0.5), _tensors(add=_causal_buffers("transformer.h.{i}.attn.attention.bias", 64,
                                                                           masked="transformer.h.{i}.attn.attention.masked_bias"))),
    # DeepSeek-V3: the Hub's v4 YaRN keys (rope_scaling with mscale and mscale_all_dim, which also scales the
    # softmax), past original_max_position_embeddings; a score bias that changes the choice; one q_proj with
    # rope on halves (rope_interleave false); DeepseekV3Config's routing where left out (8 groups, top 4, k 8)
    "deepseek-v3-hub-yarn": ("DeepseekV3ForCausalLM", dict(rope_parameters=dict(
        rope_type="yarn", factor=4.0, mscale=1.0, mscale_all_dim=0.8, original_max_position_embeddings=8, beta_fast=32,
        beta_slow=1, rope_theta=10000.0)), lambda raw: raw.update(
            rope_theta=raw["rope_parameters"].pop("rope_theta"), rope_scaling=dict(raw.pop("rope_parameters"), type="yarn"))),
    "deepseek-v3-score-bias": ("DeepseekV3ForCausalLM", {}, _edit(), _tensors(add=_score_biases("mlp.gate", (1, 2), 8))),
    # DeepSeek-V3's Hub files keep the multi-token-prediction layer as layer 61, which transformers does not read
    "deepseek-v3-mtp-layer": ("DeepseekV3ForCausalLM", {}, _edit(), _tensors(add=lambda tensors: {
        f"model.layers.61.{name}": tensors[f"model.layers.1.{name}"].clone() for name in ("input_layernorm.weight", "mlp.gate.weight")})),
    "deepseek-v3-q-proj-rope-halves": ("DeepseekV3ForCausalLM", dict(q_lora_rank=None, rope_interleave=False), _edit()),
    "deepseek-v3-default-routing": ("DeepseekV3ForCausalLM", dict(n_routed_experts=16), _edit((
        "n_group", "topk_group", "num_experts_per_tok", "routed_scaling_factor", "norm_topk_prob", "rope_interleave",
        "n_shared_experts"))),
    # DeepSeek-V3.2-Exp's Hub config.json: the v4 YaRN keys (mscale_all_dim scales the softmax), first_k_dense_replace
    # without mlp_layer_types, keys of DeepSeek's own code (topk_method, scoring_func, num_nextn_predict_layers), a
    # head_dim and layer_types DeepseekV32Config overrides; a score bias that changes the choice, the MTP layer 61 kept
    "deepseek-v32-hub-config": ("DeepseekV32ForCausalLM", dict(rope_parameters=dict(
        rope_type="yarn", factor=4.0, mscale=1.0, mscale_all_dim=0.8, original_max_position_embeddings=8, beta_fast=32,
        beta_slow=1, rope_theta=10000.0)), lambda raw: [raw.pop(k) for k in ("mlp_layer_types", "layer_types")] and raw.update(
            rope_theta=raw["rope_parameters"].pop("rope_theta"), rope_scaling=dict(raw.pop("rope_parameters"), type="yarn"),
            first_k_dense_replace=1, topk_method="noaux_tc", scoring_func="sigmoid", num_nextn_predict_layers=1, head_dim=32),
        _tensors(add=lambda tensors: dict(_score_biases("mlp.gate", (1, 2), 8)(tensors), **{
            f"model.layers.61.{name}": tensors[f"model.layers.1.{name}"].clone() for name in ("input_layernorm.weight", "mlp.gate.weight")}))),
    # GLM-5: its indexer types from index_topk_pattern (full, shared, shared, full), and from index_topk_freq /
    # index_skip_topk_offset (every second layer from the second shared) where neither that nor indexer_types is given
    "glm-moe-dsa-topk-pattern": ("GlmMoeDsaForCausalLM", dict(indexer_types=["full", "shared", "shared", "full"]),
                                 _edit(("indexer_types",), index_topk_pattern="FSSF")),
    "glm-moe-dsa-topk-freq": ("GlmMoeDsaForCausalLM", {}, _edit(("indexer_types",), index_topk_freq=2, index_skip_topk_offset=1)),
    # A.X-K2: experts in groups (n_group, topk_group: the larger releases') with a score bias that changes the choice; its
    # dense layers from first_k_dense_replace and moe_layer_freq (the legacy keys) where mlp_layer_types is left out
    "axk2-groups-legacy-layers": ("AXK2ForCausalLM", dict(n_group=4, topk_group=2, num_hidden_layers=4,
                                                          mlp_layer_types=["dense", "dense", "sparse", "dense"]),
                                  _edit(("mlp_layer_types",), first_k_dense_replace=2, moe_layer_freq=2),
                                  _tensors(add=_score_biases("mlp.gate", (2,), 8))),
    # DeepSeek-V2: greedy routing, no dense layer, two shared experts, unscaled weights and no MLP biases where
    # left out; queries through q_lora_rank; keys its code never reads (norm_topk_prob, rope_interleave), the
    # experts under num_experts (its attribute_map's spelling)
    "deepseek-v2-defaults": ("DeepseekV2ForCausalLM", dict(q_lora_rank=16, first_k_dense_replace=0, mlp_bias=False), lambda raw: [
        raw.pop(k) for k in ("topk_method", "n_group", "topk_group", "routed_scaling_factor", "n_shared_experts",
                             "first_k_dense_replace", "mlp_bias")] and raw.update(
            norm_topk_prob=True, rope_interleave=False, num_experts=raw.pop("n_routed_experts"))),
    # GLM-4-MoE: half of each head rotated, no q/k norms, no groups, unscaled and renormalised weights where left out;
    # the experts under num_local_experts; a score bias that changes the choice
    "glm4-moe-defaults": ("Glm4MoeForCausalLM", dict(use_qk_norm=False), lambda raw: [
        raw.pop(k) for k in ("use_qk_norm", "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob")] and [
            raw["rope_parameters"].pop("partial_rotary_factor", None), raw.pop("partial_rotary_factor", None),
            raw.update(num_local_experts=raw.pop("n_routed_experts"))]),
    "glm4-moe-score-bias": ("Glm4MoeForCausalLM", {}, _edit(), _tensors(add=_score_biases("mlp.gate", (1, 2), 8))),
    # MiniMax-M2's Hub config.json: rotary_dim for the rotated part (no partial_rotary_factor), a top-level rope_theta,
    # the experts under num_experts (its attribute_map's spelling), and the keys of MiniMax's own code at the values
    # transformers hard-wires; its shapes and token ids left to MiniMaxM2Config's defaults where the file omits them
    # GLM-4.7-Flash's Hub config.json: first_k_dense_replace (which transformers never reads) and no mlp_layer_types,
    # keys of its own code (topk_method, num_nextn_predict_layers), a top-level rope_theta and partial_rotary_factor 1;
    # its multi-token-prediction layer 47 kept in the checkpoint
    "glm4-moe-lite-hub-config": ("Glm4MoeLiteForCausalLM", dict(mlp_layer_types=["dense", "sparse", "sparse"]), _edit(
        ("mlp_layer_types", "rope_parameters"), first_k_dense_replace=1, topk_method="noaux_tc", num_nextn_predict_layers=1,
        rope_theta=5000.0, partial_rotary_factor=1.0, rope_scaling=None), _tensors(add=lambda tensors: {
            f"model.layers.47.{name}": tensors[f"model.layers.1.{name}"].clone() for name in ("input_layernorm.weight", "mlp.gate.weight")})),
    # head_dim names qk_rope_head_dim (Glm4MoeLiteConfig's attribute_map); routing, rope and shared experts left to its defaults
    "glm4-moe-lite-head-dim-spelling": ("Glm4MoeLiteForCausalLM", {}, lambda raw: raw.update(head_dim=raw.pop("qk_rope_head_dim"))),
    "glm4-moe-lite-defaults": ("Glm4MoeLiteForCausalLM", dict(n_routed_experts=4, num_experts_per_tok=4), _edit((
        "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "rope_interleave", "n_shared_experts",
        "num_experts_per_tok"))),
    "glm4-moe-lite-score-bias": ("Glm4MoeLiteForCausalLM", {}, _edit(), _tensors(add=_score_biases("mlp.gate", (1,), 8))),
    # CWM: CwmConfig's pattern (every 4th layer full from the first) and window where left out, its Llama 3 rope where
    # no rope settings are given (a top-level rope_theta then unread); the v4 spelling of its rope
    "cwm-default-layers-and-rope": ("CwmForCausalLM", {}, _edit(("layer_types", "sliding_window", "rope_parameters"),
                                                                rope_theta=5000.0, attention_bias=True)),
    "cwm-v4-rope": ("CwmForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw["rope_parameters"].pop("rope_theta"), rope_scaling=raw.pop("rope_parameters"))),
    "cwm-window-on-layers-it-names": ("CwmForCausalLM", dict(layer_types=["sliding_attention", "full_attention", "sliding_attention"]),
                                      _edit()),
    # NanoChat: soft-capping at 15, squared ReLU, no biases and a kv head per head where left out; soft-capping off (null)
    "nanochat-defaults": ("NanoChatForCausalLM", dict(num_key_value_heads=4, attention_bias=False), _edit((
        "final_logit_softcapping", "hidden_act", "attention_bias", "num_key_value_heads"))),
    "nanochat-no-softcap": ("NanoChatForCausalLM", dict(final_logit_softcapping=None), _edit()),
    # EXAONE 3.5's Hub config.json: ExaoneConfig's aliases (num_layers, layer_norm_epsilon, activation_function) and a v4
    # llama3 rope; its shapes and rope base left to the class's defaults where the file omits them
    "exaone3-hub-config": ("ExaoneForCausalLM", dict(rope_parameters=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                                                          high_freq_factor=4.0, original_max_position_embeddings=16,
                                                                          rope_theta=10000.0)), lambda raw: raw.update(
        num_layers=raw.pop("num_hidden_layers"), layer_norm_epsilon=raw.pop("rms_norm_eps"), activation_function=raw.pop("hidden_act"),
        rope_theta=raw["rope_parameters"].pop("rope_theta"), rope_scaling=raw.pop("rope_parameters"))),
    "exaone3-aliases-win": ("ExaoneForCausalLM", dict(num_hidden_layers=2), lambda raw: raw.update(
        num_layers=2, num_hidden_layers=3, layer_norm_epsilon=1e-2, activation_function="gelu")),
    "exaone3-defaults": ("ExaoneForCausalLM", dict(num_key_value_heads=8, num_attention_heads=8), _edit((
        "num_key_value_heads", "rope_parameters", "rms_norm_eps"))),
    # Solar Open: GLM-4-MoE's keys its code never reads (a dense width, first_k_dense_replace, use_qk_norm), a whole-head
    # partial_rotary_factor, the experts under num_local_experts; routing and shared experts left to its defaults
    "solar-open-ignored-keys": ("SolarOpenForCausalLM", {}, lambda raw: raw.update(
        intermediate_size=96, first_k_dense_replace=1, use_qk_norm=True, partial_rotary_factor=1.0, num_local_experts=raw.pop("n_routed_experts"))),
    "solar-open-defaults": ("SolarOpenForCausalLM", dict(num_experts_per_tok=8, attention_bias=False), _edit((
        "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "n_shared_experts", "num_experts_per_tok",
        "attention_bias", "rope_parameters"))),
    # Youtu: interleaved rope and tied embeddings where left out, DeepSeek-V3's expert keys its config class drops (its
    # code reads none), head_dim left out; rope on halves; one q_proj (q_lora_rank null). No pad_token_id: transformers'
    # Youtu zeroes the padding row of the embeddings it loads (its _init_weights writes through .data, past the
    # loaded-weight guard), so a reloaded reference would not be the saved model
    "youtu-defaults-and-unread-keys": ("YoutuForCausalLM", dict(pad_token_id=None), _edit((
        "rope_interleave", "tie_word_embeddings", "head_dim"), n_routed_experts=8, num_experts_per_tok=2, first_k_dense_replace=1)),
    "youtu-rope-halves-one-q-proj": ("YoutuForCausalLM", dict(rope_interleave=False, q_lora_rank=None, pad_token_id=None), _edit()),
    # K-EXAONE: the layers' attention from sliding_window_pattern and the dense ones from first_k_dense_replace where their
    # lists are left out; its multi-token-prediction module (mtp.*) in the checkpoint; a score bias that changes the choice
    "exaone-moe-layer-defaults-and-mtp": ("ExaoneMoeForCausalLM", dict(mlp_layer_types=["dense", "dense", "sparse"],
                                                                        first_k_dense_replace=2),
                                          _edit(("layer_types", "mlp_layer_types")), _tensors(add=lambda tensors: {
                                              "mtp.layers.0.input_layernorm.weight": tensors["model.norm.weight"].clone()})),
    "exaone-moe-routing-defaults": ("ExaoneMoeForCausalLM", dict(num_experts_per_tok=8), _edit((
        "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "num_shared_experts", "num_experts_per_tok"))),
    "exaone-moe-score-bias": ("ExaoneMoeForCausalLM", {}, _edit(), _tensors(add=_score_biases("mlp", (1, 2), 8))),
    # MiniCPM3-4B's Hub config.json: a v4 longrope rope_scaling (short and long factors, no factor: 1) with a top-level
    # rope_theta, two EOS ids, no v_head_dim (hidden / heads) nor head_dim; its scales and shapes left to the class's
    # defaults where left out, and null scale_depth / dim_model_base (no-op scales)
    "minicpm3-hub-longrope": ("MiniCPM3ForCausalLM", dict(v_head_dim=16), lambda raw: [raw.pop(k) for k in (
        "v_head_dim", "head_dim", "rope_parameters")] and raw.update(rope_theta=10000.0, eos_token_id=[2, 3], rope_scaling=dict(
            type="longrope", original_max_position_embeddings=256, short_factor=[1.0, 1.1, 1.3, 1.5],
            long_factor=[2.0, 3.0, 4.0, 5.0]))),
    "minicpm3-defaults": ("MiniCPM3ForCausalLM", dict(scale_emb=12, scale_depth=1.4, dim_model_base=256, hidden_size=64,
                                                       num_key_value_heads=4), _edit(("scale_emb", "scale_depth", "dim_model_base",
                                                                                      "tie_word_embeddings"))),
    "minicpm3-null-scales": ("MiniCPM3ForCausalLM", dict(scale_depth=None, dim_model_base=None), _edit()),
    "minimax-m2-hub-config": ("MiniMaxM2ForCausalLM", {}, _edit(
        ("rope_parameters", "num_local_experts"), rope_theta=5000.0, num_experts=6, use_qk_norm=True, qk_norm_type="per_layer",
        scoring_func="sigmoid", use_routing_bias=True, shared_intermediate_size=0, attn_type_list=[1, 1, 1],
        rope_scaling=None)),
    "minimax-m2-default-head-dim": ("MiniMaxM2ForCausalLM", dict(head_dim=128, rotary_dim=64), _edit(("head_dim",))),
    "minimax-m2-factor-beside-rotary-dim": ("MiniMaxM2ForCausalLM", {}, lambda raw: raw.update(rotary_dim=4)),
    "minimax-m2-score-bias": ("MiniMaxM2ForCausalLM", {}, _edit(), _tensors(add=_score_biases("block_sparse_moe", (0, 1, 2), 6))),
    # HY V3: the experts under num_local_experts (its attribute_map alias, which wins over num_experts), a top-level
    # rope_theta, keys of other families it never reads (first_k_dense_replace, sliding_window); routing, shared experts,
    # head_dim and mlp_layer_types (the first layer dense) left to HYV3Config's defaults where left out; its
    # multi-token-prediction layer 80 kept in the checkpoint
    "hy-v3-hub-config": ("HYV3ForCausalLM", dict(head_dim=128, num_experts_per_tok=8, num_experts=8), _edit(
        ("rope_parameters", "head_dim", "num_experts_per_tok", "num_shared_experts", "router_scaling_factor", "mlp_layer_types",
         "enable_moe_fp32_combine"), num_local_experts=8, num_experts=4, rope_theta=5000.0, first_k_dense_replace=2,
        sliding_window=4), _tensors(add=lambda tensors: {
            f"model.layers.80.{name}": tensors[f"model.layers.1.{name}"].clone() for name in ("input_layernorm.weight",)})),
    "hy-v3-score-bias": ("HYV3ForCausalLM", {}, _edit(), _tensors(add=lambda tensors: {
        k.replace("e_score_correction_bias", "expert_bias"): v for k, v in _score_biases("mlp", (1, 2), 6)(tensors).items()})),
    # num_shared_experts 0: a shared MLP intermediate_size wide (HYV3MLP takes it for a width of 0)
    "hy-v3-no-shared-experts": ("HYV3ForCausalLM", dict(num_shared_experts=0, enable_moe_fp32_combine=False), _edit()),
    # MiMo-V2-Flash: sliding_window_size (one short of transformers' window), the experts under num_local_experts (its
    # attribute_map alias), a null routed_scaling_factor (1) and attention_value_scale (1), keys of GLM-4-MoE's config it
    # never reads (first_k_dense_replace, n_shared_experts, a top-level rope_theta); its layer pattern, per-layer-type rope
    # and dense layers left to MiMoV2FlashConfig's defaults; its multi-token-prediction module kept in the checkpoint
    "mimo-v2-flash-hub-config": ("MiMoV2FlashForCausalLM", {}, _edit(
        ("layer_types", "rope_parameters", "mlp_layer_types", "sliding_window", "n_routed_experts"), sliding_window_size=7,
        num_local_experts=8, routed_scaling_factor=None, attention_value_scale=None, first_k_dense_replace=2, n_shared_experts=1,
        rope_theta=100.0), _tensors(add=lambda tensors: {"model.mtp.layers.0.input_layernorm.weight": tensors["model.norm.weight"].clone()})),
    "mimo-v2-flash-routing-defaults": ("MiMoV2FlashForCausalLM", dict(num_experts_per_tok=8, n_group=1, topk_group=1), _edit((
        "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "num_experts_per_tok"))),
    "mimo-v2-flash-score-bias": ("MiMoV2FlashForCausalLM", {}, _edit(), _tensors(add=_score_biases("mlp.gate", (1, 2), 8))),
    # AFMoE: layer_types from global_attn_every_n_layers, a kv head per head, one dense layer, two shared experts,
    # unscaled weights and unscaled embeddings where left out; a score bias (expert_bias) that changes the choice;
    # no shared experts (num_shared_experts 0: none in the checkpoint either)
    "afmoe-defaults": ("AfmoeForCausalLM", dict(num_key_value_heads=4, mup_enabled=False, num_shared_experts=2, route_scale=1.0), _edit((
        "layer_types", "num_key_value_heads", "num_dense_layers", "route_scale", "num_shared_experts", "mup_enabled"))),
    "afmoe-score-bias": ("AfmoeForCausalLM", {}, _edit(), _tensors(add=lambda tensors: {
        k.replace("e_score_correction_bias", "expert_bias"): v for k, v in _score_biases("mlp", (1, 2), 6)(tensors).items()})),
    "afmoe-no-shared-experts": ("AfmoeForCausalLM", dict(num_shared_experts=0), _edit()),
    # Laguna: every layer full (whatever sliding_window says), the first dense, num_attention_heads everywhere, a gate per
    # head, no soft-capping or scaling and LagunaConfig's rope per layer type where left out; a gate per head and dim
    # (gating "per-element", and false: transformers' reading of anything but true and "per-head"); a score bias that
    # changes the choice
    "laguna-defaults": ("LagunaForCausalLM", dict(num_attention_heads_per_layer=None), _edit((
        "layer_types", "mlp_layer_types", "num_attention_heads_per_layer", "gating", "moe_router_logit_softcapping",
        "moe_routed_scaling_factor", "rope_parameters"))),
    "laguna-gate-per-element": ("LagunaForCausalLM", dict(gating="per-element"), _edit()),
    "laguna-gate-false": ("LagunaForCausalLM", dict(gating=False), _edit()),
    "laguna-score-bias": ("LagunaForCausalLM", {}, _edit(), _tensors(add=lambda tensors: {
        k.replace("mlp.e_score", "mlp.experts.e_score"): v for k, v in _score_biases("mlp", (1, 2), 6)(tensors).items()})),
    # A.X-K1: the dense layers from first_k_dense_replace where mlp_layer_types is left out; its Hub tensors
    "axk1-as-hub-holds-it": ("AXK1ForCausalLM", {}, _edit(("mlp_layer_types",), first_k_dense_replace=1), _axk1_as_hub_holds_it),
    # Flint: full attention (without rotary positions) on the first two layers, every fourth from layer 1 and the last where
    # layer_types is left out; the first two layers dense where mlp_only_layers is
    "flint-defaults": ("FlintForCausalLM", dict(num_hidden_layers=6, layer_types=None, mlp_only_layers=None), _edit((
        "layer_types", "mlp_only_layers"))),
    # Kolibri-1: every 5th layer full (without rotary positions) where layer_types is left out, top-k weights not
    # renormalised by default, the experts under num_experts (num_local_experts' alias); its router's score bias
    # (saved as zeros) chooses the experts, not weighs them
    "kolibri1-defaults": ("Kolibri1ForCausalLM", dict(num_hidden_layers=5, layer_types=None, norm_topk_prob=False), _edit((
        "layer_types", "norm_topk_prob", "num_local_experts"), num_experts=6)),
    "kolibri1-score-bias": ("Kolibri1ForCausalLM", {}, _edit(), _tensors(add=lambda tensors: {
        k.replace("mlp.e_score_correction_bias", "moe.router.expert_bias"): v for k, v in _score_biases("mlp", (0, 1, 2), 6)(tensors).items()})),
    # Kolibri 1.1: every 5th layer indexed (layers 4 and 9), the first two dense, layer 4 choosing the pool and layer 9
    # reading its keys and values where layer_types, mlp_only_layers, index_layers and kv_source_layers are left out; the
    # experts under num_experts (num_local_experts' alias); its router's score bias under Kolibri's name, choosing experts
    "kolibri1_1-defaults": ("Kolibri1_1ForCausalLM", dict(num_hidden_layers=10, layer_types=None, mlp_only_layers=None, index_layers=None,
                                                         kv_source_layers=None), _edit((
        "layer_types", "mlp_only_layers", "index_layers", "kv_source_layers", "num_local_experts"), num_experts=6)),
    "kolibri1_1-score-bias": ("Kolibri1_1ForCausalLM", {}, _edit(), _tensors(add=lambda tensors: {
        k.replace("mlp.e_score_correction_bias", "moe.router.expert_bias"): v for k, v in _score_biases("mlp", (0, 2, 3), 6)(tensors).items()})),
    # Mellum: every layer full and routed, MellumConfig's rope per layer type where left out; the experts under
    # num_local_experts (its attribute_map alias); its multi-token-prediction module kept in the checkpoint
    "mellum-defaults": ("MellumForCausalLM", dict(mlp_layer_types=None), _edit(("layer_types", "mlp_layer_types", "rope_parameters", "num_experts"),
                                                       num_local_experts=6, num_mtp_layers=1), _tensors(add=lambda tensors: {
        "mtp.layers.0.input_layernorm.weight": tensors["model.norm.weight"].clone()})),
    # JetMoE: head_dim for kv_channels (its attribute_map's alias), a num_attention_heads it replaces by num_key_value_heads x
    # num_experts_per_tok, tied embeddings and silu where left out
    "jetmoe-defaults": ("JetMoeForCausalLM", dict(tie_word_embeddings=True), lambda raw: [raw.pop(k) for k in (
        "tie_word_embeddings", "activation_function")] and raw.update(head_dim=raw.pop("kv_channels"), num_attention_heads=3)),
    # dots.llm1: the window on the layers from max_window_layers on where layer_types is left out (none without a
    # sliding_window); no groups, unscaled weights not renormalised where left out; Qwen's window switch it never reads
    "dots1-window-layers-defaults": ("Dots1ForCausalLM", {}, _edit(("layer_types", "n_group", "topk_group", "routed_scaling_factor",
                                                                    "norm_topk_prob"), use_sliding_window=False)),
    "dots1-no-window": ("Dots1ForCausalLM", {}, _edit(("layer_types",), sliding_window=None)),
    # Ministral 3: Ministral3Config's rope where none is given (YaRN x16 from 16,384 at base 1,000,000, a
    # top-level rope_theta unread), heads of 128 and 8 kv heads; the v4 keys (rope_scaling and rope_theta);
    # a top-level original_max_position_embeddings, which replaces the YaRN settings' own (the query
    # scaling's too); keys its code never reads (its window is every layer's)
    "ministral3-defaults": ("Ministral3ForCausalLM", dict(head_dim=128, num_attention_heads=8, num_key_value_heads=8),
                            _edit(("head_dim", "num_key_value_heads", "rope_parameters"), rope_theta=5000.0)),
    "ministral3-v4-rope-keys": ("Ministral3ForCausalLM", {}, lambda raw: raw.update(
        rope_theta=raw["rope_parameters"].pop("rope_theta") / 2, rope_scaling=dict(raw.pop("rope_parameters"), llama_4_scaling_beta=0.3))),
    "ministral3-top-level-original-length": ("Ministral3ForCausalLM", {}, _edit(original_max_position_embeddings=6)),
    "ministral3-ignores-other-keys": ("Ministral3ForCausalLM", {}, _edit(layer_types=["full_attention"] * 3, use_sliding_window=False,
                                                                         attention_bias=True, mlp_bias=True)),
    # HunYuan: the Hub's v4 rope keys (dynamic with an NTK alpha, YaRN's keys beside it, a top-level rope_theta);
    # HunYuanDenseV1Config's defaults where left out (a plain rope of base 10,000, no attention biases); the
    # MoE's one expert, top 1; num_experts_per_tok for moe_topk (its attribute_map) and Hub keys its code never reads
    "hunyuan-dense-v4-rope-keys": ("HunYuanDenseV1ForCausalLM", {}, _edit(("rope_parameters",), rope_theta=5000.0, rope_scaling={
        "type": "dynamic", "alpha": 100.0, "factor": 1.0, "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0})),
    "hunyuan-dense-defaults": ("HunYuanDenseV1ForCausalLM", dict(attention_bias=False),
                               _edit(("rope_parameters", "attention_bias", "rms_norm_eps"))),
    "hunyuan-dense-plain-dynamic": ("HunYuanDenseV1ForCausalLM", dict(max_position_embeddings=12), _edit(
        rope_parameters={"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0})),
    "hunyuan-moe-defaults": ("HunYuanMoEV1ForCausalLM", dict(num_experts=1, moe_topk=1), _edit(("num_experts", "moe_topk"))),
    "hunyuan-moe-hub-keys": ("HunYuanMoEV1ForCausalLM", {}, lambda raw: raw.update(
        num_experts_per_tok=raw.pop("moe_topk")[0], use_qk_norm=True, use_mixed_mlp_moe=True, num_shared_expert=[1, 1, 1],
        mlp_bias=True, sliding_window=4)),
    # ERNIE 4.5 MoE: Ernie4_5_MoeConfig's defaults where left out (tied, 4 kv heads, a rope base of 500,000, two
    # shared experts, experts from layer 1 on in every layer; 64 experts, top 6); num_experts and num_experts_per_tok
    # (its attribute_map); experts on the layers start..end index names; a moe_norm_min above the top-k sums; keys
    # its code never reads
    "ernie-moe-defaults": ("Ernie4_5_MoeForCausalLM", dict(tie_word_embeddings=True, num_key_value_heads=4, moe_num_shared_experts=2),
                           _edit(("tie_word_embeddings", "num_key_value_heads", "rope_parameters", "moe_num_shared_experts",
                                  "moe_layer_start_index", "moe_layer_end_index", "moe_layer_interval", "moe_norm_min"))),
    "ernie-moe-default-experts": ("Ernie4_5_MoeForCausalLM", dict(moe_num_experts=64, moe_k=6), _edit(("moe_num_experts", "moe_k"))),
    "ernie-moe-spellings": ("Ernie4_5_MoeForCausalLM", {}, lambda raw: raw.update(num_experts=raw.pop("moe_num_experts"),
                                                                                  num_experts_per_tok=raw.pop("moe_k"))),
    "ernie-moe-layer-placement": ("Ernie4_5_MoeForCausalLM", dict(moe_layer_start_index=0, moe_layer_end_index=1), _edit()),
    "ernie-moe-every-second-layer": ("Ernie4_5_MoeForCausalLM", dict(moe_layer_start_index=0, moe_layer_interval=2), _edit()),
    "ernie-moe-norm-min": ("Ernie4_5_MoeForCausalLM", dict(moe_norm_min=0.9), _edit()),
    "ernie-moe-ignores-other-keys": ("Ernie4_5_MoeForCausalLM", {}, _edit(attention_bias=False, mlp_bias=False, sliding_window=8,
                                                                          norm_topk_prob=False, partial_rotary_factor=0.5)),
    # FlexOlmo: FlexOlmoConfig's routing where left out (7 experts, top 5, not renormalised); Mixtral's spelling of
    # the expert count (its attribute_map); keys its code never reads (its mask has no window)
    "flex-olmo-default-routing": ("FlexOlmoForCausalLM", dict(num_experts=7, num_experts_per_tok=5, norm_topk_prob=False),
                                  _edit(("num_experts", "num_experts_per_tok", "norm_topk_prob"))),
    "flex-olmo-num-local-experts-spelling": ("FlexOlmoForCausalLM", {}, lambda raw: raw.update(num_local_experts=raw.pop("num_experts"))),
    "flex-olmo-ignores-other-keys": ("FlexOlmoForCausalLM", {}, _edit(sliding_window=4, layer_types=["sliding_attention"] * 3,
                                                                      mlp_bias=True, partial_rotary_factor=0.5)),
    # Llama 4: NoPE, chunked and MoE layers derived from no_rope_layer_interval and interleave_moe_layer_step where
    # config.json lists none (an empty no_rope_layers as well); Llama4TextConfig's defaults where left out (a rope
    # base of 500,000, chunks of 8,192, q/k norms and temperature tuning on); each switched off; the Hub's v4 llama3
    # rope keys; keys its code never reads
    "llama4-derived-layers": ("Llama4ForCausalLM", {}, _edit(("layer_types", "moe_layers", "no_rope_layers"), no_rope_layer_interval=3)),
    "llama4-empty-no-rope-layers": ("Llama4ForCausalLM", {}, _edit(("layer_types",), no_rope_layers=[], no_rope_layer_interval=2)),
    "llama4-defaults": ("Llama4ForCausalLM", dict(floor_scale=8192, attention_chunk_size=8192), _edit((
        "floor_scale", "attn_scale", "attention_chunk_size", "layer_types", "use_qk_norm", "attn_temperature_tuning", "rope_parameters"))),
    "llama4-switches-off": ("Llama4ForCausalLM", dict(use_qk_norm=False, attn_temperature_tuning=False, attention_chunk_size=None), _edit()),
    "llama4-v4-rope-keys": ("Llama4ForCausalLM", {}, _edit(("rope_parameters",), rope_theta=5000.0, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "llama4-ignores-other-keys": ("Llama4ForCausalLM", {}, _edit(sliding_window=4, use_sliding_window=True, mlp_bias=True,
                                                                 router_jitter_noise=0.5, partial_rotary_factor=0.5)),
    # Gemma 4 as the Hub's files spell it: global_head_dim / num_global_key_value_heads (no
    # per_layer_config), keys at Gemma4TextConfig's defaults left out, "vision" bidirectional
    # attention (text stays causal), and the k/v projections of the shared-kv layers kept
    "gemma4-hub-spelling": ("Gemma4ForCausalLM", {}, _gemma4_as_hub_spells_it, _tensors(add=_gemma4_shared_kv_tensors)),
    # values of their own on full layers (k_eq_v off: their kv heads stay num_key_value_heads), no
    # per-layer embeddings, no experts (nulls as transformers saves them), no soft cap; no kv sharing,
    # which transformers' forward cannot run without per-layer embeddings (it slices their None)
    "gemma4-dense-without-ple": ("Gemma4ForCausalLM", dict(attention_k_eq_v=False, hidden_size_per_layer_input=0, num_kv_shared_layers=0,
                                                          enable_moe_block=False, num_experts=None, top_k_experts=None,
                                                          moe_intermediate_size=None, final_logit_softcapping=None), _edit()),
    # Gemma4TextConfig's layer pattern (every 6th full, the last forced full) and default ropes
    # (proportional 0.25 at 1e6 on full layers) where left out
    "gemma4-default-layers-and-rope": ("Gemma4ForCausalLM", dict(num_hidden_layers=7, num_kv_shared_layers=1, layer_types=None,
                                                                rope_parameters=None),
                                       _edit(("layer_types", "rope_parameters"))),
    # Gemma 3n with one MLP width, AltUp computing on its last stream without the correction's scale, no per-layer
    # embeddings (transformers builds them empty), no kv sharing; Gemma3nTextConfig's layer pattern (every 5th full) and
    # dense gates where left out; the rope in v4 keys
    "gemma3n-one-width-last-stream-without-ple": (
        "Gemma3nForCausalLM", dict(intermediate_size=80, altup_active_idx=2, altup_correct_scale=False, hidden_size_per_layer_input=0,
                                   num_kv_shared_layers=0),
        _edit(("activation_sparsity_pattern", "layer_types", "rope_parameters"), rope_theta=50000.0, rope_local_base_freq=5000.0,
              rope_scaling=None)),
    # Qwen3-Next / Qwen3.5: layer types from full_attention_interval (or its default, every 4th layer full) where
    # config.json lists none; the rope as top-level keys, or left out (theta 10,000, a quarter of each head turned)
    "qwen3-next-interval-and-flat-rope": ("Qwen3NextForCausalLM", {}, _edit(("layer_types", "rope_parameters"),
                                                                             full_attention_interval=2, rope_theta=5000.0,
                                                                             partial_rotary_factor=0.5)),
    "qwen3_5-default-layers-and-rope": ("Qwen3_5ForCausalLM", dict(layer_types=["linear_attention"] * 3 + ["full_attention"]),
                                        _edit(("layer_types", "rope_parameters"))),
    # Qwen3.5-MoE: the layer types left out (every 4th full), and the Qwen3-Next keys its config class dropped, which
    # its modeling never reads (top k always renormalised, every layer routed, no dense width)
    "qwen3_5_moe-default-layers-and-dropped-keys": ("Qwen3_5MoeForCausalLM",
                                                    dict(layer_types=["linear_attention"] * 3 + ["full_attention"]),
                                                    _edit(("layer_types",), norm_topk_prob=False, mlp_only_layers=[1],
                                                          decoder_sparse_step=2, intermediate_size=96)),
    # OLMo Hybrid as allenai's files spell it: no rope (rope_theta null), the layer types and the linear heads' sizes
    # left to OlmoHybridConfig (every fourth layer full; heads as attention's, key dim 0.75 hidden / heads, value dim 2x)
    "olmo_hybrid-nope-default-layers-and-heads": ("OlmoHybridForCausalLM", dict(
        layer_types=["linear_attention"] * 3 + ["full_attention"], linear_num_key_heads=None, linear_num_value_heads=None,
        linear_key_head_dim=None, linear_value_head_dim=None), _edit(("layer_types", "rope_parameters", "linear_num_key_heads",
                                                                      "linear_num_value_heads", "linear_key_head_dim",
                                                                      "linear_value_head_dim"), rope_theta=None)),
    "olmo_hybrid-hub-conv-sizes-and-norm-names": ("OlmoHybridForCausalLM", dict(linear_allow_neg_eigval=False), _edit(),
                                                  _olmo_hybrid_as_hub_holds_it),
    # LaraMini: the period-5 layer pattern where layer_types is left out (layer 5 linear again), its head untied, the top k
    # not renormalised; the Qwen3-Next keys its config class dropped and Qwen's window switch, which its modeling never reads
    "lara_mini-default-layers-and-dropped-keys": ("LaraMiniForCausalLM", dict(num_hidden_layers=6, tie_word_embeddings=False,
                                                                             norm_topk_prob=False),
                                                  _edit(("layer_types",), intermediate_size=96, mlp_only_layers=[1],
                                                        decoder_sparse_step=2, use_sliding_window=False)),
    # Zaya: every layer full ("hybrid") and ZayaConfig's rope per layer type where left out, no biases, the head tied;
    # ZAYA1-8B's stray rope_type beside the types
    "zaya-defaults": ("ZayaForCausalLM", dict(attention_bias=False, tie_word_embeddings=True, lm_head_bias=False),
                      _edit(("layer_types", "rope_parameters", "sliding_window"))),
    "zaya-hub-rope": ("ZayaForCausalLM", {}, lambda raw: raw["rope_parameters"].update(rope_type="default")),
    # its experts fused, as transformers' Qwen3_5MoeExperts holds them (gate_up_proj [X, 2F, hidden], down_proj)
    "qwen3_5_moe-fused-experts": ("Qwen3_5MoeForCausalLM", {}, _edit(), _fuse),
    # LFM2 as LiquidAI/LFM2-1.2B's files spell it (transformers 4.54's keys): the attention layers by full_attn_idxs, the
    # older tie_embedding and block_ff_dim (winning over tie_word_embeddings and intermediate_size), a flat rope_theta
    "lfm2-attention-indices-and-older-keys": ("Lfm2ForCausalLM", {}, _edit(("layer_types", "rope_parameters"), full_attn_idxs=[1],
                                                                          tie_embedding=False, tie_word_embeddings=True,
                                                                          block_ff_dim=96, intermediate_size=640, rope_theta=5000.0)),
    # LFM3 with Lfm3Config's defaults: layer types (5 layers: conv, conv, full, conv, sliding), the per-type rope (a flat
    # rope_theta unread), the window, sandwich norms and the head gate; rms_norm_eps, its alias of norm_eps, winning
    "lfm3-default-layers-rope-and-flags": ("Lfm3ForCausalLM", dict(num_hidden_layers=5, sliding_window=256, norm_eps=1e-3,
                                                                  layer_types=["conv", "conv", "full_attention", "conv",
                                                                               "sliding_attention"], rope_parameters=None),
                                           _edit(("layer_types", "rope_parameters", "sliding_window", "use_sandwich_norm",
                                                  "use_attention_gate"), rope_theta=5000.0, rms_norm_eps=1e-3, norm_eps=1e-5)),
    # LFM3 without its sandwich norms and head gate (LFM2's layer), with q/k/v/o biases
    "lfm3-no-sandwich-no-gate-biases": ("Lfm3ForCausalLM", dict(use_sandwich_norm=False, use_attention_gate=False,
                                                               attention_bias=True), _edit()),
    # MiniMax-Text-01 with MiniMaxConfig's defaults (layers alternating from a full one, residual factors 1, blocks of 256,
    # no window, rope base 1e6), its experts under num_experts (the alias), keys only MiniMax's own code reads
    "minimax-defaults-and-aliases": ("MiniMaxForCausalLM", dict(sliding_window=None, block_size=256, rope_theta=1_000_000.0,
                                                               **{f"{p}_{ab}_factor": 1 for p in ("full_attn", "linear_attn", "mlp")
                                                                  for ab in ("alpha", "beta")}),
                                     _edit(("layer_types", "sliding_window", "block_size", "rope_parameters", "num_local_experts")
                                           + tuple(f"{p}_{ab}_factor" for p in ("full_attn", "linear_attn", "mlp") for ab in ("alpha", "beta")),
                                           num_experts=4, rotary_dim=8, attn_type_list=[1, 0, 1, 0], postnorm=True)),
    # LFM2's MLP width adjustment and rope left to Lfm2Config's defaults (2/3 of 384 to a multiple of 256; theta 1e6)
    "lfm2-default-width-and-rope": ("Lfm2ForCausalLM", dict(intermediate_size=384, block_multiple_of=256, block_ffn_dim_multiplier=1.0),
                                    _edit(("block_multiple_of", "block_ffn_dim_multiplier", "block_auto_adjust_ff_dim",
                                           "rope_parameters", "norm_eps"))),
    # LFM2-MoE: tie_embedding, a flat rope_theta, the routing keys left to Lfm2MoeConfig's defaults (expert bias on,
    # renormalised, scaling 1) and an LFM2 block_ff_dim its config class never reads
    "lfm2_moe-older-keys-and-default-routing": ("Lfm2MoeForCausalLM", {}, _edit(
        ("rope_parameters", "tie_word_embeddings", "use_expert_bias", "norm_topk_prob", "routed_scaling_factor"),
        tie_embedding=False, rope_theta=5000.0, block_ff_dim=640)),
    # Granite 4.0-H as ibm-granite/granite-4.0-h-*'s files spell it: layers_block_type of mamba / attention, no rotary
    # positions ("nope"), a numeric mamba_d_head, time_step_limit holding Infinity
    "granitemoehybrid-hub-spelling": ("GraniteMoeHybridForCausalLM", {}, _edit(("layer_types", "rope_parameters"),
                                                                              layers_block_type=["mamba", "attention", "mamba"],
                                                                              position_embedding_type="nope", mamba_d_head=16,
                                                                              rope_theta=10000.0, time_step_limit=[0.0, float("inf")])),
    # Granite 4.0-H without experts (granite-4.0-h-micro): the shared MLP alone
    "granitemoehybrid-dense": ("GraniteMoeHybridForCausalLM", dict(num_local_experts=0), _edit()),
    # Bamba: BambaConfig's rotary half of each head whatever a top-level partial_rotary_factor says (flat rope keys, as
    # ibm-ai-platform/Bamba-9B's files spell them); a factor of the rope settings' own wins
    "bamba-flat-rope-half-rotary": ("BambaForCausalLM", {}, _edit(("rope_parameters",), rope_theta=5000.0,
                                                                  partial_rotary_factor=0.25)),
    "bamba-own-rope-factor": ("BambaForCausalLM", {}, _edit(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                             "partial_rotary_factor": 1.0})),
    # Nemotron-H as nvidia/Nemotron-H-*'s and NVIDIA-Nemotron-*'s files spell it: hybrid_override_pattern (a
    # num_hidden_layers it ignores), the older mamba_* spellings, a tied flag NemotronHForCausalLM never applies; a list of
    # the legacy block names with a stray rope and hidden_act
    "nemotron_h-hub-pattern-and-older-keys": ("NemotronHForCausalLM", {}, _edit(
        ("layers_block_type", "n_groups", "conv_kernel", "use_conv_bias", "time_step_min"), hybrid_override_pattern="ME*M-",
        num_hidden_layers=52, mamba_n_groups=2, mamba_d_conv=4, mamba_conv_bias=True, mamba_dt_min=0.01,
        tie_word_embeddings=True, time_step_limit=[0.0, float("inf")])),
    "nemotron_h-legacy-block-names": ("NemotronHForCausalLM", {}, _edit(
        layers_block_type=["mamba", "moe", "attention", "mamba", "mlp"], rope_theta=5000.0, hidden_act="gelu")),
    # Nemotron 3 Super's latent experts (moe_latent_size), the router's score bias, tensors named model.* as transformers'
    # classes name them
    "nemotron_h-latent-experts-model-prefix": ("NemotronHForCausalLM", dict(moe_latent_size=24), _edit(), _tensors(
        rename=lambda n: n.replace("backbone.", "model."), add=_score_biases("mixer.gate", [1], 4))),
    # Falcon-H1 as tiiuae/Falcon-H1-*'s files spell it: a flat rope_theta, head_dim and a numeric mamba_d_head given,
    # time_step_limit holding Infinity, keys its code never reads; the muP multipliers left out (1.0 each); the mixer's
    # output gated without a norm, or gated before its norm
    "falcon_h1-hub-keys": ("FalconH1ForCausalLM", {}, _edit(("rope_parameters",), rope_theta=1e11, head_dim=16, mamba_d_head=16,
                                                           time_step_limit=[0.0, float("inf")], mamba_use_mlp=True,
                                                           mamba_chunk_size=128, num_logits_to_keep=1)),
    "falcon_h1-default-multipliers": ("FalconH1ForCausalLM", {}, _edit((
        "embedding_multiplier", "lm_head_multiplier", "key_multiplier", "attention_in_multiplier", "attention_out_multiplier",
        "ssm_in_multiplier", "ssm_out_multiplier", "mlp_multipliers", "ssm_multipliers"))),
    "falcon_h1-no-mamba-norm": ("FalconH1ForCausalLM", dict(mamba_rms_norm=False), _edit()),
    "falcon_h1-gate-before-norm": ("FalconH1ForCausalLM", dict(mamba_norm_before_gate=False), _edit()),
    # Mamba2: a tied head; keys its code never reads (residual_in_fp32: a float32 residual stream in 16-bit models
    # alone), time_step_limit holding Infinity
    "mamba2-tied": ("Mamba2ForCausalLM", dict(tie_word_embeddings=True), _edit()),
    "mamba2-hub-keys": ("Mamba2ForCausalLM", {}, _edit(residual_in_fp32=True, time_step_limit=[0.0, float("inf")],
                                                      num_attention_heads=3, intermediate_size=7, chunk_size=8)),
    # Mamba as state-spaces/mamba-*-hf's files spell it: tied by default, time_step_rank "auto", the original code's keys
    # (n_layer, fused_add_norm, rms_norm, pad_vocab_size_multiple); an inner width of intermediate_size, not expand's
    "mamba-hub-spelling": ("MambaForCausalLM", dict(time_step_rank=4, tie_word_embeddings=True, intermediate_size=96), _edit(
        ("tie_word_embeddings",), time_step_rank="auto", n_layer=3, fused_add_norm=True, rms_norm=True, pad_vocab_size_multiple=8)),
    # RecurrentGemma as google/recurrentgemma-*'s files spell it: a flat rope_theta (half of each head rotated), lru_width
    # left out (hidden_size), head_dim given, multi-query, the older embeddings_scale_by_sqrt_dim
    "recurrent_gemma-hub-spelling": ("RecurrentGemmaForCausalLM", dict(lru_width=64, num_key_value_heads=1, head_dim=8), _edit(
        ("rope_parameters", "lru_width"), rope_theta=5000.0, embeddings_scale_by_sqrt_dim=True)),
    # ... the window as sliding_window, the alias winning over attention_window_size; a top-level rotary factor; the blocks
    # of another pattern, one full repeat and a part over the layers
    "recurrent_gemma-alias-and-blocks": ("RecurrentGemmaForCausalLM", dict(attention_window_size=5, block_types=["attention",
                                         "recurrent", "recurrent"]), _edit(sliding_window=5, attention_window_size=12,
                                         partial_rotary_factor=0.75, rope_parameters={"rope_type": "default", "rope_theta": 100.0})),
    # Jamba as ai21labs' files spell it: num_local_experts (the alias wins over num_experts), mamba_dt_rank "auto", untied by
    # default, use_mamba_kernels; its experts fused as transformers 5 holds them; one expert: a dense MLP on every layer
    "jamba-hub-spelling": ("JambaForCausalLM", dict(mamba_dt_rank=4), _edit(("tie_word_embeddings",), num_local_experts=4,
                                                                           num_experts=8, mamba_dt_rank="auto", use_mamba_kernels=False)),
    "jamba-fused-experts": ("JambaForCausalLM", {}, _edit(), _fuse),
    "jamba-one-expert": ("JambaForCausalLM", dict(num_experts=1), _edit()),
    # BitNet: a rope base of 500,000, squared ReLU and no biases where left out (BitNetConfig); keys its code never reads
    "bitnet-defaults": ("BitNetForCausalLM", dict(attention_bias=False), _edit(("rope_parameters", "hidden_act", "attention_bias"),
                                                                           mlp_bias=True, sliding_window=8)),
    # DiffLlama: as many kv heads as heads where left out or null (DiffLlamaConfig), no biases, silu
    "diffllama-defaults": ("DiffLlamaForCausalLM", dict(num_key_value_heads=4, attention_bias=False),
                           _edit(("num_key_value_heads", "attention_bias", "hidden_act"), mlp_bias=True, sliding_window=8)),
    # Jais 2: squared ReLU and biases everywhere where left out (Jais2Config); an RMSNorm epsilon and window it never reads
    "jais2-defaults": ("Jais2ForCausalLM", {}, _edit(("hidden_act", "attention_bias", "mlp_bias"), rms_norm_eps=0.5, sliding_window=8)),
    # HyperCLOVAX: the attention scale head_dim ** -0.5 and the branch norms on where left out or null (HyperCLOVAXConfig);
    # without them (use_post_norm false); keys its code never reads
    "hyperclovax-defaults": ("HyperCLOVAXForCausalLM", {}, _edit(("attention_multiplier", "use_post_norm"), sliding_window=8)),
    "hyperclovax-null-attention-multiplier": ("HyperCLOVAXForCausalLM", {}, _edit(attention_multiplier=None)),
    "hyperclovax-no-post-norms": ("HyperCLOVAXForCausalLM", dict(use_post_norm=False), _edit()),
    # Cohere2-MoE: RMSNorms where rms_norm_eps is set; the sigmoid router, renormalised or not; the shared expert summed;
    # layer_types and mlp_layer_types from first_k_dense_replace and the two window patterns (the prefix's 1: full, rotated)
    "cohere2_moe-rms-sigmoid-sum": ("Cohere2MoeForCausalLM", dict(rms_norm_eps=1e-5, expert_selection_fn="sigmoid",
                                                                  shared_expert_combination_strategy="sum"), _edit()),
    "cohere2_moe-sigmoid-unnormalised": ("Cohere2MoeForCausalLM", dict(expert_selection_fn="sigmoid", norm_topk_prob=False), _edit()),
    "cohere2_moe-default-patterns": ("Cohere2MoeForCausalLM", dict(num_hidden_layers=5, layer_types=None, mlp_layer_types=None,
                                                                   first_k_dense_replace=2, sliding_window_pattern=2),
                                     _edit(("layer_types", "mlp_layer_types"), first_k_dense_replace=2, use_qk_norm=True)),
    # Granite SWA: each 4th layer full from the first and every layer on the rope base where layer_types and
    # layer_rope_theta are left out; Granite MoE SWA without a shared MLP where shared_intermediate_size is left out
    "granite_swa-default-pattern": ("GraniteSWAForCausalLM", dict(num_hidden_layers=5, layer_types=None, layer_rope_theta=None),
                                    _edit(("layer_types", "layer_rope_theta"), use_sliding_window=False)),
    "granitemoe_swa-defaults": ("GraniteMoeSWAForCausalLM", dict(shared_intermediate_size=0, layer_rope_theta=None),
                                _edit(("shared_intermediate_size", "layer_rope_theta"))),
    # Pythia's files, converted by EleutherAI's tools, with each layer's mask buffers
    "neox-mask-buffers": ("GPTNeoXForCausalLM", {}, _edit(), _tensors(add=_causal_buffers(
        "gpt_neox.layers.{i}.attention.bias", 256, masked="gpt_neox.layers.{i}.attention.masked_bias"))),
    # Kimi-Linear as the Hub holds it: the layers' kinds and dense MLPs from linear_attn_config and first_k_dense_replace
    # alone, the dense MLP under transformers' own name (mlp; it saves block_sparse_moe), which it reads as well
    "kimi-linear-hub-layout": ("KimiLinearForCausalLM", {}, _edit(("layer_types", "mlp_layer_types")),
                               _tensors(rename=lambda name: name.replace("layers.0.block_sparse_moe.", "layers.0.mlp."))),
    # Bailing-Hybrid as the Hub's files spell it: no derived keys (layer and MLP types, the KDA heads' linear_* sizes: from
    # head_dim, which the saved file holds as qk_rope_head_dim), low-rank queries, the unbounded forget gate, and a
    # multi-token-prediction layer after the decoder's, unread
    "bailing-hybrid-hub-layout": ("BailingHybridForCausalLM", dict(q_lora_rank=24, kda_safe_gate=False),
                                  _edit(("layer_types", "mlp_layer_types", "linear_head_dim", "linear_num_heads",
                                         "linear_conv_kernel_dim"), head_dim=16, num_nextn_predict_layers=1),
                                  _tensors(add=lambda t: {"model.layers.3.attention.dense.weight": t["model.layers.1.attention.dense.weight"].clone()})),
    # MiniMax-M3 under its legacy spellings: sparse_attention_config's layer pattern and indexer keys, moe_layer_freq, the
    # experts' count under num_experts (its attribute_map alias, which wins)
    "minimax-m3-legacy-keys": ("MiniMaxM3VLForCausalLM", {}, _edit(
        ("layer_types", "mlp_layer_types", "index_n_heads", "index_head_dim", "index_block_size", "index_topk_blocks",
         "num_local_experts"), num_experts=4, moe_layer_freq=[0, 1],
        sparse_attention_config={"sparse_attention_freq": [1, 0], "sparse_num_index_heads": 2, "sparse_index_dim": 8,
                                 "sparse_block_size": 8, "sparse_topk_blocks": 16})),
    # HRM-Text as its Hub file spells it: num_hidden_layers per stack (HrmTextConfig derives every pass's count), the
    # embedding scale left to 1 / initializer_range
    "hrm-text-per-stack-layers": ("HrmTextForCausalLM", {}, _edit(("num_layers_per_stack", "embedding_scale"), num_hidden_layers=2,
                                                                  initializer_range=0.5)),
    # LongCat-Flash under its config class's aliases, which win: num_hidden_layers (twice num_layers), intermediate_size
    "longcat-aliases": ("LongcatFlashForCausalLM", {}, lambda raw: raw.update(num_hidden_layers=2 * raw.pop("num_layers"),
                                                                           intermediate_size=raw.pop("ffn_hidden_size"))),
    # Ergo as its Hub files spell it: its window as local_attention_window (the alias, which wins), a flat rope_theta (the
    # sliding layers' rope; the full layers none), the layers' kinds and the dense layers from global_attention_every_n_layers
    # and num_dense_blocks; its router's score bias (saved as zeros, router_bias) chooses the experts, not weighs them
    "ergo-hub-spelling": ("ErgoForCausalLM", {}, _edit(("layer_types", "mlp_layer_types", "rope_parameters", "sliding_window"),
                                                       local_attention_window=8, rope_theta=10000.0),
                          _tensors(add=lambda tensors: {k.replace("model.layers.", "layers.").replace("mlp.e_score_correction_bias", "feed_forward.router_bias"): v
                                                        for k, v in _score_biases("mlp", (1, 2), 8)(tensors).items()})),
    # Ergo with a rope of the full layers' own (rotated too), every layer routed, no scale of the full layers' logits and a
    # shared expert of no width (its empty tensors unread)
    "ergo-full-rope-no-shared": ("ErgoForCausalLM", dict(num_dense_blocks=0, global_attention_scale=None, shared_intermediate_size=0,
                                                         rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                                                                          "full_attention": {"rope_type": "default", "rope_theta": 500.0}}),
                                 _edit()),
    # RWKV with RwkvConfig's defaults: the widths from hidden_size, rescaled every 6 blocks (7 of them: the seventh's output
    # weights halved), a tied head
    "rwkv-defaults": ("RwkvForCausalLM", dict(num_hidden_layers=7, attention_hidden_size=None, intermediate_size=None,
                                              rescale_every=6, tie_word_embeddings=True),
                      _edit(("attention_hidden_size", "intermediate_size", "rescale_every"))),
    # a time mix narrower than the hidden state (transformers runs it uncached only: its cache is hidden_size wide), no
    # rescaling, the max_position_embeddings alias winning over context_length
    "rwkv-narrow-time-mix": ("RwkvForCausalLM", dict(attention_hidden_size=48, rescale_every=0, use_cache=False),
                             _edit(max_position_embeddings=32)),
    # xLSTM with xLSTMConfig's defaults (no biases, caps of 15 and 30, the MLP 2.667 x hidden_size rounded up to 384, one
    # chunk of 64: transformers runs the 20 tokens step by step), the head untied whatever tie_word_embeddings says, its
    # blocks counted by num_blocks (num_hidden_layers left out: 32, which only sizes transformers' cache), embedding_dim
    "xlstm-defaults": ("xLSTMForCausalLM", dict(use_bias=False, ffn_proj_factor=2.667, gate_soft_cap=15.0, output_logit_soft_cap=30.0,
                                                norm_eps=1e-6, chunk_size=64, tie_word_embeddings=True),
                       _edit(("use_bias", "ffn_proj_factor", "ffn_round_up_to_multiple_of", "gate_soft_cap", "output_logit_soft_cap",
                              "norm_eps", "eps", "chunk_size", "weight_mode", "qk_dim_factor", "v_dim_factor", "num_hidden_layers"),
                             num_blocks=3, embedding_dim=128)),
    # Zamba2 with one block (every hybrid layer's the same attention module, no q/k/v adapters), GQA, heads of head_dim 24
    # (not 2 x hidden / heads), no positions; a checkpoint holding the block's tied copy at each later hybrid layer too
    "zamba2-one-block-gqa": ("Zamba2ForCausalLM", dict(num_mem_blocks=1, use_shared_attention_adapter=False, num_key_value_heads=2,
                                                       head_dim=24, use_mem_rope=False), _edit(), _tensors(add=lambda tensors: {
        name.replace("layers.1.", f"layers.{i}."): t.clone() for name, t in tensors.items() if ".1.shared_transformer." in name for i in (2, 4)})),
    # Zamba2 and Zamba with tie_word_embeddings false: transformers then ties nothing, the blocks' parameters neither (each
    # hybrid layer its own block, saved at its layer; Zamba2's adapter at its turn read from its own block's lists)
    "zamba2-untied-blocks": ("Zamba2ForCausalLM", dict(tie_word_embeddings=False), _edit()),
    "zamba-untied-blocks": ("ZambaForCausalLM", dict(tie_word_embeddings=False), _edit()),
    # Zamba2 as the Hub spells it: the legacy "mamba" layers, the keys its config derives left out, defaults for the rest
    "zamba2-hub-keys": ("Zamba2ForCausalLM", {}, _edit(("attention_head_dim", "attention_hidden_size", "mamba_headdim",
                                                        "hybrid_layer_ids", "kv_channels", "num_query_groups", "rms_norm_eps",
                                                        "hidden_act", "time_step_min"),
                                                       layers_block_type=["mamba", "hybrid", "hybrid", "mamba", "hybrid"],
                                                       use_long_context=True, use_shared_mlp_adapter=True)),
    # ModernBERT-decoder as its Hub files spell it: no layer_types (every 2nd layer global from layer 0), no per-type rope
    # (global_rope_theta, local_rope_theta, a rope_scaling merged into both), the tie and biases its config's defaults
    "modernbert-decoder-hub-keys": ("ModernBertDecoderForCausalLM", dict(
        tie_word_embeddings=True, norm_bias=False, attention_bias=False, mlp_bias=False, classifier_bias=False,
        global_rope_theta=5000.0, local_rope_theta=20000.0, rope_scaling={"rope_type": "linear", "factor": 2.0}),
        _edit(("layer_types", "rope_parameters", "sliding_window", "tie_word_embeddings", "norm_bias", "decoder_bias",
               "attention_bias", "mlp_bias", "classifier_bias"), global_attn_every_n_layers=2, global_rope_theta=5000.0,
              local_rope_theta=20000.0, rope_scaling={"rope_type": "linear", "factor": 2.0})),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """built(arch, folder, **overrides): reference.build's checkpoint (seed 0) copied into `folder`, built once per
    module for each architecture and overrides (265 builds for the 327 spellings), since every case edits its own copy."""
    folders = {}

    def copy(arch, folder, **overrides):
        key = (arch, json.dumps(overrides, sort_keys=True))
        if key not in folders:
            folders[key] = tmp_path_factory.mktemp("built")
            reference.build(arch, folders[key], **overrides)
        shutil.copytree(folders[key], folder, dirs_exist_ok=True)
    return copy


@pytest.mark.parametrize("case", sorted(SPELLINGS))
def test_hub_spellings_and_family_defaults_match_transformers(case, tmp_path, built):
    import torch
    import transformers

    arch, overrides, edit, *rewrite = SPELLINGS[case]
    built(arch, tmp_path, **overrides)
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    edit(raw)
    path.write_text(json.dumps(raw))
    for tensors in rewrite:
        tensors(tmp_path / "model.safetensors")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="eager", dtype=torch.float32).eval()
    err = reference.max_rel_diff(jaxllm.load(tmp_path).logits(TOKENS), reference.torch_logits(ref, TOKENS))
    print(f"{case}: max rel diff {err:.2e}")
    assert err <= TOL


def test_tied_config_with_a_copy_of_the_embeddings_stays_tied(tmp_path, built):
    built("LlamaForCausalLM", tmp_path, tie_word_embeddings=True)
    _tensors(add=_head(copy=True))(tmp_path / "model.safetensors")
    assert jaxllm.load(tmp_path, tokenizer=False).config.tie_word_embeddings


def test_mistral_window_defaults_to_4096_when_the_key_is_absent(tmp_path, built):
    built("MistralForCausalLM", tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    del raw["sliding_window"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    assert jaxllm.load(tmp_path, tokenizer=False).config.layer_window(0) == 4096  # transformers' MistralConfig default
