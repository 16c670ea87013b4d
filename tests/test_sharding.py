"""Sharding on 8 simulated CPU devices (set in conftest), two processes, and loading memory."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import reference
from jax.sharding import PartitionSpec as P

import jaxllm
from jaxllm import sharding
from jaxllm.errors import ConfigError

HERE = Path(__file__).parent
PROMPTS = [[5, 6, 7, 8, 9], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
GREEDY = jaxllm.SamplingParams(max_new_tokens=32, ignore_eos=True)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama8")
    reference.build("LlamaForCausalLM", path, seed=4, num_attention_heads=8, num_key_value_heads=2, hidden_size=64)
    return path


@pytest.fixture(scope="module")
def single(folder):
    model = jaxllm.load(folder)
    tokens = np.random.default_rng(0).integers(0, 128, (2, 20))
    return model, tokens, np.asarray(model.logits(tokens)), [r.token_ids for r in model.generate(PROMPTS, GREEDY)]


def _layer(model, *names):
    node = model.params["model"]["layers"][0]
    for n in names:
        node = node[n]
    return node


@pytest.mark.parametrize("spec, kv_split", [("tp=8", False), ("dp=2,tp=4", False), ("fsdp=2,tp=4", False), ("dp=4,tp=2", True)])
def test_sharded_matches_single_device(folder, single, spec, kv_split):
    base, tokens, logits, greedy = single
    model = jaxllm.load(folder, mesh=spec)
    mesh = model.mesh
    fsdp = "fsdp" if mesh.shape["fsdp"] > 1 else None
    # The rules, not silent replication: heads, mlp and the output head's vocab over tp; embed over
    # fsdp; kv heads (2) split only where tp divides them; the lookup table's rows whole (a split
    # table is all-gathered on every GPU decode step, issue 15).
    q = _layer(model, "self_attn", "q_proj", "kernel")
    k = _layer(model, "self_attn", "k_proj", "kernel")
    up = _layer(model, "mlp", "up_proj", "kernel")
    embed = model.params["model"]["embed_tokens"]["embedding"]
    assert q.sharding.spec == P("tp", None, fsdp)  # Dense kernels are [out..., in...]
    assert k.sharding.spec == P("tp" if kv_split else None, None, fsdp)
    assert up.sharding.spec == P("tp", fsdp)
    assert embed.sharding.spec == P(None, fsdp)
    if "lm_head" in model.params:
        assert model.params["lm_head"]["kernel"].sharding.spec == P("tp", fsdp)
    tp = mesh.shape["tp"]
    assert q.addressable_shards[0].data.shape == (8 // tp, 8, 64 // (2 if fsdp else 1))
    err = reference.max_rel_diff(model.logits(tokens), logits)
    print(f"{spec}: sharded vs single-device logits max rel diff {err:.1e}")
    assert err <= 1e-5
    assert [r.token_ids for r in model.generate(PROMPTS, GREEDY)] == greedy


@pytest.mark.parametrize("spec, message", [
    ("tp=3", "mesh 'tp=3' needs 3 devices but 8 are available"),
    ("xp=8", "mesh axis 'xp' in 'xp=8' is unknown: use dp, fsdp, tp"),
    ("tp=4,tp=2", "mesh axis 'tp' appears twice"),
    ("tp", "mesh spec item 'tp' of 'tp' is malformed: write axis=size"),
    ("", "mesh spec is empty: use e.g. 'tp=4'"),
])
def test_invalid_mesh_specs(spec, message):
    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh(spec)


def test_indivisible_heads_are_refused(tmp_path):
    reference.build("LlamaForCausalLM", tmp_path, num_attention_heads=4, num_key_value_heads=2, hidden_size=64)
    with pytest.raises(ConfigError, match="'q_heads' dimension \\(4\\) is not divisible by tp=8"):
        jaxllm.load(tmp_path, mesh="tp=8")


def test_indivisible_heads_error_names_sizes_that_fit(tmp_path):
    """SmolLM2's 9 heads on 8 devices: 'choose a tp size that divides 9' alone sent users to tp=3,
    which 8 devices cannot hold; the error lists the sizes that divide both, and 'auto'."""
    reference.build("LlamaForCausalLM", tmp_path, num_attention_heads=9, num_key_value_heads=3, hidden_size=72)
    with pytest.raises(ConfigError) as error:
        jaxllm.load(tmp_path, mesh="dp=4,tp=2")
    assert str(error.value).endswith("'q_heads' dimension (9) is not divisible by tp=2: choose a tp size that divides 9 "
                                     "and the 8 devices (tp=1), or mesh 'auto'")


@pytest.mark.parametrize("heads, kv_heads, hidden, layout", [(9, 3, 72, {"dp": 8, "tp": 1}), (4, 2, 64, {"dp": 2, "tp": 4})])
def test_auto_mesh_fits_the_model(tmp_path, heads, kv_heads, hidden, layout):
    """'auto' puts as many devices on tp as the model's heads allow, the rest on dp: SmolLM2's 9
    heads (the packaged model) on 8 devices used to be refused ('q_heads' (9) not divisible by tp=8)."""
    ref = reference.build("LlamaForCausalLM", tmp_path, seed=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
                          hidden_size=hidden, intermediate_size=96)
    model = jaxllm.load(tmp_path, mesh="auto")
    assert {a: model.mesh.shape[a] for a in layout} == layout
    tokens = np.random.default_rng(0).integers(0, 128, (2, 12))
    assert reference.max_rel_diff(model.logits(tokens), reference.torch_logits(ref, tokens)) <= 1e-5
    params = jaxllm.SamplingParams(max_new_tokens=8, ignore_eos=True)
    alone = jaxllm.load(tmp_path)
    assert [r.token_ids for r in model.generate(PROMPTS, params)] == [r.token_ids for r in alone.generate(PROMPTS, params)]


def test_untied_head_over_a_vocabulary_tp_does_not_divide_is_kept_whole(tmp_path):
    ref = reference.build("LlamaForCausalLM", tmp_path, vocab_size=131, tie_word_embeddings=False)
    model = jaxllm.load(tmp_path, mesh="dp=4,tp=2")
    assert model.params["lm_head"]["kernel"].sharding.spec == P(None, None)
    tokens = np.random.default_rng(0).integers(0, 131, (2, 12))
    assert reference.max_rel_diff(model.logits(tokens), reference.torch_logits(ref, tokens)) <= 1e-5


def test_mesh_spec_case_and_hints():
    from jaxllm import runtime

    assert sharding.make_mesh("AUTO").shape["tp"] == 8 and sharding.make_mesh("TP=8").shape["tp"] == 8
    assert runtime.splits_tp("TP=2") and runtime.splits_tp("auto") and not runtime.splits_tp("dp=2,tp=1")
    with pytest.raises(ConfigError, match="or keep this split with 'dp=4,tp=2'"):
        sharding.make_mesh("tp=2")


def test_mesh_from_jax_make_mesh(folder, single):
    """jax.make_mesh's meshes have Explicit axes (its default since jax 0.7): the model used to fail
    inside with a ShardingTypeError ("... specify the output sharding via the `out_sharding`"); it runs as
    on make_mesh's mesh (the same devices and names, Auto axes)."""
    import jax

    base, tokens, logits, greedy = single
    # all four axes in make_mesh's order: the model's logits program is the one test_sharded_matches_single_device
    # compiled for 'fsdp=2,tp=4' (axes left out, below and in test_hand_built_mesh_may_leave_axes_out, come last)
    model = jaxllm.load(folder, mesh=jax.make_mesh((1, 2, 1, 4), ("dp", "fsdp", "ep", "tp")))
    assert model.mesh == sharding.make_mesh("fsdp=2,tp=4")
    assert reference.max_rel_diff(model.logits(tokens), logits) <= 1e-5
    model = jaxllm.load(folder, mesh=jax.make_mesh((2, 4), ("dp", "tp")))  # fsdp and ep left out: size 1
    assert reference.max_rel_diff(model.logits(tokens), logits) <= 1e-5
    assert [r.token_ids for r in model.generate(PROMPTS, GREEDY)] == greedy


