"""Multimodal checkpoints loaded as their language model (Gemma3ForConditionalGeneration, as
google/gemma-3-4b-it ships): text logits and greedy tokens against transformers' multimodal model
called with token ids alone, both spellings of the text tensors' names, the config as the Hub
spells it, conversion both ways, and the report of `python -m jaxllm.inspect`."""

import json

import numpy as np
import pytest
import reference
import torch
import transformers
from safetensors.torch import load_file, save_file

import jaxllm
from jaxllm import inspect as jinspect
from jaxllm.convert import convert
from jaxllm.errors import ConfigError
from jaxllm.models import registry

TOL = 1e-4
TOKENS = np.random.default_rng(0).integers(0, 128, (2, 20))  # past the tiny sliding window (8)
# A SigLIP tower of one layer: 28 / 14 = 2 patches a side, pooled to mm_tokens_per_image 4 (2 x 2)
VISION = dict(model_type="siglip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
              num_attention_heads=2, image_size=28, patch_size=14)


def build(folder, seed: int = 0, text=None, **top):
    """transformers' Gemma3ForConditionalGeneration of the tiny Gemma 3 text config (and `text`'s
    changes), seeded random weights, saved to `folder`; the eval-mode float32 model."""
    torch.manual_seed(seed)
    text_config = dict(registry.get("Gemma3ForCausalLM").tiny_config, **(text or {}))
    config = transformers.Gemma3Config(text_config=text_config, vision_config=VISION, mm_tokens_per_image=4, **top)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32)
    assert type(model).__name__ == "Gemma3ForConditionalGeneration"
    reference.randomize(model, seed)
    model.eval().save_pretrained(folder)
    return model


def reload(folder):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gemma3mm")
    return build(folder), folder


def _rename(folder, rename):
    path = folder / "model.safetensors"
    save_file({rename(k): v for k, v in load_file(path).items()}, path, metadata={"format": "pt"})


def _as_class_names(name: str) -> str:
    """transformers 5.x's own names (model.language_model.*, lm_head, model.vision_tower.*) of
    the names its save_pretrained writes (language_model.model.*, as 4.x saved them)."""
    if name.startswith("language_model.model."):
        return "model.language_model." + name.removeprefix("language_model.model.")
    if name.startswith("language_model."):
        return name.removeprefix("language_model.")
    return "model." + name


def _edit_config(folder, edit):
    raw = json.loads((folder / "config.json").read_text())
    edit(raw)
    (folder / "config.json").write_text(json.dumps(raw))


def _as_hub_spells_it(raw):
    """The text_config as the Hub's files hold it: only the keys whose values differ from
    Gemma3TextConfig's defaults (transformers 4.x saved a sub-config as that difference), rope in
    v4 keys."""
    defaults = transformers.Gemma3TextConfig().to_dict()
    text = raw["text_config"]
    rope = text.pop("rope_parameters")
    text["rope_scaling"] = {k: v for k, v in rope["full_attention"].items() if k != "rope_theta"}
    text["rope_theta"], text["rope_local_base_freq"] = rope["full_attention"]["rope_theta"], rope["sliding_attention"]["rope_theta"]
    raw["text_config"] = {k: v for k, v in text.items() if k in ("model_type", "rope_scaling") or defaults.get(k, object()) != v}
    raw.pop("tie_word_embeddings")  # Gemma3Config's default (true)


def test_text_logits_and_greedy_tokens_match_transformers(saved):
    ref, folder = saved
    model = jaxllm.load(folder)
    assert model.config.architecture == "Gemma3ForCausalLM" and model.config.vocab_size == 128
    err = reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS))
    assert err <= TOL, err
    prompt = np.random.default_rng(7).integers(0, 128, 9).tolist()
    got = model.generate(prompt, jaxllm.SamplingParams(max_new_tokens=16, ignore_eos=True))
    with torch.no_grad():
        ids = torch.tensor([prompt])
        out = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=16, min_new_tokens=16, do_sample=False,
                           eos_token_id=None, pad_token_id=0)
    assert got.token_ids == out[0, len(prompt):].tolist()


