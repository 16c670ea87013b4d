"""Reference parity of the forward pass: every registered architecture (logits, hidden states, attention
weights, log-probabilities, decoding through the paged cache), and every rope kind, against transformers.
Config.json spellings: test_parity_hub_spellings.py; keys left out or null: test_parity_config_keys.py."""

import json

import jax
import numpy as np
import pytest
import reference
import torch
from reference import ROPE_KINDS, TOKENS, TOL

import jaxllm
from jaxllm import research
from jaxllm.engine import Engine
from jaxllm.models import registry


@pytest.mark.parametrize("arch", registry.names())
def test_forward_matches_transformers(arch, tmp_path):
    """One architecture's forward against transformers' (output_hidden_states, output_attentions,
    eager attention): logits, every hidden state, the first and last attention layer's weights and
    the token log-probabilities, from one compiled call of the research API's pure functions. (Decoding
    through the paged cache against transformers, every generated position's log-probabilities: the
    mixed workload of tests/test_engine.py, whose engine programs serve that check too.)"""
    ref = reference.build(arch, tmp_path, seed=11)
    model = jaxllm.load(tmp_path)
    cfg, graphdef = model.config, model.graphdef
    with torch.no_grad():
        out = ref(torch.as_tensor(TOKENS), output_hidden_states=True, output_attentions=True)
    full = [i for i in range(cfg.num_layers) if cfg.layer_is_attention(i)]
    layers = (full[0], full[-1]) if full else ()  # none in Mamba

    def forward(params):  # one program, not one compile per function (the per-architecture tests' cost)
        return (research.logits(graphdef, params, TOKENS), research.hidden_states(graphdef, params, TOKENS),
                [research.attention_weights(graphdef, params, TOKENS, layer) for layer in layers],
                research.token_logprobs(graphdef, params, TOKENS))

    logits, hidden, attention, logprobs = jax.jit(forward)(model.params)
    err = reference.max_rel_diff(logits, out.logits.numpy())
    print(f"{arch}: max rel diff {err:.2e}")
    assert err <= TOL
    every = getattr(getattr(registry.get(arch).module, "model_cls", None), "hidden_every", 1)  # LongCat: its layer is two of ours
    assert len(hidden) == len(out.hidden_states) == cfg.num_layers // every + 1
    for i, (ours, theirs) in enumerate(zip(hidden, out.hidden_states)):
        assert reference.max_rel_diff(ours, theirs.numpy()) <= TOL, f"hidden state {i}"
    # transformers records the attention layers' weights alone; a recurrent or feed-forward layer's are refused in one line
    for other, kind in ((cfg.layer_is_recurrent, "recurrent"), (lambda i: not cfg.layer_has_mixer(i), "feed-forward")):
        layer = next(filter(other, range(cfg.num_layers)), None)
        if layer is not None:
            with pytest.raises(jaxllm.InputError, match=f"layer {layer} is a {kind}"):
                model.attention_weights(TOKENS, layer)
    # (MiniMax records its lightning layers too, their [head dim, head dim] states: there the attention layers' are by layer)
    recorded = full if not full or len(out.attentions) == len(full) else list(range(cfg.num_layers))
    for layer, ours in zip(layers, attention):
        theirs = out.attentions[recorded.index(layer)].numpy()
        assert ours.shape == theirs.shape == (2, cfg.num_heads, 20, 20)
        assert reference.max_rel_diff(ours, theirs) <= TOL, f"attention of layer {layer}"  # the logits' tolerance
    logp = torch.log_softmax(out.logits[:, :-1].double(), -1).gather(-1, torch.as_tensor(TOKENS)[:, 1:, None])[..., 0]
    assert np.abs(np.asarray(logprobs) - logp.numpy()).max() <= 1e-4



def test_every_architecture_has_a_tiny_config():
    for name in registry.names():
        assert registry.get(name).tiny_config, f"{name} is registered without a tiny_config for its parity test"



@pytest.mark.parametrize("kind", sorted(ROPE_KINDS))
def test_rope_scaling_matches_transformers(kind, tmp_path):
    # max_position_embeddings below the sequence length, so dynamic NTK actually rescales.
    rope = dict(ROPE_KINDS[kind], rope_theta=10000.0)
    ref = reference.build("LlamaForCausalLM", tmp_path, rope_parameters=rope, max_position_embeddings=12)
    model = jaxllm.load(tmp_path)
    assert model.config.rope.type == kind
    err = reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS))
    print(f"rope {kind}: max rel diff {err:.2e}")
    assert err <= TOL


