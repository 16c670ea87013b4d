"""`python -m jaxllm.chat`: a conversation with a model, through its chat template.

    python -m jaxllm.chat --model HuggingFaceTB/SmolLM2-360M-Instruct --temperature 0.7
    printf 'What is the capital of France?\\nAnd of Italy?\\n' | python -m jaxllm.chat

Each answer streams as it is generated; a stats line follows on stderr. /reset forgets the
conversation, /system TEXT sets the system message (and resets), /exit, /quit or the end of the
input quits, /help lists the commands. Each line is one user turn; a message of several lines goes
between \"\"\" and \"\"\". A conversation that outgrows the context drops its oldest turns (the system
message stays) with a note: down to half the context, so that the next turns reuse the engine's
cache of the rest. An answer cut by --max-new-tokens ends in [cut]; Ctrl-C stops an answer
([stopped]) and the chat goes on; at the prompt it quits (exit code 130). stdout holds only the
answers' text (the marks go to stderr). The flags are generate's that apply (model, dtype, mesh, sampling, stop strings, system
message, compile cache), from one parser;
`python -m jaxllm.generate` with no prompt on a terminal starts this chat.

One engine serves the whole conversation, so its prefix cache keeps the history's KV pages and a
turn computes only what is new.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import signal
import sys

from jaxllm import progress
from jaxllm.chat_template import encode_messages, has_chat_template
from jaxllm.engine import Engine
from jaxllm.errors import BOM, ArgumentParser, GenerationError, InputError, JaxllmError, run_cli

CONTEXT = 8192  # tokens a conversation may reach (fewer if the model has fewer positions): the engine's max_len
KEEP = 0.5  # a conversation that outgrew the context keeps at most this share of the room for a prompt (Chat.prompt)
COMMANDS = ("/reset (forget the conversation), /system TEXT (set the system message and reset; /system alone removes it), "
            "/exit or /quit, /help")
QUOTES = '"""'  # a line that starts with them starts a message of several lines, up to a line that ends with them
NAMES = ("/reset", "/system", "/exit", "/quit", "/help")
LIMITS = ('A message of several lines goes between """ and """. When the conversation outgrows the context, its '
          "oldest turns are dropped (a note says how many), down to half of it, so that the next turns reuse the cached "
          "rest. An answer cut by --max-new-tokens ends in [cut], one "
          "stopped by Ctrl-C in [stopped]: what was shown stays in the history (an answer stopped before any text "
          "drops its turn). Ctrl-C at the prompt quits.")


def parser() -> ArgumentParser:
    """The command line's flags."""
    p = ArgumentParser(prog="python -m jaxllm.chat", description="Chat with a language model.",
                       parents=[progress.model_flags()], epilog=f"In the chat: {COMMANDS}. {LIMITS}")
    return p


def parse_args(argv=None):
    return parser().parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    progress.start(args)
    return run_session(args)


def run_session(args) -> int:
    """Load the model of the flags and chat on stdin and stdout; the exit code."""

    def body() -> int:
        with progress.flag_terms():  # the library's messages name its arguments: here, the flags
            return _session(args)

    return run_cli(body)


