"""python -m jaxllm.chat: the turn logic on a stand-in model (history, commands, Ctrl-C), and one
conversation with the real model driven through a pipe."""

import io
import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

from jaxllm import chat, generate
from jaxllm.sampling import SamplingParams


def test_messages_put_the_history_between_system_and_user():
    history = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
    assert chat.messages("Be brief.", history, "And you?") == [
        {"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": "And you?"}]
    assert chat.messages(None, [], "Hi") == [{"role": "user", "content": "Hi"}]


class StandIn:
    """A model that answers "answer N" a word at a time and records the conversations it was given;
    `ctrl_c_at`: the word at which the user presses Ctrl-C (a real SIGINT); `finish`: how its answers
    end ("length": cut by max_new_tokens). Its template renders each message as one character and
    its content; its tokenizer gives one id per character."""

    def __init__(self, ctrl_c_at=None, finish="stop"):
        self.seen, self.ctrl_c_at, self.finish, self.prompts = [], ctrl_c_at, finish, []
        self.tokenizer = self
        self.config = SimpleNamespace(max_position_embeddings=1024, context_length=1024)

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        self.seen.append(messages)
        return "".join("x" + m["content"] for m in messages)

    def __call__(self, text, add_special_tokens):  # the tokenizer: one id per character
        return {"input_ids": list(range(len(text)))}

    def generate(self, ids, params, engine, on_text, on_token):
        self.prompts.append(self.seen[-1])
        for i, word in enumerate(["answer ", str(len(self.seen))]):
            if i == self.ctrl_c_at:
                signal.raise_signal(signal.SIGINT)
            on_token(0, [i])
            on_text(0, word)
        return SimpleNamespace(finish_reason=self.finish)


@pytest.fixture
def session(monkeypatch):
    monkeypatch.setattr(chat, "Engine", lambda *args, **kwargs: None)
    return lambda model, system=None: chat.Chat(model, SamplingParams(), system)