def test_v4_rope_spelling_loads_the_same(tmp_path):
    rope = dict(ROPE_KINDS["yarn"], rope_theta=5000.0)
    ref = reference.build("LlamaForCausalLM", tmp_path, rope_parameters=rope)
    path = tmp_path / "config.json"
    raw = json.loads(path.read_text())
    params = raw.pop("rope_parameters")
    raw["rope_theta"] = params.pop("rope_theta")
    raw["rope_scaling"] = {"type" if k == "rope_type" else k: v for k, v in params.items()}
    path.write_text(json.dumps(raw))
    model = jaxllm.load(tmp_path)
    assert (model.config.rope.type, model.config.rope.theta) == ("yarn", 5000.0)
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS)) <= TOL


def test_sliding_window_is_in_effect(tmp_path):
    """Mistral's window (8) is shorter than the sequence (20): without it the logits differ."""
    ref = reference.build("MistralForCausalLM", tmp_path)
    model = jaxllm.load(tmp_path)
    assert model.config.layer_window(0) == 8
    full = jaxllm.LoadedModel(model.config.replace(layer_types=("full_attention",) * 3), None, None)
    from jaxllm.loader import abstract_model
    graphdef, _ = abstract_model(full.config, registry.get("MistralForCausalLM"), np.float32)
    no_window = research.logits(graphdef, model.params, TOKENS)
    assert reference.max_rel_diff(no_window, reference.torch_logits(ref, TOKENS)) > 100 * TOL


def test_sharded_checkpoint_and_bfloat16(tmp_path):
    ref = reference.build("Qwen3ForCausalLM", tmp_path / "a")
    ref.save_pretrained(tmp_path / "b", max_shard_size="20KB")
    assert (tmp_path / "b" / "model.safetensors.index.json").exists()
    sharded = jaxllm.load(tmp_path / "b")
    expected = reference.torch_logits(ref, TOKENS)
    assert reference.max_rel_diff(sharded.logits(TOKENS), expected) <= TOL
    half = jaxllm.load(tmp_path / "b", dtype="bfloat16")
    leaf = half.params["model"]["layers"][0]["self_attn"]["q_proj"]["kernel"][...]
    assert leaf.dtype == np.dtype("bfloat16")
    # bfloat16 keeps ~3 significant digits; the argmax agrees almost everywhere.
    agree = (np.asarray(half.logits(TOKENS)).argmax(-1) == expected.argmax(-1)).mean()
    assert agree >= 0.9


def test_gpt_neox_sequential_residual(tmp_path):
    """use_parallel_residual=False takes the other branch of the NeoX layer."""
    ref = reference.build("GPTNeoXForCausalLM", tmp_path, use_parallel_residual=False)
    model = jaxllm.load(tmp_path)
    assert not model.config.parallel_residual
    assert reference.max_rel_diff(model.logits(TOKENS), reference.torch_logits(ref, TOKENS)) <= TOL


def test_falcon_rw_alibi_matches_transformers_sdpa(tmp_path):
    """Falcon-RW's layer (sequential, every head's own k/v, biases) with ALiBi: 12 heads, whose
    slopes and products with the positions round in bfloat16 as transformers builds them; full
    forward, and greedy tokens through the engine's paged cache (the XLA forms, whatever the
    platform's kernels). Against transformers' sdpa
    attention: its eager one adds the bias twice (to the scores and in the mask built with it)."""
    import torch
    import transformers

    reference.build("FalconForCausalLM", tmp_path, alibi=True, new_decoder_architecture=False, parallel_attn=False,
                    multi_query=False, num_kv_heads=None, hidden_size=96, num_attention_heads=12)
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa", dtype=torch.float32).eval()
    model = jaxllm.load(tmp_path)
    assert model.config.alibi is not None and model.config.alibi.bf16
    tokens = np.random.default_rng(4).integers(0, 128, (2, 40))
    assert reference.max_rel_diff(model.logits(tokens), reference.torch_logits(ref, tokens)) <= TOL
    prompt = tokens[0, :9].tolist()
    with torch.no_grad():
        ids = torch.tensor([prompt])
        want = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, min_new_tokens=24, do_sample=False,
                            eos_token_id=None, pad_token_id=0)[0, 9:].tolist()
    assert model.generate(prompt, jaxllm.SamplingParams(max_new_tokens=24, ignore_eos=True)).token_ids == want
    # no cuDNN decode call takes the bias: an engine asked for cuDNN runs the model by the XLA forms (attention.cudnn_serves)
    assert Engine(model, batch_size=2, max_len=256, page_size=16, attention="cudnn").runner.attention == "xla"