def _session(args) -> int:
    """run_session's work: the library's errors come out in its terms (run_session names the flags)."""
    params = progress.sampling_params(args)
    if sys.stdin is None:  # `<&-`: no turn could ever be read; said before the model loads
        raise JaxllmError("stdin is closed, and the chat reads its turns from it: type them at a terminal or pipe them in, "
                          "e.g. printf 'Hello\\n' | python -m jaxllm.chat")
    out = progress.output()
    model = progress.load_model(args)
    if model.tokenizer is None:  # weights alone: no text in or out at all
        raise JaxllmError("this checkpoint has no tokenizer, which a chat needs for its text and chat template: add its "
                          "tokenizer files (tokenizer.json, tokenizer_config.json) to the folder")
    if not has_chat_template(model.tokenizer):
        raise JaxllmError("this checkpoint's tokenizer has no chat template, which a chat needs: "
                          'use python -m jaxllm.generate --no-chat "TEXT" for plain text')
    try:  # a template that refuses the system message, or cannot render at all, fails here, not every turn
        first = try_template(model.tokenizer, args.system, args.chat_template_kwargs)
    except InputError as err:
        raise InputError(f"{err}" + (": drop --system (this model's template may take no system message)"
                                     if args.system is not None else "")) from None
    if note := progress.greedy_note(args, params, getattr(model, "generation_config", None)):
        print(note, file=sys.stderr)
    talk = Chat(model, params, args.system, template_kwargs=args.chat_template_kwargs)
    if talk.max_new >= talk.max_len:  # every message would be refused: say so now, not at each one
        raise JaxllmError(f"--max-new-tokens {talk.max_new:,} leaves no room for a message in this chat's context of "
                          f"{talk.max_len:,} tokens: use at most {talk.max_len - 1:,}")
    if full := talk.no_room(args.system, len(first)):  # every message would be refused
        raise InputError(f"--system: {full}")
    talk.run(sys.stdin, out)
    return 0


def messages(system: str | None, history: list[dict], user: str) -> list[dict]:
    """What the chat template gets for the next answer: the system message (if any), the
    conversation so far, the new user turn. An empty system message is a turn too (it leaves out
    the template's default one); None is none."""
    return ([{"role": "system", "content": system}] if system is not None else []) + history + [{"role": "user", "content": user}]


def try_template(tokenizer, system: str | None, template_kwargs: dict | None = None) -> list[int]:
    """Render a first turn under `system` through the chat template: its ids, or its InputError if
    the template refuses the system message or cannot render at all."""
    return encode_messages(tokenizer, messages(system, [], "Hello"), template_kwargs)


class Stopped(Exception):
    """Ctrl-C during an answer, raised at its next tokens: between engine steps, where stopping is clean."""


