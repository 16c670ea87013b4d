"""The command lines against a demanding user's inputs and outputs: stdin or stdout closed, an
output that cannot be written, files and pipes that start with a byte order mark. A stand-in model
answers, so nothing is loaded or compiled."""

import os
import sys
from types import SimpleNamespace

import pytest

from jaxllm import chat, progress


class StandIn:
    """A model with a chat template that answers "answer N" a word at a time; it records the
    conversations and prompts it was given."""

    chat_template = "stand-in"
    generation_config = None

    def __init__(self):
        self.seen, self.prompts = [], []
        self.tokenizer = self
        self.config = SimpleNamespace(context_length=1024)

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.seen.append(messages)
        return "x" * len(messages)

    def __call__(self, text, add_special_tokens):  # the tokenizer: one id per character
        return {"input_ids": list(range(len(text)))}

    def generate(self, prompts, params, chat=None, system=None, engine=None, on_text=None, on_token=None):
        self.prompts.append(prompts)
        for i, word in enumerate(["answer ", str(len(self.seen))]):
            on_token(0, [i])
            on_text(0, word)
        return [SimpleNamespace(text="answer", prompt_tokens=1)] * (1 if isinstance(prompts, list) else 1)


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