def test_class_names_and_the_hub_config_spelling_load_the_same(saved, tmp_path):
    """model.language_model.* names (5.x's classes), the vision tower under model.*, and a
    text_config holding only what differs from Gemma3TextConfig's defaults (vocab_size, heads,
    ... left out, as google/gemma-3-4b-it's): transformers reloads it as the reference."""
    ref, folder = saved
    ref.save_pretrained(tmp_path)
    _rename(tmp_path, _as_class_names)
    _edit_config(tmp_path, _as_hub_spells_it)
    raw = json.loads((tmp_path / "config.json").read_text())
    assert "vocab_size" not in raw["text_config"] or raw["text_config"]["vocab_size"] == 128
    expected = reference.torch_logits(reload(tmp_path), TOKENS)
    assert reference.max_rel_diff(expected, reference.torch_logits(ref, TOKENS)) <= TOL  # the same model, as transformers reads it
    assert reference.max_rel_diff(jaxllm.load(tmp_path, tokenizer=False).logits(TOKENS), expected) <= TOL


def test_the_wrapper_ties_and_caps_as_its_own_code_does(tmp_path):
    """Gemma3ForConditionalGeneration unties its head by the top-level tie_word_embeddings
    (the text config's says tied), and never applies the text config's final_logit_softcapping."""
    build(tmp_path, seed=1, text=dict(final_logit_softcapping=1.0, tie_word_embeddings=True), tie_word_embeddings=False)
    assert "language_model.lm_head.weight" in load_file(tmp_path / "model.safetensors")
    model = jaxllm.load(tmp_path, tokenizer=False)
    assert not model.config.tie_word_embeddings and model.config.final_softcap is None
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(reload(tmp_path), TOKENS)) <= TOL


def test_conversion_both_ways_gives_the_text_model(saved, tmp_path):
    """Orbax and back: the same logits; the Hugging Face export is the text model alone
    (Gemma3ForCausalLM, its config the text config as the wrapper runs it), which transformers
    loads with the multimodal model's text logits."""
    ref, folder = saved
    expected = reference.torch_logits(ref, TOKENS)
    convert(folder, tmp_path / "orbax", progress=False)
    assert reference.max_rel_diff(jaxllm.load(tmp_path / "orbax").logits(TOKENS), expected) <= TOL
    convert(tmp_path / "orbax", tmp_path / "back", to_hf=True, progress=False)
    raw = json.loads((tmp_path / "back" / "config.json").read_text())
    assert (raw["model_type"], raw["architectures"]) == ("gemma3_text", ["Gemma3ForCausalLM"])
    names = set(load_file(tmp_path / "back" / "model.safetensors"))
    assert "model.layers.0.self_attn.q_proj.weight" in names and not any("vision" in n for n in names)
    text = reload(tmp_path / "back")
    assert type(text).__name__ == "Gemma3ForCausalLM"
    assert reference.max_rel_diff(reference.torch_logits(text, TOKENS), expected) <= TOL


def test_inspect_reports_the_wrapper_and_no_vision_tensor(saved, capsys):
    _, folder = saved
    assert jinspect.main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "architecture  Gemma3ForCausalLM" in out and "multimodal    Gemma3ForConditionalGeneration (gemma3)" in out
    assert "all 41 match the weight map" in out and "vision_tower" in out and "unexpected" not in out
    assert jinspect.main(["--list"]) == 0
    listed = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("Gemma3ForCausalLM "))
    assert "also the language model of Gemma3ForConditionalGeneration (gemma3) checkpoints" in listed