class Chat:
    """A conversation: the history, the system message, and one engine that serves every turn."""

    def __init__(self, model, params, system: str | None = None, context: int = CONTEXT, template_kwargs: dict | None = None):
        self.system, self.template_kwargs = system, template_kwargs
        self.history: list[dict] = []
        self.max_len = max_len = min(context, model.config.context_length)
        self.engine = Engine(model, batch_size=1, max_len=max_len, num_pages=-(-max_len // 16), page_size=16)  # one conversation's pages
        self.max_new = params.resolved(getattr(model, "generation_config", None)).max_new_tokens  # what an answer may take
        # every answer may take max_new: generation_config.json's max_length (prompt + new tokens) does not shrink a
        # turn's answer as the conversation grows, as it sizes one prompt's answer in model.generate
        self.model, self.params = model, dataclasses.replace(params, max_new_tokens=self.max_new)
        self._stopping = False

    def run(self, stdin, stdout) -> None:
        """Turns until /exit, /quit or the end of the input (at a terminal, Ctrl-C at the prompt raises
        KeyboardInterrupt)."""
        if stdin.isatty():
            import readline  # noqa: F401  (line editing and history for input())
        first = True
        while (line := _read_line(stdin)) is not None:
            if first:  # a byte order mark ("UTF-8 with BOM" input) is not part of the first turn, nor hides a /command
                line, first = line.removeprefix(BOM), False
            if line.lstrip().startswith(QUOTES):  # a message of several lines, pasted or typed
                if text := _block(line.lstrip()[len(QUOTES) :], stdin).strip():
                    self.answer(text, stdout)
            elif not self.handle(line, stdout):
                break

    def handle(self, line: str, out) -> bool:
        """One input line: a command or a user turn. False: quit."""
        text = line.strip()
        command, rest = (text.split(None, 1) + [""])[:2] if text else ("", "")
        if not re.fullmatch(r"/\w*", command):  # a message ("/usr/bin/env fails" is one too)
            if text:
                self.answer(text, out)
            return True
        if command not in NAMES:
            close = difflib.get_close_matches(command.lower(), NAMES, n=1)
            _note(f"unknown command {command}{f' (did you mean {close[0]}?)' if close else ''}: the commands are {COMMANDS}")
        elif rest and command != "/system":  # "/reset please" did it, "/exit now" quit: nothing was said of the rest
            _note(f"error: {command} takes nothing after it: send {command} alone")
        elif command in ("/exit", "/quit"):
            return False
        elif command == "/reset":
            self.history = []
            _note("the conversation is reset")
        elif command == "/system":
            system = rest or None
            try:  # refused now, not at every later turn
                self.check_system(system)
            except InputError as err:
                _note(f"error: {err}; the system message is unchanged")
                return True
            self.system, self.history = system, []
            _note(f"system message {'set' if self.system else 'removed'}; the conversation is reset")
        else:
            _note(f"the commands are {COMMANDS}. {LIMITS}")
        return True

    def check_system(self, system: str | None) -> None:
        """InputError if the chat template refuses `system` or it leaves no room in the context for a
        first message and its answer."""
        if full := self.no_room(system, len(try_template(self.model.tokenizer, system, self.template_kwargs))):
            raise InputError(full)

    def no_room(self, system: str | None, first: int) -> str | None:
        """Why `system`, whose first turn holds `first` tokens, leaves no room for a message and its
        answer in the context; None: it leaves some."""
        if system is None or first + self.max_new <= self.max_len:
            return None
        return (f"the system message holds {first:,} tokens with a first message, and an answer may take {self.max_new:,} "
                f"more (--max-new-tokens): more than this chat's context of {self.max_len:,} tokens: use a shorter one")

    def prompt(self, user: str) -> tuple[list[dict], list[int]] | None:
        """The messages and ids for an answer to `user`: the conversation so far, less its oldest turns
        when it would outgrow the context with room for an answer of --max-new-tokens (said in a note,
        and dropped from the history for good); None, after a one-line error, when `user` does not fit
        even alone (the history is unchanged).

        Turns are dropped down to a prompt of at most KEEP of the room (the context less --max-new-tokens),
        not just below the limit: a drop changes the prompt's beginning, so the engine's prefix cache misses
        and the whole prompt is computed again; dropping one turn at a time did so at every turn once at the
        limit, while after a deeper drop the next turns append to an unchanged prefix. The newest turn stays
        when it fits: the new message most likely follows it."""
        history, room = self.history, self.max_len - self.max_new
        while True:
            turn = messages(self.system, history, user)
            ids = encode_messages(self.model.tokenizer, turn, self.template_kwargs)
            dropping = history is not self.history
            if len(ids) <= room and (not dropping or len(ids) <= KEEP * room or len(history) <= 2):
                break
            if not history:  # the engine's own message names its max_len, not a flag of this chat
                _note(f"error: this message holds {len(ids):,} tokens{' with the system message' if self.system else ''}, "
                      f"and an answer may take {self.max_new:,} more (--max-new-tokens): more than this chat's context of "
                      f"{self.max_len:,} tokens: send a shorter one")
                return None
            history = history[2:]  # the oldest user turn and its answer
        if dropped := (len(self.history) - len(history)) // 2:
            self.history = history
            turns = "oldest turn was" if dropped == 1 else f"{dropped} oldest turns were"
            _note(f"note: the conversation outgrew this chat's context of {self.max_len:,} tokens: its {turns} dropped "
                  "(/reset starts anew)")
        return turn, ids

    def answer(self, user: str, out) -> None:
        """Stream the answer to `user` after the conversation so far, then the stats line; the turn
        joins the history (as much of the answer as was shown, if Ctrl-C stopped it: none, if it
        stopped before any text)."""
        try:
            fit = self.prompt(user)
        except InputError as err:  # the template refused this conversation: the session goes on
            _note(f"error: {err} (/reset starts a new conversation)")
            return
        if fit is None:
            return
        turn, ids = fit
        stats, shown = progress.Stats(), []

        def on_text(index, text):
            progress.write(out, text)
            shown.append(text)

        def on_token(index, tokens):
            stats.on_token(index, tokens)
            if self._stopping:
                raise Stopped

        try:
            with self._ctrl_c_stops():
                done = self.model.generate(ids, self.params, engine=self.engine, on_text=on_text, on_token=on_token)
        except KeyboardInterrupt:  # a second Ctrl-C: the chat ends; the text shown keeps its own line
            progress.write(out, "\n")
            raise
        except Stopped:
            _mark(" [stopped]" if shown else "[stopped]", out)
        except GenerationError as err:  # the engine refused what the chat's own checks let through
            _note(f"error: {progress.in_flag_terms(str(err))} (/reset starts a new conversation)")
            return
        else:
            if done.finish_reason == "length":  # the answer did not end: say so, not a silently half sentence
                _mark(f" [cut: --max-new-tokens {self.max_new:,}]", out)
            elif done.finish_reason == "error":  # its logits turned NaN/Inf: the answer is not kept, the reason said
                progress.write(out, "\n" if shown else "")
                _note(f"error: {done.error} (the answer is not kept)")
                return
        progress.write(out, "\n")
        if shown:
            self.history += [turn[-1], {"role": "assistant", "content": "".join(shown)}]
        print(stats.line(len(ids)), file=sys.stderr)

    @contextlib.contextmanager
    def _ctrl_c_stops(self):
        """While answering, a first Ctrl-C stops the answer at its next tokens; a second one interrupts."""

        def on_ctrl_c(signum, frame):
            if self._stopping:
                raise KeyboardInterrupt
            self._stopping = True

        self._stopping = False
        previous = signal.signal(signal.SIGINT, on_ctrl_c)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def _block(first: str, stdin) -> str:
    """The message of a \"\"\" block: its lines from `first` (the first line's text after the quotes) to
    the next one that ends with \"\"\" (less them); at the end of the input, the lines read (a note says so)."""
    lines, line = [], first.rstrip("\r\n")
    while not line.rstrip().endswith(QUOTES):
        lines.append(line)
        if (line := _read_line(stdin, "... ")) is None:
            _note(f"note: the input ended inside a {QUOTES} message: it is sent as it is")
            return "\n".join(lines)
        line = line.rstrip("\r\n")
    return "\n".join([*lines, line.rstrip()[: -len(QUOTES)]])


def _read_line(stdin, prompt: str = "> ") -> str | None:
    """The next input line; None at the end of the input (KeyboardInterrupt on Ctrl-C at a terminal's prompt). A
    line that is not UTF-8 text is named and skipped (an empty line), not fed to the tokenizer."""
    if not stdin.isatty():
        raw = stdin.buffer.readline() if hasattr(stdin, "buffer") else stdin.readline()
        if not raw:
            return None
        return _text(raw) if isinstance(raw, bytes) else _text(raw.encode("utf-8", "surrogateescape"))
    try:
        return _text(input(prompt).encode("utf-8", "surrogateescape"))
    except UnicodeDecodeError as err:  # a terminal whose encoding is not the bytes typed
        return _text(err.object)
    except EOFError:
        print()
        return None
    except KeyboardInterrupt:  # a user interrupt: exit 130 (run_cli), on a line of its own
        print()
        raise


def _text(raw: bytes) -> str:
    """`raw` as text, or "" after a one-line note when it is not UTF-8."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        _note(f"error: that line is not UTF-8 text (byte {err.start + 1}: 0x{raw[err.start]:02x}): it was skipped; "
              "type or send UTF-8")
        return ""


def _mark(text: str, out) -> None:
    """`text` on stderr (stdout holds only the answers' text): after the answer on its line at a
    terminal, a line of its own elsewhere."""
    inline = all(getattr(f, "isatty", lambda: False)() for f in (out, sys.stderr))
    print(text, end="" if inline else "\n", file=sys.stderr, flush=True)


def _note(text: str) -> None:
    print(text, file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
