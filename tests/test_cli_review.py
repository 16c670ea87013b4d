"""The command lines against a demanding user's inputs and outputs: stdin or stdout closed, an
output that cannot be written, files and pipes that start with a byte order mark. A stand-in model
answers, so nothing is loaded or compiled."""

import errno
import io
import os
import sys
from types import SimpleNamespace

import pytest

from jaxllm import chat, generate, progress
from jaxllm.generation import encode, encode_messages


class StandIn:
    """A model with a chat template that answers "answer N" a word at a time; it records the
    conversations and prompts it was given."""

    chat_template = "stand-in"
    generation_config = None

    def __init__(self):
        self.seen, self.prompts = [], []
        self.finish_order, self.written = None, []  # the order prompts finish in; stdout after each
        self.errors = {}  # prompt index -> the one line of a request that ended in "error" (non-finite logits)
        self.tokenizer = self
        self.config = SimpleNamespace(context_length=1024)

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.seen.append(messages)
        return "x" * len(messages)

    def __call__(self, text, add_special_tokens):  # the tokenizer: one id per character
        return {"input_ids": list(range(len(text)))}

    def generate(self, prompts, params, chat=None, system=None, chat_template_kwargs=None, engine=None, on_text=None, on_token=None, on_finish=None):
        self.prompts.append(prompts)
        for i, word in enumerate(["answer ", str(len(self.seen))]):
            on_token(0, [i])
            on_text(0, word)
        results = [SimpleNamespace(text=f"answer {i}", prompt_tokens=1, finish_reason="stop", error=None) for i in range(len(prompts))]
        for i, why in self.errors.items():
            results[i].finish_reason, results[i].error = "error", why
        for i in (self.finish_order or range(len(prompts))) if on_finish else ():
            on_finish(i, results[i])
            self.written.append(sys.stdout.getvalue() if isinstance(sys.stdout, io.StringIO) else None)
        return results[0] if prompts and isinstance(prompts[0], int) else results  # one prompt's ids (the chat's): one


@pytest.fixture
def stand_in(monkeypatch):
    """generate's and chat's model: the stand-in (loading it is counted)."""
    model, loads = StandIn(), []
    monkeypatch.setattr(progress, "load_model", lambda args: loads.append(args) or model)
    monkeypatch.setattr(chat, "Engine", lambda *args, **kwargs: None)
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what the command line sets stays in this test
    return SimpleNamespace(model=model, loads=loads)


def test_chat_with_stdin_closed_is_one_line_before_loading(stand_in, monkeypatch, capsys):
    """`python -m jaxllm.chat <&-`: no input to read turns from. It was an AttributeError
    traceback, after the model had loaded."""
    monkeypatch.setattr(sys, "stdin", None)
    assert chat.main(["--compile-cache", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "stdin" in err, err
    assert stand_in.loads == []


class Disk(io.RawIOBase):
    """A file on a disk that fills up: writes fail with ENOSPC while `full`."""

    def __init__(self):
        self.full, self.data = True, b""

    def writable(self):
        return True

    def write(self, b):
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.data += bytes(b)
        return len(b)


@pytest.mark.parametrize("argv", [["Hi"], ["--no-stream", "Hi"]])
def test_generate_to_a_full_disk_is_one_line(stand_in, monkeypatch, capsys, argv):
    """`python -m jaxllm.generate "Hi" > /dev/full`: the answer cannot be written. It was an
    OSError traceback (from the stream's write, or run_cli's flush under --no-stream)."""
    disk = Disk()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(disk), encoding="utf-8"))
    try:
        assert generate.main(["--compile-cache", "none", *argv]) == 2
    finally:
        disk.full = False  # what is left in the buffer may go now
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "stdout" in err and "No space left on device" in err, err


def test_chat_to_a_full_disk_is_one_line(stand_in, monkeypatch, capsys):
    disk = Disk()
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hi\nAgain\n")))
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BufferedWriter(disk), encoding="utf-8"))
    try:
        assert chat.main(["--compile-cache", "none"]) == 2
    finally:
        disk.full = False
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "stdout" in err and "No space left on device" in err, err
    assert len(stand_in.model.prompts) == 1  # the chat ends at the first answer it cannot write