def test_turns_commands_and_history(session, capsys):
    model, out = StandIn(), io.StringIO()
    talk = session(model, system="Be brief.")
    for line in ["Hi", "", "And now?", "/system Be a pirate.", "Ahoy", "/reset", "/what", "Again", "/exit"]:
        if not talk.handle(line, out):
            break
    assert out.getvalue() == "answer 1\nanswer 2\nanswer 4\nanswer 5\n"  # seen[2]: /system's trial of the template
    assert model.seen[1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                             {"role": "assistant", "content": "answer 1"}, {"role": "user", "content": "And now?"}]
    assert model.seen[2][0] == {"role": "system", "content": "Be a pirate."}
    assert model.seen[3] == [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Ahoy"}]
    assert model.seen[4] == [{"role": "system", "content": "Be a pirate."}, {"role": "user", "content": "Again"}]
    err = capsys.readouterr().err
    assert "unknown command /what" in err and err.count("[prompt tokens") == 4


def _size(messages):
    """Tokens of `messages` as StandIn renders them: a character and the content each."""
    return sum(1 + len(m["content"]) for m in messages)


@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("lengths", [[5] * 8, [3, 3, 3, 25], [20, 2, 2, 2], [5, 16, 12]])
def test_a_conversation_that_outgrows_the_context_drops_its_oldest_turns(monkeypatch, capsys, system, lengths):
    """A turn whose conversation plus an answer of --max-new-tokens would pass the chat's context
    drops the conversation's oldest turns, as few as bring the prompt down to KEEP of the room (the
    newest turn stays if it fits), keeps the system message, and says how many in one note; the
    history forgets them for good. It refused the turn (and every later one) until /reset, which a
    long conversation always reached; then it dropped as few as made room, so that every later turn
    dropped one more and recomputed the whole prompt (test_dropping_turns_leaves_a_prefix_the_next_turns_reuse)."""
    monkeypatch.setattr(chat, "Engine", lambda *args, **kwargs: None)
    model, out, context = StandIn(), io.StringIO(), 48
    talk = chat.Chat(model, SamplingParams(max_new_tokens=4), system, context=context)
    head = [{"role": "system", "content": system}] if system else []
    whole, drops = [], 0  # every turn so far: the user's messages and the answers
    for n, length in enumerate(lengths):
        user, before = chr(ord("a") + n) * length, list(talk.history)
        talk.handle(user, out)
        prompt = model.prompts[-1]
        kept = prompt[len(head) : -1]
        assert prompt[: len(head)] == head and prompt[-1] == {"role": "user", "content": user}
        assert len(kept) % 2 == 0 and kept == whole[len(whole) - len(kept) :]  # the newest turns, whole
        assert _size(prompt) + 4 <= context  # room for the answer
        dropped, room = (len(before) - len(kept)) // 2, context - 4
        if dropped:  # down to KEEP of the room (or the newest turn), and no further
            assert _size(prompt) <= chat.KEEP * room or len(kept) <= 2
            assert _size(head + before[-len(kept) - 2 :] + [prompt[-1]]) > chat.KEEP * room
        note = capsys.readouterr().err
        turns = "oldest turn was" if dropped == 1 else f"{dropped} oldest turns were"
        assert (f"note: the conversation outgrew this chat's context of {context} tokens: its {turns} dropped "
                "(/reset starts anew)\n" in note) == (dropped > 0), note
        drops += dropped
        whole += [prompt[-1], {"role": "assistant", "content": out.getvalue().splitlines()[-1]}]
        assert talk.history == kept + whole[-2:]
    assert drops > 0


@pytest.mark.parametrize("system", [None, "Be brief."])
@pytest.mark.parametrize("earlier", [[], ["Hi", "And now?"]])
def test_a_message_longer_than_the_context_is_refused_and_the_chat_goes_on(monkeypatch, capsys, system, earlier):
    """A message that does not fit with an answer even alone is refused in one line naming the sizes
    and the fix (a shorter message: /reset, which it named, cannot help), not the engine's "raise
    max_len" (no flag of the chat sets it); the conversation is kept and the next turn carries it."""
    monkeypatch.setattr(chat, "Engine", lambda *args, **kwargs: None)
    model, out = StandIn(), io.StringIO()
    talk = chat.Chat(model, SamplingParams(max_new_tokens=4), system, context=64)
    for line in earlier:
        talk.handle(line, out)
    history, answered = list(talk.history), len(model.prompts)
    capsys.readouterr()
    talk.handle("y" * 60, out)
    size = 61 + (10 if system else 0)
    assert capsys.readouterr().err == (f"error: this message holds {size} tokens{' with the system message' if system else ''}, "
                                       "and an answer may take 4 more (--max-new-tokens): more than this chat's context "
                                       "of 64 tokens: send a shorter one\n")
    assert talk.history == history and len(model.prompts) == answered
    talk.handle("Again", out)
    assert model.prompts[-1] == chat.messages(system, history, "Again")


@pytest.mark.parametrize("line, note", [
    ("/", "unknown command /: the commands are"),
    ("/foo bar", "unknown command /foo: the commands are"),
    ("/Reset", "unknown command /Reset (did you mean /reset?): the commands are"),
    ("/sytem Be a pirate.", "unknown command /sytem (did you mean /system?): the commands are"),
    ("/reset now", "error: /reset takes nothing after it: send /reset alone"),
    ("/help me", "error: /help takes nothing after it: send /help alone"),
    ("/exit now", "error: /exit takes nothing after it: send /exit alone"),
    ("/quit\tnow", "error: /quit takes nothing after it: send /quit alone"),
    pytest.param("/system " + "z" * 2000, "error: the system message holds 2,007 tokens with a first message, and an answer may take "
                              "256 more (--max-new-tokens): more than this chat's context of 1,024 tokens: use a shorter "
                              "one; the system message is unchanged", id="/system-too-long"),
    ("", None), ("   ", None), ("\t \u3000", None),
])
def test_a_line_of_a_command_or_blank_is_no_message_and_changes_nothing_else(session, capsys, line, note):
    """Blank lines are skipped; '/' alone, unknown and misspelt commands, arguments to a command that
    takes none ('/reset now' reset, '/exit now' quit, '/' went to the model as a message) and a
    system message that fills the context are one line each, and the conversation is unchanged."""
    model, out = StandIn(), io.StringIO()
    talk = session(model, system="Be brief.")
    talk.handle("Hi", out)
    history = list(talk.history)
    capsys.readouterr()
    assert talk.handle(line, out)
    assert len(model.prompts) == 1 and talk.history == history and talk.system == "Be brief."
    err = capsys.readouterr().err
    assert err.startswith(note) and err.count("\n") == 1 if note else err == "", err


@pytest.mark.parametrize("line, system", [("/system", None), ("/system   Be a pirate.  ", "Be a pirate."),
                                          ("/system\tBe a pirate.", "Be a pirate.")])
def test_system_sets_or_removes_the_system_message_and_resets(session, capsys, line, system):
    """/system alone removes the system message; a tab after /system is a separator too (the line
    went to the model as a message)."""
    model, out = StandIn(), io.StringIO()
    talk = session(model, system="Be brief.")
    talk.handle("Hi", out)
    assert talk.handle(line, out) and talk.system == system and talk.history == []
    talk.handle("Again", out)
    assert model.prompts[-1] == chat.messages(system, [], "Again")
    assert f"system message {'set' if system else 'removed'}; the conversation is reset" in capsys.readouterr().err


@pytest.mark.parametrize("finish, mark", [("length", " [cut: --max-new-tokens 4]"), ("stop", "")])
def test_an_answer_cut_by_max_new_tokens_is_marked_and_the_chat_goes_on(monkeypatch, capsys, finish, mark):
    """An answer that --max-new-tokens cut ends in a mark saying so on stderr (it ended mid-sentence
    with no sign); stdout and the history keep the text shown, and the next turn carries it."""
    monkeypatch.setattr(chat, "Engine", lambda *args, **kwargs: None)
    model, out = StandIn(finish=finish), io.StringIO()
    talk = chat.Chat(model, SamplingParams(max_new_tokens=4))
    talk.handle("Hi", out)
    talk.handle("Go on", out)
    assert out.getvalue() == "answer 1\nanswer 2\n"
    err = capsys.readouterr().err
    assert err.count(f"{mark}\n[prompt tokens") == 2 if mark else "[cut" not in err, err
    assert model.prompts[1][1] == {"role": "assistant", "content": "answer 1"}


class NoSystem(StandIn):
    """A model whose chat template refuses a system message, as Gemma's does."""

    def apply_chat_template(self, messages, tokenize, add_generation_prompt):
        import jinja2

        if messages[0]["role"] == "system":
            raise jinja2.TemplateError("System role not supported")
        return super().apply_chat_template(messages, tokenize, add_generation_prompt)


def test_a_template_that_refuses_the_system_message_refuses_system_not_every_turn(session, capsys):
    model, out = NoSystem(), io.StringIO()
    talk = session(model)
    for line in ["/system Be brief.", "Hi"]:
        talk.handle(line, out)
    assert out.getvalue() == "answer 1\n" and talk.system is None  # the turn ran without the refused message
    assert "System role not supported; the system message is unchanged" in capsys.readouterr().err


def test_system_flag_that_the_template_refuses_exits_2_at_start(monkeypatch, capsys):
    from jaxllm import progress

    model = NoSystem()
    model.chat_template = "{{ raise_exception('System role not supported') }}"  # has_chat_template reads it
    monkeypatch.setattr(progress, "load_model", lambda args: model)
    monkeypatch.setattr(progress, "sampling_params", lambda args: SamplingParams())
    assert chat.run_session(SimpleNamespace(system="Be brief.", chat_template_kwargs=None)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "System role not supported: drop --system" in err


UNFINISHED = 'note: the input ended inside a """ message: it is sent as it is'


@pytest.mark.parametrize("data, messages, note", [
    (b"Hi\n\xff\xfe\x80bad\nAgain\n/exit\nnever\n", ["Hi", "Again"],
     "error: that line is not UTF-8 text (byte 1: 0xff): it was skipped"),
    (b"Hi\nAgain", ["Hi", "Again"], None),  # the input ends mid-line
    (b"Hi\r\n\r\nAgain\r\n", ["Hi", "Again"], None),
    (b'"""\nline one\n  /reset is text here\n\n"""\nAgain\n', ["line one\n  /reset is text here", "Again"], None),
    (b'"""one line"""\n', ["one line"], None),
    (b'\xef\xbb\xbf  """first\r\nsecond"""\nAgain\n', ["first\nsecond", "Again"], None),
    (b'"""\n"""\nHi\n', ["Hi"], None),
    (b'Hi\n"""\nunfinished\nblock', ["Hi", "unfinished\nblock"], UNFINISHED),
])
def test_the_input_lines_make_the_messages(session, capsys, data, messages, note):
    """Each line is a message, a \"\"\" block of lines one message (they were a message each, the
    block's /commands run); bytes that are not UTF-8 are one line saying so, and the session goes on."""
    model, out = StandIn(), io.StringIO()
    session(model).run(io.TextIOWrapper(io.BytesIO(data)), out)
    assert [m[-1]["content"] for m in model.prompts] == messages
    assert out.getvalue().count("\n") == len(messages)
    err = capsys.readouterr().err
    assert "Traceback" not in err and (note in err if note else "note" not in err and "error" not in err), err


@pytest.mark.parametrize("at, shown", [(1, "answer "), (0, "")])
def test_ctrl_c_stops_the_answer_not_the_chat(session, capsys, at, shown):
    """What was shown joins the history; an answer stopped before any text drops its turn (it joined
    the history as an empty answer)."""
    model, out = StandIn(ctrl_c_at=at), io.StringIO()
    talk = session(model)
    previous = signal.getsignal(signal.SIGINT)
    assert talk.handle("Hi", out) and talk.handle("Go on", out)
    assert out.getvalue() == f"{shown}\n" * 2
    err = capsys.readouterr().err
    assert err.count(f"{' ' if shown else ''}[stopped]\n[prompt tokens") == 2, err
    turn = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": shown}] if shown else []
    assert model.prompts[1] == [*turn, {"role": "user", "content": "Go on"}]
    assert signal.getsignal(signal.SIGINT) is previous


def test_generate_without_a_prompt_on_a_terminal_chats(monkeypatch):
    started = []
    monkeypatch.setattr(os, "environ", dict(os.environ))  # what the command line sets stays in this test
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr(chat, "run_session", lambda args: started.append(args.temperature) or 0)
    assert generate.main(["--temperature", "0.5", "--compile-cache", "none"]) == 0
    assert started == [0.5]


def test_chat_through_a_pipe(tmp_path):
    """The default model, greedy: an answer, a follow-up that carries the history, /system, /reset, /exit."""
    lines = ["What is the capital of France?", "Say that again.", "/system You are a helpful assistant.",
             "What is the capital of France?", "/reset", "What is the capital of France?", "/exit", "never read"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), JAXLLM_TOKENIZER_CACHE=str(tmp_path / "tok"))
    out = subprocess.run([sys.executable, "-m", "jaxllm.chat", "--max-new-tokens", "16"], input="\n".join(lines) + "\n",
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr[-3000:]
    answers = out.stdout.splitlines()
    stats = [tuple(map(int, m)) for m in re.findall(r"\[prompt tokens (\d+) \| new tokens (\d+)", out.stderr)]
    assert len(answers) == len(stats) == 4, (out.stdout, out.stderr)
    assert "Paris" in answers[0]
    assert stats[1][0] > stats[0][0] + stats[0][1]  # the second prompt holds the first turn
    assert stats[3] == stats[2] and answers[3] == answers[2]  # /reset: the same first turn, under the same system message


def test_generate_no_chat_without_a_prompt_on_a_terminal_does_not_chat(monkeypatch, capsys):
    """--no-chat says: no chat template. With no prompt on a terminal it was ignored and the chat
    (through the template) started; for a model without a template the chat's own error then
    pointed back at --no-chat, a loop. It is a one-line error naming where prompts come from."""
    monkeypatch.setattr(os, "environ", dict(os.environ))
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: True))
    monkeypatch.setattr(chat, "run_session", lambda args: pytest.fail("--no-chat started a chat"))
    assert generate.main(["--no-chat", "--compile-cache", "none"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines() == [err] and err.startswith("error: no prompt: --no-chat takes the prompt as an argument"), err


@pytest.mark.parametrize("max_new, system, error", [
    (1024, None, "error: --max-new-tokens 1,024 leaves no room for a message in this chat's context of 1,024 tokens: "
                 "use at most 1,023"),
    (256, "z" * 800, "error: --system: the system message holds 807 tokens with a first message, and an answer may take "
                     "256 more (--max-new-tokens): more than this chat's context of 1,024 tokens: use a shorter one"),
])
def test_a_context_with_no_room_for_a_message_exits_2_at_start(monkeypatch, capsys, max_new, system, error):
    """--max-new-tokens or a --system message that leaves no room for any message in the chat's
    context: one line at start (exit 2), not the chat opening and then refusing every message typed."""
    from jaxllm import progress

    model = StandIn()
    model.chat_template = "{{ messages }}"  # has_chat_template reads it
    monkeypatch.setattr(chat, "Engine", lambda *args, **kwargs: None)
    monkeypatch.setattr(progress, "load_model", lambda args: model)
    monkeypatch.setattr(progress, "sampling_params", lambda args: SamplingParams(max_new_tokens=max_new))
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hi\n"))
    assert chat.run_session(SimpleNamespace(system=system, chat_template_kwargs=None)) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == error + "\n", captured


@pytest.mark.parametrize("command", ["/quit", "/exit"])
def test_help_lists_every_command(session, command, capsys):
    """/help (and an unknown command) lists the commands, /quit among them: it quit without being listed."""
    talk = session(StandIn())
    assert talk.handle("/help", io.StringIO()) and talk.handle("/what", io.StringIO())
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(command in line and "/reset" in line and "/system TEXT" in line for line in err), err
    assert not talk.handle(command, io.StringIO())
    assert command in chat.COMMANDS


def _terminal_session(monkeypatch, model, keys):
    """run_session on `model` at a terminal whose user types `keys` (a KeyboardInterrupt: Ctrl-C)."""
    from jaxllm import progress

    model.chat_template = "{{ messages }}"  # has_chat_template reads it
    monkeypatch.setattr(chat, "Engine", lambda *args, **kwargs: None)
    monkeypatch.setattr(progress, "load_model", lambda args: model)
    monkeypatch.setattr(progress, "sampling_params", lambda args: SamplingParams(max_new_tokens=4))
    monkeypatch.setattr(sys, "stdin", SimpleNamespace(isatty=lambda: True))
    typed = iter(keys)

    def type_in(prompt=""):
        key = next(typed)
        if isinstance(key, type) and issubclass(key, BaseException):
            raise key
        return key

    monkeypatch.setattr("builtins.input", type_in)
    return chat.run_session(SimpleNamespace(system=None, chat_template_kwargs=None))


def test_ctrl_c_at_the_prompt_exits_130(monkeypatch, capsys):
    """Ctrl-C at the prompt is a user interrupt: exit 130 (as shells expect) with one line, no
    traceback; it exited 0, as the end of the input does (Ctrl-D: still 0)."""
    assert _terminal_session(monkeypatch, StandIn(), ["Hi", KeyboardInterrupt]) == 130
    captured = capsys.readouterr()
    assert captured.out == "answer 2\n\n"  # (seen[0]: the start's trial of the template) the prompt's line ended, so the shell's prompt starts on its own
    assert captured.err.splitlines()[-1] == "interrupted" and "Traceback" not in captured.err
    assert _terminal_session(monkeypatch, StandIn(), ["Hi", EOFError]) == 0


class CtrlCTwice(StandIn):
    """A model at whose second word the user presses Ctrl-C twice: the second interrupts the chat."""

    def generate(self, ids, params, engine, on_text, on_token):
        on_token(0, [0])
        on_text(0, "answer ")
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGINT)
        on_text(0, "never")


def test_a_second_ctrl_c_mid_answer_exits_130_on_its_own_line(monkeypatch, capsys):
    assert _terminal_session(monkeypatch, CtrlCTwice(), ["Hi", "never read"]) == 130
    captured = capsys.readouterr()
    assert captured.out == "answer \n" and captured.err == "interrupted\n", captured


@pytest.mark.parametrize("keys, code", [(['"""', "a", 'b"""', EOFError], 0), (['"""', "a", KeyboardInterrupt], 130)])
def test_a_block_typed_at_a_terminal_is_one_message(monkeypatch, keys, code):
    model = StandIn()
    assert _terminal_session(monkeypatch, model, keys) == code
    assert [m[-1]["content"] for m in model.prompts] == (["a\nb"] if code == 0 else [])


class Tiny(StandIn):
    """StandIn's chat template over the tiny Llama, through the chat's real engine: one id per
    character (its code modulo the vocabulary), and answers whose text renders back to the ids the
    engine generated, as a real tokenizer's does."""

    def __call__(self, text, add_special_tokens):
        return {"input_ids": [ord(c) % 128 for c in text]}

    def generate(self, ids, params, engine, on_text, on_token):
        from jaxllm.serving.requests import Request

        for ev in engine.run([Request(ids, params.resolved())]):
            on_token(0, ev.tokens)
            on_text(0, "".join(chr(256 + t) for t in ev.tokens))
        return SimpleNamespace(finish_reason=ev.finish_reason)


def test_dropping_turns_leaves_a_prefix_the_next_turns_reuse(llama, monkeypatch, capsys):
    """Over N turns at the context's limit, the tokens the engine computes (its prompts' tokens less
    their prefix-cache hits) are O(turn + context / k) a turn, not O(context): a drop changes the prompt's
    beginning, so the whole prompt is computed again, and dropping as few turns as made room did that
    at most turns (9 of 12 here: 2,202 tokens); down to KEEP of the room, the next k turns append to a
    prefix the cache holds (3 drops: 640 tokens)."""
    from jaxllm.engine import Engine

    monkeypatch.setattr(chat, "Engine", lambda model, **kwargs: Engine(llama, **kwargs))
    context, new, turns, page = 256, 4, 12, 16
    talk = chat.Chat(Tiny(), SamplingParams(max_new_tokens=new, ignore_eos=True), "Be brief.", context=context)
    turn = 1 + 24 + 1 + new  # a message ("x" and 24 characters) and its answer
    talk.history = [{"role": role, "content": f"{i:02}" + "h" * 22} for i in range(16) for role in ("user", "assistant")]
    stats, room = talk.engine.blocks.stats, context - new
    talk.handle("To the limit." + "m" * 11, io.StringIO())  # the seeded history is computed once, with a drop
    computed, drops = [], 0
    for n in range(turns):
        before = stats.lookup_tokens - stats.hit_tokens
        talk.handle(f"{n:02}" + "q" * 22, io.StringIO())
        computed.append(stats.lookup_tokens - stats.hit_tokens - before)
        dropped = "oldest turn" in capsys.readouterr().err
        drops += dropped
        assert dropped or computed[-1] < turn + page, computed  # the turns between drops: only what is new
    k = int((1 - chat.KEEP) * room) // turn  # the turns that fit between drops
    assert 0 < drops <= turns // k + 1 and sum(computed) <= turns * (turn + page) + drops * chat.KEEP * room, computed
