"""`python -m jaxllm.generate`: text generation from the command line.

    python -m jaxllm.generate "What is the capital of France?"
    echo "Tell me a joke" | python -m jaxllm.generate --model ./my-checkpoint --temperature 0.7

Prompts come from the arguments, else --batch-file, else stdin (one prompt per non-empty line);
with none of them on a terminal, it starts the chat (`python -m jaxllm.chat`; --no-chat: an error). One prompt streams
as it is generated; several print in order. Statistics go to stderr. Compiled programs are kept in
~/.cache/jaxllm/xla (--compile-cache) for the next run. The library's entry is
`model.generate(...)` (jaxllm.loader.LoadedModel); this module is the command line only.
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys

from jaxllm import chat, progress, runtime
from jaxllm.errors import BOM, ArgumentParser, JaxllmError, argv_text, run_cli, utf8_lines
from jaxllm.inspect import list_architectures


def parser() -> ArgumentParser:
    """The command line's flags."""
    p = ArgumentParser(prog="python -m jaxllm.generate", description="Generate text with a language model.",
                       parents=[progress.model_flags()])
    p.add_argument("prompt", nargs="*", help="the prompt (words given apart are joined by spaces: one prompt); "
                                             "several prompts: --batch-file, else stdin, one per line; "
                                             "none on a terminal: a chat")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="apply the chat template (default: on when the tokenizer has one)")
    p.add_argument("--batch-file", help="file with one prompt per line")
    p.add_argument("--no-stream", action="store_true", help="print each answer when complete")
    p.add_argument("--list-models", action="store_true", help="print the supported architectures and exit")
    p.add_argument("--distributed", metavar="auto|HOST:PORT,N,ID",
                   help="one of N processes of a multi-host run (the same command on every host; process 0 prints): "
                        "'auto', the cluster JAX finds (TPU pod slices, SLURM, Open MPI, Kubernetes), or the "
                        "coordinator's address, the number of processes and this process's id")
    return p


def parse_args(argv=None):
    return parser().parse_args(argv)


def read_prompts(args) -> list[str]:
    if args.prompt:
        prompt = " ".join(args.prompt)
        if not prompt.strip():  # as a blank input line is: through a chat template it was answered as an empty turn
            raise JaxllmError('the prompt is empty: give some text, e.g. python -m jaxllm.generate "Hello"')
        return [argv_text(prompt, "the prompt")]
    if args.batch_file:
        try:
            with open(args.batch_file, "rb") as f:
                lines = utf8_lines(f.read(), f"--batch-file {args.batch_file}")
        except OSError as err:
            raise JaxllmError(f"cannot read --batch-file {args.batch_file}: {err.strerror}") from None
    else:
        if sys.stdin is None:
            raise JaxllmError('no prompt: pass one as an argument, e.g. python -m jaxllm.generate "Hello"')
        if sys.stdin.isatty():  # --no-chat on a terminal (main starts the chat otherwise): no waiting on the keyboard
            raise JaxllmError('no prompt: --no-chat takes the prompt as an argument, --batch-file or piped stdin, '
                              'e.g. python -m jaxllm.generate --no-chat "Once upon a time"')
        stdin = getattr(sys.stdin, "buffer", None)  # bytes, so that undecodable input is named by its line
        lines = utf8_lines(stdin.read(), "stdin") if stdin is not None else sys.stdin.read().removeprefix(BOM).splitlines()
    prompts = [line for line in lines if line.strip()]
    if not prompts:
        raise JaxllmError("no prompt: the input held only empty lines")
    return prompts


def main(argv=None) -> int:
    args = parse_args(argv)
    progress.start(args)
    interactive = not (args.list_models or args.prompt or args.batch_file) and sys.stdin is not None and sys.stdin.isatty()
    if interactive and not args.distributed and args.chat is not False:  # a chat is the template's: not under --no-chat
        return chat.run_session(args)
    return run_cli(lambda: _main(args))


def _main(args) -> int:
    given = [name for name, value in (("a prompt argument", args.prompt), ("--batch-file", args.batch_file)) if value]
    if args.list_models and given:  # it prints the list and exits: what else was asked would be dropped unsaid
        raise JaxllmError(f"--list-models prints the supported architectures and exits, so {given[0]} would be ignored: "
                          "give one or the other")
    if len(given) == 2:
        raise JaxllmError("give the prompt as an argument or --batch-file, not both: the words of the command line are "
                          "one prompt; several go in --batch-file, one a line")
    if args.list_models:
        print(list_architectures())
        return 0
    if args.distributed:
        if not (args.prompt or args.batch_file):
            raise JaxllmError("--distributed needs the prompts as arguments or --batch-file: every process must read the same")
        runtime.join_cluster(args.distributed)
    prompts = read_prompts(args)
    with progress.flag_terms(len(prompts)):  # the library's messages name its arguments: here, the flags
        return _answer(args, prompts)


def _answer(args, prompts: list[str]) -> int:
    params = progress.sampling_params(args)
    out = progress.output()
    model = progress.load_model(args)
    leader = progress.is_leader()
    if leader and (note := progress.greedy_note(args, params, model.generation_config)):
        print(note, file=sys.stderr)
    stream = len(prompts) == 1 and not args.no_stream and leader

    shown = []

    def on_text(index, text):
        if stream:
            shown.append(text)
            progress.write(out, text)

    # Answers not streamed are written in the prompts' order, each as soon as it and those before it are done.
    done: dict[int, str] = {}
    written = 0

    def write_done():
        nonlocal written
        while leader and not stream and written in done:
            progress.write(out, (f"### {written + 1}\n" if len(prompts) > 1 else "") + done.pop(written) + "\n")
            written += 1

    def on_finish(index, completion):
        done[index] = completion.text
        write_done()

    stats = progress.Stats()
    try:
        results = model.generate(prompts, params, chat=args.chat, system=args.system, chat_template_kwargs=args.chat_template_kwargs,
                                 on_text=on_text, on_token=stats.on_token,
                                 on_finish=on_finish)
    except KeyboardInterrupt:
        if shown:  # the text shown stays, on its own line: 'interrupted' (stderr) not glued to it
            progress.write(out, "\n")
        raise
    if not leader:
        return 0
    if stream:
        progress.write(out, "\n")
    done.update((i, r.text) for i, r in enumerate(results) if i >= written)  # any the engine ended without a last event
    write_done()
    print(stats.line(sum(r.prompt_tokens for r in results)), file=sys.stderr)
    failed = [(i, r.error) for i, r in enumerate(results) if r.error]  # finish reason "error": its one line, exit 2
    if failed:
        i, why = failed[0]
        raise JaxllmError(why if len(prompts) == 1 else f"prompt {i} ({len(failed)} of {len(prompts)} failed): {why}")  # counted from 1 by flag_terms
    return 0


def leave(code: int) -> None:
    """Exit as `sys.exit(code)` does, less the interpreter's teardown (freeing the model and XLA's
    client: 0.6 s of a 2-core CPU start): exit handlers run and output is flushed, then the process ends."""
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):  # closed, gone or not a file
            pass
    os._exit(code if isinstance(code, int) else 1)


if __name__ == "__main__":
    leave(main())