@pytest.mark.parametrize("shape, names, want", [((2, 4), ("dp", "tp"), {"dp": 2, "tp": 4}), ((8,), ("tp",), {"tp": 8}),
                                               ((2, 1, 4), ("dp", "pipeline", "tp"), {"dp": 2, "tp": 4})])
def test_hand_built_mesh_may_leave_axes_out(shape, names, want):
    """jax.make_mesh((2, 4), ("dp", "tp")) was refused ("mesh lacks axes ['fsdp']"): the axes it
    leaves out are added with size 1 (an axis of another name of size 1 is harmless)."""
    import jax

    mesh = sharding.make_mesh(jax.make_mesh(shape, names))
    assert dict(mesh.shape) == {"dp": 1, "fsdp": 1, "tp": 1, "ep": 1, **dict(zip(names, shape)), **want}
    assert list(mesh.devices.ravel()) == list(jax.make_mesh(shape, names).devices.ravel())
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("shape, names, message", [
    ((2, 4), ("data", "model"), "mesh axes 'data' \\(size 2\\), 'model' \\(size 4\\) are none of dp, fsdp, tp, ep"),
    ((2, 1, 4), ("dp", "tp", "heads"), "mesh axis 'heads' \\(size 4\\) is not one of dp, fsdp, tp, ep, so nothing would be split"),
])
def test_hand_built_mesh_with_other_axis_names_is_refused(shape, names, message):
    """An axis of another name spanning devices used to be taken (after naming the missing axes) and
    the model replicated over it: its devices each held and computed a copy."""
    import jax

    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh(jax.make_mesh(shape, names))


