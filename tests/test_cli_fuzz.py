"""Fuzzing the command lines' flag combinations: argv lists drawn from each command's real flags
(valid values, edge values: 0, negative, huge, empty, NaN, unicode, undecodable bytes, paths that do
not exist or are files or folders; and flags that interact), run through main(argv) in this process
on a tiny model. Every argv exits 0 with sane output, 1 (inspect: tensors that do not match), or 2
with exactly one line on stderr naming the problem: never a traceback, never an exception escaping
main, and convert's output is complete or absent (an existing one untouched).

The tiny model's programs compile in about a second; draws repeat a few shapes, so most examples
find their programs compiled (examples: pytest --hypothesis-show-statistics)."""

from __future__ import annotations

import io
import math
import os
import re
import sys
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from test_bad_inputs import TINY, write_checkpoint

from jaxllm import chat, checkpoint, convert, generate, inspect, serve

CLI = settings(max_examples=int(os.environ.get("JAXLLM_FUZZ_EXAMPLES", 25)), derandomize=not os.environ.get("JAXLLM_FUZZ_RANDOM"), deadline=None, database=None,
               suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
# A Llama of the real tokenizer's vocabulary (SmolLM2's, with its chat template), 320 positions (the default answer of 256 tokens fits).
WORDY = dict(TINY, vocab_size=49152, max_position_embeddings=320)


@pytest.fixture(scope="module")
def paths(tmp_path_factory, gguf_path):
    """model/: the tiny Llama with a tokenizer; bare/: TINY without one; file: a plain file; empty/: a folder."""
    root = tmp_path_factory.mktemp("cli_fuzz")
    tok = root / "tokenizer"
    checkpoint.load_tokenizer(gguf_path).save_pretrained(str(tok))
    (root / "file").write_text("not a checkpoint\n")
    (root / "empty").mkdir()
    return SimpleNamespace(root=root, model=write_checkpoint(root / "model", WORDY, tok), bare=write_checkpoint(root / "bare", TINY),
                           file=root / "file", empty=root / "empty", missing=root / "missing")


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run a main(argv) as the command would, stdin a pipe of two lines; (code, stdout, stderr)."""
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what the command line sets stays in this test

    def run(main, argv, stdin=b"Hi\nBye\n"):
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        capsys.readouterr()
        try:
            code = main(argv)
        except SystemExit as exit_:  # argparse's usage errors (its ArgumentParser: one line, exit 2)
            code = exit_.code
        out, err = capsys.readouterr()
        if not currently_in_test_context():  # a row, not an example
            return code, out, err
        event(f"exit {code}")
        if code == 2:
            event(err.split(":")[1].strip()[:40] if ":" in err else err[:40])
            if os.environ.get("JAXLLM_FUZZ_SHOW"):
                print(repr(argv), "->", err, file=sys.__stderr__)
        return code, out, err

    return run


def one_line_error(code, err) -> None:
    assert "Traceback" not in err, err
    assert code == 2, (code, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and len(err.strip()) > len("error: "), err


# --------------------------------------------------------------------------------------------------
# Values

INTS = st.sampled_from(["0", "1", "2", "-1", "4", "16", "9999999999999999999999", "x", "", "1.5", "٣", "nan"])
FLOATS = st.sampled_from(["0", "0.5", "1", "1.5", "-0.5", "-3", "100", "nan", "inf", "-inf", "1e309", "", "x", "²"])
TEXTS = st.sampled_from(["", " ", "hello", "\\n", "ünïcödé ✓", "\udcff", "a" * 300, "--", "\\"])


def path_of(paths, which):
    return {"model": str(paths.model), "bare": str(paths.bare), "file": str(paths.file), "empty": str(paths.empty),
            "missing": str(paths.missing), "": ""}[which]


@st.composite
def model_argv(draw, paths, generating=True):
    """Flags of progress.model_flags (generating: the sampling flags too), drawn sparsely."""
    argv = ["--model", path_of(paths, draw(st.sampled_from(["model"] * 12 + ["missing", "file", "empty", "bare", ""])))]
    flags = {
        "--dtype": st.sampled_from(["float32", "bfloat16", "float16", "int8", "", "FLOAT32"]),
        "--mesh": st.sampled_from(["tp=1", "dp=1", "tp=2", "tp=3", "tp=16", "auto", "", "x=2", "tp=0", "tp=-1", "dp=2,tp=2"]),
        "--speculative-tokens": st.sampled_from(["0", "2", "-1"]),  # a large K compiles for minutes (see the report)
        "--quantize": st.sampled_from(["int8", "int4", "gguf"]),
        "--group-size": st.sampled_from(["0", "-4", "8", "16", "7", "999999"]),
        "--kv-dtype": st.sampled_from(["int8", "float8_e4m3fn", "bfloat16", "float32"]),
        "--revision": st.sampled_from(["main", "", "v1"]),
    }
    if generating:
        flags |= {
            "--max-new-tokens": st.sampled_from(["0", "1", "3", "-1", "255", "256", "100000", "x"]),
            "--temperature": FLOATS, "--top-p": FLOATS, "--top-k": INTS, "--min-p": FLOATS, "--repetition-penalty": FLOATS,
            "--presence-penalty": FLOATS, "--frequency-penalty": FLOATS, "--seed": INTS, "--min-tokens": INTS,
            "--logit-bias": st.sampled_from(['{"5": -100}', '{"5": 1e9}', '{"99999999": 1}', '{"x": 1}', "[]", "null", "{", '{"5": NaN}',
                                             '{"-1": 1}', "{}"]),
            "--stop": TEXTS, "--stop-token-id": INTS,
            "--json-schema": st.sampled_from(['{"type": "integer"}', "{}", "{", "./no.json", str(paths.empty), str(paths.file), ""]),
            "--regex": st.sampled_from(["[0-9]+", "(", "", "a{99999}"]),
            "--choice": st.sampled_from(["yes", "", "ünï"]),
            "--grammar": st.sampled_from(['start: "a"', "start:", ""]),
            "--system": TEXTS,
            "--chat-template-kwargs": st.sampled_from(['{"enable_thinking": false}', "{}", "null", "[]", "{", '{"messages": 1}']),
        }
    switches = ["--quantize-embeddings"] + (["--json-object", "--include-stop-str-in-output", "--no-skip-special-tokens"] if generating else [])
    chosen = draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True))
    for flag in chosen:
        argv += [flag, draw(flags[flag])]
    argv += draw(st.lists(st.sampled_from(switches), max_size=2, unique=True))
    if generating and draw(st.booleans()):  # a small answer most of the time: the examples stay quick
        argv += ["--max-new-tokens", "3"]
    return argv


# --------------------------------------------------------------------------------------------------
# generate and chat


def sane_answer(code, out, err) -> None:
    """Exit 0: the answer printed on stdout, a line each; on stderr the stats line and notes only."""
    assert out.endswith("\n"), (out, err)
    assert all(line.startswith(("[prompt tokens", "note: ", "warning: ")) for line in err.splitlines()), err


@settings(CLI, max_examples=int(os.environ.get("JAXLLM_FUZZ_EXAMPLES", 12)))
@given(data=st.data())
def test_generate(paths, cli, data):
    argv = data.draw(model_argv(paths))
    argv += data.draw(st.lists(st.sampled_from(["--chat", "--no-chat", "--no-stream", "--list-models"]), max_size=2, unique=True))
    source = data.draw(st.sampled_from(["prompt", "prompt", "stdin", "batch-file", "empty prompt", "distributed"]))
    if source == "prompt":
        argv += ["Hi", "there"]
    elif source == "empty prompt":
        argv += [" "]
    elif source == "batch-file":
        argv += ["--batch-file", path_of(paths, data.draw(st.sampled_from(["file", "empty", "missing", ""])))]
    elif source == "distributed":
        argv += ["--distributed", data.draw(st.sampled_from(["", "x", "h:0,1,0", ":1,1,0", "h:1,0,0", "h:1,2,2", "h:x,1,0"])), "Hi"]
    code, out, err = cli(generate.main, ["--compile-cache", "none", *argv])
    if code == 0:
        sane_answer(code, out, err)
    else:
        one_line_error(code, err)


@settings(CLI, max_examples=int(os.environ.get("JAXLLM_FUZZ_EXAMPLES", 6)))
@given(data=st.data())
def test_chat(paths, cli, data):
    argv = data.draw(model_argv(paths))
    turns = data.draw(st.sampled_from([b"Hi\n", b"/system Be brief\nHi\n", b"/reset\n/exit\n", b'"""\nA\nB\n"""\n', b""]))
    code, out, err = cli(chat.main, ["--compile-cache", "none", *argv], turns)
    if code == 0:
        assert "Traceback" not in err, err
        assert out == "" or out.endswith("\n"), out
    else:
        one_line_error(code, err)


# --------------------------------------------------------------------------------------------------
# convert


def listing(folder) -> list[str] | None:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.is_dir() else None


@CLI
@given(data=st.data())
def test_convert(paths, cli, data, tmp_path_factory):
    out_root = tmp_path_factory.mktemp("out")
    (out_root / "full").mkdir()
    (out_root / "full" / "kept.txt").write_text("kept\n")
    (out_root / "a-file").write_text("a file\n")
    src = path_of(paths, data.draw(st.sampled_from(["bare"] * 6 + ["model", "missing", "file", "empty", ""])))
    dst = data.draw(st.sampled_from(["new", "new", "new/deeper", "full", "a-file", "a-file/below", "", "src", "inside", "ünï ✓"]))
    dst = {"": "", "src": src, "inside": os.path.join(src, "out")}.get(dst, str(out_root / dst))
    argv = [src, dst]
    flags = {"--dtype": st.sampled_from(["float32", "bfloat16", "float16", "int8", ""]),
             "--mesh": st.sampled_from(["tp=1", "tp=2", "tp=3", "", "auto"]),
             "--quantize": st.sampled_from(["int8", "int4", "gguf"]), "--group-size": st.sampled_from(["0", "-1", "8", "7"]),
             "--shard-size": FLOATS, "--revision": st.sampled_from(["main", ""])}
    for flag in data.draw(st.lists(st.sampled_from(sorted(flags)), max_size=3, unique=True)):
        argv += [flag, data.draw(flags[flag])]
    argv += data.draw(st.lists(st.sampled_from(["--to-hf", "--force", "--quantize-embeddings"]), max_size=2, unique=True))
    before, source = {name: listing(out_root / name) for name in ("full",)}, listing(paths.bare)
    code, out, err = cli(convert.main, argv)
    assert not [p for p in out_root.rglob(".*") if ".partial-" in p.name or ".old-" in p.name], "a hidden folder left behind"
    if code == 0:
        assert "Traceback" not in err and out.startswith("wrote "), (out, err)
        written = os.path.join(dst, "config.json")
        assert os.path.isfile(written), os.listdir(dst)
    else:
        one_line_error(code, err)
        assert {name: listing(out_root / name) for name in before} == before  # untouched
        if dst.startswith(str(out_root)) and not dst.endswith(("full", "a-file")):
            assert not os.path.lexists(dst), "a half-written output"
    assert listing(paths.bare) == source  # the source stays, whatever the output


# --------------------------------------------------------------------------------------------------
# inspect


@CLI
@given(data=st.data())
def test_inspect(paths, cli, data):
    argv = []
    if data.draw(st.integers(0, 5)):
        argv.append(path_of(paths, data.draw(st.sampled_from(["bare", "bare", "model", "missing", "file", "empty", ""]))))
    flags = {"--batch": INTS, "--context": INTS, "--quantize": st.sampled_from(["int8", "int4", "gguf"]),
             "--group-size": st.sampled_from(["0", "-1", "8", "7", "999999"]),
             "--kv-dtype": st.sampled_from(["int8", "float8_e4m3fn", "bfloat16"]), "--revision": st.sampled_from(["main", ""])}
    for flag in data.draw(st.lists(st.sampled_from(sorted(flags)), max_size=3, unique=True)):
        argv += [flag, data.draw(flags[flag])]
    argv += data.draw(st.lists(st.sampled_from(["--scan", "--list", "--quantize-embeddings"]), max_size=2, unique=True))
    code, out, err = cli(inspect.main, argv)
    if code in (0, 1):
        assert "Traceback" not in err and out.strip(), (out, err)
    else:
        one_line_error(code, err)


# --------------------------------------------------------------------------------------------------
# serve, up to where it would serve


@pytest.fixture
def serving(monkeypatch):
    """serve's app and HTTP server stand-ins (the serve extra need not be installed; nothing listens), and no warm-up
    compile: what reached the serving point is recorded."""
    served = []
    app = SimpleNamespace(state=SimpleNamespace(server=SimpleNamespace(tool_format=None)))
    monkeypatch.setattr(serve, "build_app", lambda model, engine, **kwargs: served.append(SimpleNamespace(engine=engine, **kwargs)) or app)
    monkeypatch.setattr(serve, "http_server", lambda app, **kwargs: SimpleNamespace(run=lambda: None))
    monkeypatch.setattr(serve, "warm_up", lambda engine: None)
    monkeypatch.setattr(serve, "handle_signals", lambda: None)
    return served


@CLI
@given(data=st.data())
def test_serve(paths, cli, serving, data):
    argv = data.draw(model_argv(paths, generating=False))
    flags = {"--batch-size": INTS, "--max-len": INTS, "--num-pages": INTS, "--page-size": INTS, "--max-queue": INTS,
             "--memory-fraction": FLOATS, "--max-request-bytes": INTS, "--shutdown-timeout": INTS,
             "--port": st.sampled_from(["8000", "0", "65536", "-1", "x", "53123"]),
             "--host": st.sampled_from(["127.0.0.1", "", " ", "no-such-host.invalid", "::1", "256.1.1.1"]),
             "--served-model-name": TEXTS, "--log-level": st.sampled_from(["INFO", "debug", "loud", ""]),
             "--chat-template-kwargs": st.sampled_from(['{"enable_thinking": false}', "null", "{"]),
             "--tool-call-parser": st.sampled_from(["auto", "none", "hermes", "x"])}
    for flag in data.draw(st.lists(st.sampled_from(sorted(flags)), max_size=4, unique=True)):
        argv += [flag, data.draw(flags[flag])]
    before = len(serving)
    code, out, err = cli(serve.main, ["--compile-cache", "none", "--no-warmup", *argv])
    if code == 0:
        assert len(serving) == before + 1 and "Traceback" not in err, err
        serving[-1].name.encode("utf-8")  # every JSON answer names it, in UTF-8
    else:
        one_line_error(code, err)


# --------------------------------------------------------------------------------------------------
# Defects the fuzzing found, each a row


@pytest.mark.parametrize("spec", ["dp=1", "tp=1", "tp=2", "dp=2,tp=2", "fsdp=2"])
def test_a_mesh_split_suggested_is_one_that_parses(spec):
    """--mesh dp=1 on 8 devices was told 'or keep this split with 'dp=8,dp=1'', which is refused (dp twice); and
    'needs 1 devices'."""
    from jaxllm.errors import ConfigError
    from sharding.mesh import parse_spec

    with pytest.raises(ConfigError) as refused:
        parse_spec(spec, 8)
    said = str(refused.value)
    assert "needs 1 devices" not in said, said
    for kept in re.findall(r"keep this split with '([^']+)'", said):
        assert math.prod(parse_spec(kept, 8).values()) == 8, said


def test_served_model_name_of_undecodable_bytes_is_refused(paths, cli, serving):
    """--served-model-name $'\\xff': taken, and every answer naming the model (GET /v1/models, each completion) failed
    to encode as UTF-8 (a 500)."""
    code, out, err = cli(serve.main, ["--compile-cache", "none", "--no-warmup", "--model", str(paths.model), "--served-model-name", "m\udcff"])
    one_line_error(code, err)
    assert "--served-model-name" in err and "not UTF-8" in err and serving == [], err


def test_a_model_path_of_undecodable_bytes_is_served_under_a_printable_name(paths, cli, serving):
    """--model a folder whose name is not UTF-8 (another system's path), no --served-model-name: the path was the name,
    and every answer naming it failed to encode."""
    link = paths.root / os.fsdecode(b"model-\xff")
    if not link.exists():
        link.symlink_to(paths.bare)  # no tokenizer: the tokenizers library opens no such path
    code, out, err = cli(serve.main, ["--compile-cache", "none", "--no-warmup", "--model", str(link)])
    assert code == 0, err
    assert serving[-1].name == str(paths.root / "model-\\xff"), serving[-1].name
    serving[-1].name.encode("utf-8")