# google/gemma-3-4b-it's config.json (text_config as the Hub holds it; vision_config abridged)
GEMMA3_4B = {
    "architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000,
    "eos_token_id": [1, 106], "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256,
    "model_type": "gemma3",
    "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
                    "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
    "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
    "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                      "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": False},
}
GEMMA3_27B_TEXT = {"head_dim": 128, "hidden_size": 5376, "intermediate_size": 21504, "model_type": "gemma3_text",
                   "num_attention_heads": 32, "num_hidden_layers": 62, "num_key_value_heads": 16, "query_pre_attn_scalar": 168,
                   "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024}


@pytest.mark.parametrize("raw", [GEMMA3_4B, dict(GEMMA3_4B, text_config=GEMMA3_27B_TEXT), dict(GEMMA3_4B, text_config=None),
                                 dict(GEMMA3_4B, text_config=dict(GEMMA3_27B_TEXT, tie_word_embeddings=False, eos_token_id=5)),
                                 dict(GEMMA3_4B, tie_word_embeddings=False, eos_token_id=None)],
                         ids=["4b", "27b", "null-text-config", "text-untied-wrapper-tied", "wrapper-untied-text-stop-tokens"])
def test_hub_configs_read_as_transformers_reads_them(raw):
    """The text model's shape, rope, window, tie and stop tokens, as transformers' Gemma3Config
    builds them from the Hub's file (every key text_config leaves out is Gemma3TextConfig's)."""
    text, wrapper = registry.unwrap(json.loads(json.dumps(raw)))
    assert wrapper.name == "Gemma3ForConditionalGeneration" and text["architectures"] == ["Gemma3ForCausalLM"]
    cfg = registry.architecture_of(text).config(text)
    hf = transformers.Gemma3Config(**json.loads(json.dumps(raw)))
    t = hf.text_config
    assert (cfg.vocab_size, cfg.hidden_size, cfg.intermediate_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads,
            cfg.head_dim, cfg.sliding_window, list(cfg.layer_types), cfg.max_position_embeddings, cfg.norm_eps) == (
        t.vocab_size, t.hidden_size, t.intermediate_size, t.num_hidden_layers, t.num_attention_heads, t.num_key_value_heads,
        t.head_dim, t.sliding_window, t.layer_types, t.max_position_embeddings, t.rms_norm_eps)
    assert cfg.attn_scale == pytest.approx(t.query_pre_attn_scalar ** -0.5)
    full, local = t.rope_parameters["full_attention"], t.rope_parameters["sliding_attention"]
    assert (cfg.rope.type, cfg.rope.theta, cfg.rope.factor) == (full["rope_type"], full["rope_theta"], full.get("factor", 1.0))
    assert (cfg.local_rope.type, cfg.local_rope.theta) == (local["rope_type"], local["rope_theta"])
    assert cfg.tie_word_embeddings == hf.tie_word_embeddings
    stop = transformers.GenerationConfig.from_model_config(hf).eos_token_id
    assert set(cfg.eos_token_ids) == set([stop] if isinstance(stop, int) else stop)


@pytest.mark.parametrize("text_config, named", [(7, "'text_config' must be a JSON object"),
                                                ({"hidden_size": "64"}, "'text_config.hidden_size' must be a positive integer"),
                                                ({"rope_parameters": {"full_attention": {"factor": -1}}},
                                                 "'text_config.rope_parameters.full_attention.factor' must be a positive number")])
def test_a_bad_text_config_is_named_in_one_line(text_config, named):
    with pytest.raises(ConfigError) as err:
        registry.unwrap(dict(GEMMA3_4B, text_config=text_config))
    assert named in str(err.value) and "\n" not in str(err.value)


def test_llama4_wrapper_loads_its_text_model(tmp_path):
    """Llama4ForConditionalGeneration (a one-layer vision model): its language_model's logits (transformers'
    wrapper cannot run on token ids alone), the text config's tie_word_embeddings deciding the head."""
    torch.manual_seed(0)
    text = dict(registry.get("Llama4ForCausalLM").tiny_config, tie_word_embeddings=True)
    vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14,
                  vision_output_dim=16, projector_input_dim=16, projector_output_dim=16, pixel_shuffle_ratio=0.5)
    ref = transformers.Llama4ForConditionalGeneration(transformers.Llama4Config(text_config=text, vision_config=vision))
    reference.randomize(ref, 0)
    ref.float().eval().save_pretrained(tmp_path)
    model = jaxllm.load(tmp_path)
    assert model.config.architecture == "Llama4ForCausalLM" and model.config.tie_word_embeddings
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref.language_model, TOKENS)) <= TOL