def test_two_processes_match_one(folder, single, tmp_path):
    """jax.distributed over 127.0.0.1 with gloo: 2 processes x 2 CPU devices, mesh tp=4."""
    base, _, _, greedy = single
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "out.json"
    cmd = [sys.executable, str(HERE / "multihost_worker.py"), str(port), "RANK", str(folder), str(out), json.dumps(PROMPTS)]
    procs = [subprocess.Popen([c.replace("RANK", str(r)) for c in cmd], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for r in range(2)]
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-1500:] for log in logs)
    got = json.loads(out.read_text())
    assert got["tokens"] == greedy
    assert got["logits_sum"] == pytest.approx(float(base.logits([PROMPTS[0]]).sum()), rel=1e-5)


def test_generate_command_over_two_processes(gguf_path, tmp_path):
    """`python -m jaxllm.generate --distributed HOST:PORT,2,RANK --mesh tp=2` on two processes of one
    CPU device each prints the answer one process computes alone; only process 0 prints."""
    from jaxllm import checkpoint

    model = tmp_path / "model"
    reference.build("LlamaForCausalLM", model, seed=4, num_attention_heads=8, num_key_value_heads=2, hidden_size=64,
                    vocab_size=49152)
    checkpoint.load_tokenizer(gguf_path).save_pretrained(str(model))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    prompt = "The capital of France"
    cmd = [sys.executable, "-m", "jaxllm.generate", "--model", str(model), "--max-new-tokens", "12", "--temperature", "0",
           "--no-stream", "--mesh", "tp=2", prompt]
    procs = [subprocess.Popen(cmd + ["--distributed", f"127.0.0.1:{port},2,{r}"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for r in range(2)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(err[-1500:] for _, err in outs)
    (alone,) = jaxllm.load(model).generate([prompt], jaxllm.SamplingParams(max_new_tokens=12, temperature=0.0))
    # gloo (the CPU collectives) writes its own "[Gloo] Rank i is connected ..." line to stdout
    printed = ["".join(line for line in out.splitlines(keepends=True) if not line.startswith("[Gloo]")) for out, _ in outs]
    assert alone.text.strip() and printed[0] == alone.text + "\n"
    assert printed[1] == ""


def _synthetic_checkpoint(folder: Path) -> int:
    """A Llama-shaped checkpoint of ~1.07 GB in float32, in three shards; returns the largest tensor's bytes."""
    from safetensors.numpy import save_file

    cfg = dict(architectures=["LlamaForCausalLM"], vocab_size=32768, hidden_size=2048, intermediate_size=5632,
               num_hidden_layers=3, num_attention_heads=16, num_key_value_heads=4, max_position_embeddings=512)
    rng = np.random.default_rng(0)
    e, f, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    tensors = {"model.embed_tokens.weight": (v, e), "lm_head.weight": (v, e), "model.norm.weight": (e,)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({p + "input_layernorm.weight": (e,), p + "post_attention_layernorm.weight": (e,),
                        p + "self_attn.q_proj.weight": (e, e), p + "self_attn.k_proj.weight": (512, e),
                        p + "self_attn.v_proj.weight": (512, e), p + "self_attn.o_proj.weight": (e, e),
                        p + "mlp.gate_proj.weight": (f, e), p + "mlp.up_proj.weight": (f, e), p + "mlp.down_proj.weight": (e, f)})
    names = list(tensors)
    shards = [names[:2], names[2:14], names[14:]]
    weight_map = {}
    for k, group in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-00003.safetensors"
        save_file({n: rng.random(tensors[n], np.float32) for n in group}, folder / fname)  # 4x faster than normal draws
        weight_map.update({n: fname for n in group})
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(cfg))
    sizes = [4 * int(np.prod(s)) for s in tensors.values()]
    assert sum(sizes) > 2**30
    return max(sizes)


@pytest.mark.parametrize("mesh, quantize, source", [("none", "none", "hf"), ("tp=4", "none", "hf"), ("none", "int8", "hf"),
                                                    ("none", "none", "converted")])
def test_loading_memory_stays_near_one_tensor(tmp_path_factory, mesh, quantize, source):
    """Placed parameters plus about one tensor at most: safetensors, also while quantizing on the
    host, and a converted folder (its bytes mapped and placed like a safetensors tensor's; orbax's
    own restore held 1.7-2.2x the largest tensor besides)."""
    folder = tmp_path_factory.getbasetemp() / "synthetic-1gb"
    if not folder.exists():
        folder.mkdir()
        _synthetic_checkpoint(folder)
    if source == "converted":
        from jaxllm.convert import convert

        hf, folder = folder, tmp_path_factory.getbasetemp() / "synthetic-1gb-converted"
        if not folder.exists():
            convert(hf, folder, progress=False)
    largest_mb = 32768 * 2048 * 4 / 2**20
    out = subprocess.run([sys.executable, str(HERE / "memory_worker.py"), str(folder), mesh, quantize],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    m = json.loads(out.stdout.strip().splitlines()[-1])
    extra = m["peak_mb"] - m["baseline_mb"] - m["placed_mb"]
    print(f"{source}, mesh {mesh}, quantize {quantize}: placed {m['placed_mb']:.0f} MB, peak above baseline {m['peak_mb'] - m['baseline_mb']:.0f} MB, "
          f"transient {extra:.0f} MB = {extra / largest_mb:.2f}x the largest tensor ({largest_mb:.0f} MB)")
    assert m["peak_mb"] - m["baseline_mb"] <= 1.5 * largest_mb + m["placed_mb"]


@pytest.mark.parametrize("devices, message", [
    (lambda d: [d[0], d[0]], "mesh devices repeat cpu:0: give each device once"),
    (lambda d: [], "mesh devices are none: give at least one device"),
    (lambda d: [0, 1], "mesh devices must be jax devices \\(from jax.devices\\(\\)\\), got int"),
    (lambda d: d[0], "mesh devices must be a list of jax devices"),
])
def test_bad_mesh_devices_are_one_line_errors(devices, message):
    """make_mesh(spec, devices) used to take a device twice (or ints, or none) and build a Mesh that
    failed deep in loading ('the input arrays must be from distinct devices') or made 'auto' a Mesh
    of no axes; a device object alone was a TypeError."""
    import jax

    with pytest.raises(ConfigError, match=message):
        sharding.make_mesh("tp=2", devices(jax.devices()))
    if "repeat" in message:  # a hand-built Mesh of a device twice too
        from jax.sharding import Mesh

        with pytest.raises(ConfigError, match=message):
            sharding.make_mesh(Mesh(np.asarray(devices(jax.devices()), dtype=object).reshape(1, 1, 2), ("dp", "fsdp", "tp")))