@pytest.mark.parametrize("main", [generate.main, chat.main])
def test_stdout_closed_is_one_line_before_loading(stand_in, monkeypatch, capsys, main):
    """`... >&-`: nowhere to write the answer. It was an AttributeError traceback once the model
    had loaded and answered."""
    monkeypatch.setattr(sys, "stdout", None)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hi\n")))
    assert main(["--compile-cache", "none", "Hi"] if main is generate.main else ["--compile-cache", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "stdout" in err, err
    assert stand_in.loads == []


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_a_byte_order_mark_is_not_part_of_the_first_prompt(stand_in, monkeypatch, tmp_path, source):
    """A prompts file saved as 'UTF-8 with BOM' (Windows Notepad, PowerShell's Out-File): the
    first prompt began with U+FEFF, three more tokens in SmolLM2's tokenizer than the line's
    text, so it was answered as another prompt than the one written."""
    data = b"\xef\xbb\xbfHi\r\n\r\n  \r\nBye\r\n"
    argv = ["--compile-cache", "none", "--no-stream"]
    if source == "file":
        (tmp_path / "p.txt").write_bytes(data)
        argv += ["--batch-file", str(tmp_path / "p.txt")]
    else:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    assert generate.main(argv) == 0
    assert stand_in.model.prompts == [["Hi", "Bye"]]


def test_a_byte_order_mark_does_not_reach_the_chat(stand_in, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("\ufeff/help\nHi \ufeff\n".encode())))
    assert chat.main(["--compile-cache", "none"]) == 0
    assert "the commands are" in capsys.readouterr().err  # /help, not a user turn
    assert [m[-1]["content"] for m in stand_in.model.seen[1:]] == ["Hi \ufeff"]  # seen[0]: the template's trial


def test_an_empty_system_message_is_a_turn_not_the_templates_default(smollm2, stand_in, monkeypatch):
    """--system '' is how a user drops a template's default system prompt (SmolLM2's 'You are a
    helpful AI assistant named SmolLM...'): it was taken as no system message, so the default
    came back without a word. An empty system turn is rendered as the template renders it."""
    user, empty = {"role": "user", "content": "Hi"}, {"role": "system", "content": ""}
    ids = encode(smollm2, "Hi", chat=True, system="")
    assert ids == encode_messages(smollm2, [empty, user]) != encode(smollm2, "Hi", chat=True)
    assert "SmolLM" not in smollm2.decode(ids) and "SmolLM" in smollm2.decode(encode(smollm2, "Hi", chat=True))
    assert chat.messages("", [], "Hi") == [empty, user]
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hi\n")))
    assert chat.main(["--compile-cache", "none", "--system", ""]) == 0
    assert stand_in.model.seen[-1] == [empty, user]


def test_chat_on_a_checkpoint_without_a_tokenizer_says_so(stand_in, monkeypatch, capsys):
    """A folder of weights and config.json alone: the chat said its tokenizer had no chat
    template, and to use --no-chat for plain text, which needs the tokenizer as well."""
    stand_in.model.tokenizer = None
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hi\n")))
    assert chat.main(["--compile-cache", "none"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no tokenizer" in err and "tokenizer.json" in err, err


def test_a_batchs_answers_are_written_as_they_finish_in_order(stand_in, monkeypatch, tmp_path, capsys):
    """--batch-file with many prompts printed nothing until the whole batch was done. Each answer
    is now written once it and every answer before it are done, in the prompts' order."""
    (tmp_path / "p.txt").write_text("a\nb\nc\nd\n")
    monkeypatch.setattr(sys, "stdout", io.StringIO())
    stand_in.model.finish_order = [1, 0, 3, 2]
    assert generate.main(["--compile-cache", "none", "--batch-file", str(tmp_path / "p.txt")]) == 0
    first, second = "### 1\nanswer 0\n", "### 2\nanswer 1\n"
    assert stand_in.model.written == ["", first + second, first + second, first + second + "### 3\nanswer 2\n### 4\nanswer 3\n"]
    assert sys.stdout.getvalue() == stand_in.model.written[-1]


@pytest.mark.parametrize("command", ["generate", "chat", "serve"])
@pytest.mark.parametrize("value", ["", " "])
def test_compile_cache_given_empty_is_refused(command, value, capsys, monkeypatch):
    """--compile-cache '' (an unset shell variable) turned the cache off silently; README: a flag given empty is refused.
    An empty $JAXLLM_COMPILE_CACHE is the variable left unset: the default folder."""
    import importlib

    module = importlib.import_module(f"jaxllm.{command}")
    with pytest.raises(SystemExit) as info:
        module.parser().parse_args(["--compile-cache", value])
    assert info.value.code == 2
    message = " ".join(capsys.readouterr().err.split())
    assert "error: argument --compile-cache: " in message and "is empty: give a folder, or 'none'" in message, message
    monkeypatch.setenv("JAXLLM_COMPILE_CACHE", value)
    from jaxllm import runtime

    assert module.parser().parse_args([]).compile_cache == runtime.DEFAULT_COMPILE_CACHE


@pytest.mark.parametrize("revision", ["v2", "main"])
def test_inspect_takes_revision_to_the_checkpoint(revision, gguf_path, capsys):
    """inspect --revision reaches the checkpoint's resolution (README: --revision picks a hub id's version); inspect had
    no such flag, so a hub model's other revision could not be inspected. A local file refuses any revision."""
    from jaxllm import inspect

    assert inspect.main([str(gguf_path), "--revision", revision]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith(f"error: --revision '{revision}' picks a version of a hub repo, but ") and "drop --revision" in err, err


@pytest.mark.parametrize("prompts, errors, want", [
    (["hi"], {0: "the model's logits are NaN/inf at token 1 of request 0: ..."}, "error: the model's logits are NaN/inf at token 1"),
    (["a", "b", "c"], {1: "why", 2: "why"}, "error: prompt 2 (2 of 3 failed): why"),
])
def test_a_prompt_that_ended_in_error_exits_2_with_its_line(stand_in, tmp_path, capsys, prompts, errors, want):
    """finish_reason "error" (logits NaN/Inf) printed the text and exited 0: now the reason, one line, exit 2."""
    stand_in.model.errors = errors
    (tmp_path / "p.txt").write_text("\n".join(prompts) + "\n")
    assert generate.main(["--compile-cache", "none", "--batch-file", str(tmp_path / "p.txt")]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith(want), err


def test_a_chat_answer_that_ended_in_error_says_why_and_is_not_kept(stand_in, monkeypatch, capsys):
    """A turn whose logits turned NaN/Inf ended silently and its partial answer joined the history."""
    stand_in.model.errors = {0: "the model's logits are NaN/inf at token 2 of request 0: ..."}
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"Hi\nAgain\n")))
    assert chat.main(["--compile-cache", "none"]) == 0
    err = capsys.readouterr().err
    assert err.count("error: the model's logits are NaN/inf at token 2 of request 0: ... (the answer is not kept)") == 2, err
    assert stand_in.model.seen[-1] == [{"role": "user", "content": "Again"}]  # neither the failed turn nor its answer
