"""Structured outputs (constrained decoding, jaxllm/structured.py): a tiny random Llama decodes garbage, so
these test the mechanism: every answer matches its constraint, the masked step samples what the model's
logits masked by hand give, unconstrained rows and plain programs are untouched, a preempted row resumes
validly, and bad constraints are refused in one line. The server's side: tests/test_serve.py."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import llguidance
import numpy as np
import pytest
from llguidance.numpy import allocate_token_bitmask, fill_next_token_bitmask
from tokenizers import Tokenizer, decoders, models

import jaxllm
from jaxllm import structured
from jaxllm.engine import Engine
from jaxllm.sampling import RowParams, SamplingParams, sample

# A character tokenizer: 3 specials and the 95 printable ASCII characters (98 ids) for the tiny Llama's 128
# logits: ids 98..127 are padding rows, which a constrained row must never sample.
CHARS = [chr(c) for c in range(32, 127)]

SCHEMA = {"type": "object", "properties": {"color": {"enum": ["red", "green"]}, "n": {"type": "integer", "minimum": 0, "maximum": 999}},
          "required": ["color", "n"], "additionalProperties": False,
          "x-guidance": {"whitespace_flexible": False}}  # llguidance's option: a random model would write spaces forever
REGEX = "[0-9]{3}-[a-z]{2}"
CHOICES = ["yes", "no", "maybe"]
CONSTRAINTS = [jaxllm.Structured(json_schema=SCHEMA), jaxllm.Structured(regex=REGEX), jaxllm.Structured(choice=CHOICES)]


def _matches(st: jaxllm.Structured, text: str) -> bool:
    if st.regex is not None:
        return re.fullmatch(REGEX, text) is not None
    if st.choice is not None:
        return text in CHOICES
    answer = json.loads(text)
    return set(answer) == {"color", "n"} and answer["color"] in ("red", "green") and 0 <= answer["n"] <= 999


@pytest.fixture(scope="module")
def model(llama):
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{c: i + 3 for i, c in enumerate(CHARS)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.add_special_tokens(["<unk>", "<s>", "</s>"])
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    from transformers import PreTrainedTokenizerFast

    from jaxllm import tokenizing

    llama.tokenizer = tokenizing.wrap(PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                                              unk_token="<unk>"))
    assert llama.config.output_vocab == 128 and llama.config.eos_token_ids == (2,)
    return llama


def _deep(levels: int) -> dict:
    """A schema of objects nested `levels` deep."""
    schema = {"type": "integer"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}, "required": ["a"]}
    return schema


PROMPTS = ["hello", "abc def"]
PLAIN = SamplingParams(max_new_tokens=40, temperature=0.0)
PARAMS = [SamplingParams(max_new_tokens=60, temperature=t, seed=3, structured=st) for st in CONSTRAINTS for t in (0.0, 1.0)]


@pytest.fixture(scope="module")
def served(model):
    """A plain greedy request alone, then with greedy and sampled rows of each constraint (PARAMS, prompts taking
    turns) in a pool too small for all of them (the newest are preempted and recomputed): (engine, the plain
    answer alone, the compile counters before the constrained ones, the answers of the batch)."""
    engine = Engine(model, batch_size=8, max_len=128, num_pages=12, page_size=8, chunk=8)
    alone = model.generate(PROMPTS[0], PLAIN, chat=False, engine=engine)
    compiled = engine.counters
    outs = _run(model, engine, [(PROMPTS[0], PLAIN)] + [(PROMPTS[i % 2], p) for i, p in enumerate(PARAMS)])
    return engine, alone, compiled, outs


def test_answers_match_their_constraint_beside_plain_rows_and_through_preemption(model, served):
    """Every constrained answer matches and ends with "stop"; the plain row gives the tokens it gives alone; plain
    requests run the programs they ran before (no compile), whatever ran between."""
    engine, alone, compiled, outs = served
    assert engine.scheduler.stats.preempted > 0, "the pool should run out of pages"
    assert outs[0].token_ids == alone.token_ids
    for p, out in zip(PARAMS, outs[1:]):
        assert out.finish_reason == "stop" and _matches(p.structured, out.text), (p.structured.kind, out.text)
        assert max(out.token_ids) < 98  # never a padding row
    masked = engine.counters
    assert (masked.prefill, masked.decode) > (compiled.prefill, compiled.decode)  # the masked programs are their own
    again = model.generate(PROMPTS[0], PLAIN, chat=False, engine=engine)
    assert again.token_ids == alone.token_ids and engine.counters == masked  # plain requests: nothing new compiled


def _run(model, engine, pairs, events=None):
    """Each (prompt, params) as one request of one engine run; Completions in order (`events`: a list the events go
    to)."""
    from jaxllm.engine import Request
    from jaxllm.generation import Completion, Output

    tok = model.tokenizer
    requests = [Request(tok.encode(p, add_special_tokens=False), params.resolved(model.generation_config), i)
                for i, (p, params) in enumerate(pairs)]
    outputs = [Output(tok, r.params, set(engine.eos.tolist())) for r in requests]
    for ev in engine.run(requests):
        outputs[ev.index].take(ev)
        if events is not None:
            events.append(ev)
    return [Completion(o.text, o.tokens, o.finish_reason, len(r.prompt)) for o, r in zip(outputs, requests)]


def test_masked_greedy_tokens_are_the_argmax_of_logits_masked_by_hand(model, served):
    """Each greedy token of the JSON answer is the most likely of the model's logits (one teacher-forced forward
    pass over the answer) among the tokens an independent matcher allows there."""
    prompt, out = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False), served[3][1]
    logits = np.asarray(model.logits([prompt + out.token_ids]))[0, len(prompt) - 1 :]
    tok = structured.tokenizer(model.tokenizer, [2])
    matcher = llguidance.LLMatcher(tok, structured.grammar_text(CONSTRAINTS[0]))
    bits = allocate_token_bitmask(1, tok.vocab_size)
    for i, token in enumerate(out.token_ids):
        fill_next_token_bitmask(matcher, bits)
        allowed = np.unpackbits(bits[0].view(np.uint8), bitorder="little")[: tok.vocab_size].astype(bool)
        assert token == int(np.argmax(np.where(allowed, logits[i, : tok.vocab_size], -np.inf))), i
        assert matcher.consume_token(token)
    assert matcher.is_stopped() and out.finish_reason == "stop"


def test_masked_sampling_equals_sampling_logits_masked_by_hand():
    """sample() with a bitmask draws what it draws from logits set to -inf by hand (filters and seeds alike), and
    reports the model's own log-probabilities."""
    rng = np.random.default_rng(0)
    b, v = 6, 100
    logits = rng.normal(0, 3, (b, v)).astype(np.float32)
    allowed = rng.random((b, v)) < 0.3
    allowed[:, 7] = True
    bits = np.packbits(np.pad(allowed, ((0, 0), (0, 28))), axis=1, bitorder="little").view(np.int32)
    rp = RowParams.of([SamplingParams(temperature=t, top_k=k, top_p=0.9, seed=s).resolved()
                       for t, k, s in ((0.0, 0, 1), (1.0, 0, 2), (0.7, 5, 3), (1.0, 3, 4), (2.0, 0, 5), (1.0, 50, 6))])
    seen, step = jnp.zeros((b, v), bool), jnp.arange(b)
    draw = jax.jit(sample, static_argnums=4)  # one compile, not one per operation
    got, lp = draw(jnp.asarray(logits), seen, rp, step, True, allowed=jnp.asarray(bits))
    want, _ = draw(jnp.asarray(np.where(allowed, logits, -np.inf)), seen, rp, step, True)
    np.testing.assert_array_equal(got, want)
    assert allowed[np.arange(b), np.asarray(got)].all()
    np.testing.assert_allclose(lp, np.asarray(jax.nn.log_softmax(logits, axis=-1))[np.arange(b), np.asarray(got)], rtol=1e-6)


@pytest.mark.parametrize("fields, says", [
    (dict(json_schema={"type": "strng"}), "structured json_schema is invalid: Invalid type: strng"),
    (dict(json_schema={"type": "object", "if": {"type": "object"}}), 'Unimplemented keys: ["if"]'),  # not supported
    (dict(json_schema="{not json"), "structured json_schema is invalid"),
    (dict(regex="[0-9"), "unclosed character class: fix the regex"),
    (dict(grammar="start: foo"), 'unknown name: "foo"'),
    (dict(choice=[]), "structured choice=() is invalid"),
    (dict(regex="a", choice=["b"]), "sets regex and choice: set exactly one"),
    (dict(), "sets nothing"),
    (dict(regexp="a"), "unknown structured output field 'regexp'"),
    (dict(json_schema=False), "structured json_schema is invalid: give it as non-empty text"),  # not "sets nothing"
    (dict(choice=0), "structured choice=0 is invalid"),
    (dict(json_schema=_deep(3000)), "structured json_schema is nested too deeply"),  # not a RecursionError
    (dict(json_schema=_deep(100)), "recursion limit exceeded"),
    (dict(grammar='foo: "b"'), "from a 'start:' rule; or GBNF, from 'root ::='"),
    # unsatisfiable: each used to be served as an empty answer ending "stop", which matched nothing
    (dict(json_schema={"$defs": {"a": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}), "structured json_schema is unsatisfiable"),
    (dict(json_schema={"$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"$ref": "#/$defs/a"}}, "$ref": "#/$defs/a"}), "is unsatisfiable"),
    (dict(json_schema={"enum": []}), "Unsatisfiable schema: anyOf is empty"),
    (dict(json_schema={"type": "integer", "minimum": 5, "maximum": 1}), "minimum (5) is greater than maximum (1)"),
    (dict(json_schema={"type": "object", "properties": {}, "required": ["a"], "additionalProperties": False}), "required property 'a' is unsatisfiable"),
    (dict(regex="[^\\s\\S]"), "structured regex is unsatisfiable: no text that this model's tokenizer can write"),
    (dict(grammar='start: start "a"'), "structured grammar is unsatisfiable"),
    # the tokenizer (printable ASCII, no byte fallback) has no token for the text: a regex ended "error" at its first token
    (dict(regex="é+"), "structured regex is unsatisfiable: no text that this model's tokenizer can write"),
    (dict(choice=["ünï", "çödé"]), "structured choice is unsatisfiable: no text"),
])
def test_bad_constraints_are_refused_in_one_line_at_submit(served, fields, says):
    engine = served[0]
    with pytest.raises(jaxllm.GenerationError) as err:
        engine.add(jaxllm.engine.Request([5, 6], SamplingParams(max_new_tokens=4, structured=fields).resolved()))
    assert says in str(err.value) and "\n" not in str(err.value)
    assert not engine.has_work()


def test_a_constraint_beyond_llguidances_limits_for_the_tokenizer_is_refused_in_one_line(smollm2):
    """A constraint that validates but that llguidance cannot compile for this tokenizer (its lexer over 49,152 tokens)
    is refused as the engine takes it, with a fix the caller can make: llguidance's own advice names its options."""
    with pytest.raises(jaxllm.GenerationError) as err:
        structured.Grammar(jaxllm.Structured(regex="(a|b)*" * 2000), structured.tokenizer(smollm2, [2]))
    assert str(err.value).startswith("structured regex is invalid: lexer precomputation failed")
    assert str(err.value).endswith(": simplify the regex") and "\n" not in str(err.value)


def test_a_grammar_failing_mid_answer_ends_it_with_a_one_line_warning(model, served, caplog):
    """A constraint llguidance compiles but cannot run (a regex too large for its lexer) ends its answer with
    finish_reason 'error'; the warning is one line, not llguidance's state and whole grammar (400 KB a request)."""
    engine = served[0]
    (out,) = _run(model, engine, [("hi", SamplingParams(max_new_tokens=4, temperature=0.0, structured={"regex": "a{1000000}"}))])
    (warning,) = [r.getMessage() for r in caplog.records if "structured-output grammar" in r.getMessage()]
    assert out.finish_reason == "error" and "\n" not in warning and len(warning) < 500, warning
    assert "too many expressions" in warning and "<grammar>" not in warning
    assert not engine.has_work()


def test_structured_needs_llguidance_and_a_tokenizer(model, monkeypatch):
    monkeypatch.setitem(sys.modules, "llguidance", None)
    structured.grammar_text.cache_clear()
    with pytest.raises(jaxllm.GenerationError, match=re.escape('pip install "jaxllm[structured]"')):
        SamplingParams(structured=dict(regex="[a-z]+")).resolved()
    monkeypatch.undo()
    with pytest.raises(jaxllm.GenerationError, match="structured outputs need the model's tokenizer.json: this model has no tokenizer"):
        structured.tokenizer(None, [2])
    backend = Tokenizer(models.BPE(vocab={"a": 0}, merges=[]))  # no decoder: llguidance cannot tell the tokens' bytes
    with pytest.raises(jaxllm.GenerationError, match="llguidance cannot read this model's tokenizer .*decoder"):
        structured.tokenizer(SimpleNamespace(backend_tokenizer=backend), [0])


def test_cli_flags_build_the_constraint(tmp_path):
    from jaxllm import generate, progress

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    for argv, want in ((["--json-schema", str(schema)], jaxllm.Structured(json_schema=SCHEMA)),
                       (["--json-schema", '{"type": "object"}'], jaxllm.Structured(json_schema={"type": "object"})),
                       (["--regex", REGEX], jaxllm.Structured(regex=REGEX)),
                       (["--choice", "yes", "--choice", "no"], jaxllm.Structured(choice=["yes", "no"])),
                       (["--json-object"], jaxllm.Structured(json_object=True)), ([], None)):
        assert progress.sampling_params(generate.parse_args(["hi", *argv])).structured == want
    with pytest.raises(jaxllm.JaxllmError, match="--regex, --choice each constrain the answer: give one of them"):
        progress.sampling_params(generate.parse_args(["hi", "--regex", "a", "--choice", "b"]))


@pytest.mark.parametrize("st", CONSTRAINTS, ids=lambda st: st.kind)
def test_an_answer_cut_by_max_new_tokens_is_a_valid_prefix_ending_length(model, served, st):
    """max_new_tokens=1, below the shortest complete answer: finish_reason "length", every token one the grammar allows
    (an independent matcher takes them all), the text not yet complete."""
    (out,) = _run(model, served[0], [(PROMPTS[0], SamplingParams(max_new_tokens=1, temperature=1.0, seed=5, structured=st))])
    matcher = llguidance.LLMatcher(structured.tokenizer(model.tokenizer, [2]), structured.grammar_text(st))
    assert out.finish_reason == "length" and len(out.token_ids) == 1, out
    assert matcher.validate_tokens(out.token_ids) == 1 and not matcher.is_error()


def test_constrained_rows_give_the_same_tokens_with_speculative_decoding_on_and_with_logprobs(model, served, monkeypatch):
    """The constrained rows of the served fixture (greedy and seeded rows of each constraint) on the engine speculating
    (4 tokens a step) and reporting log-probabilities: the same tokens (speculation is off for steps with a constrained
    row, seeds draw the same), and the log-probabilities the model's own (unmasked: the docstring of
    jaxllm/structured.py), equal to those of a teacher-forced forward pass."""
    engine = served[0]
    monkeypatch.setattr(engine, "speculative", 4)
    events = []
    outs = _run(model, engine, [(PROMPTS[i % 2], dataclasses.replace(p, logprobs=True)) for i, p in enumerate(PARAMS)], events)
    assert [o.token_ids for o in outs] == [o.token_ids for o in served[3][1:]]
    assert engine.scheduler.stats.verified == 0  # nothing speculated
    prompt, out = model.tokenizer.encode(PROMPTS[0], add_special_tokens=False), outs[0]
    want = np.asarray(jax.nn.log_softmax(model.logits([prompt + out.token_ids])[0, len(prompt) - 1 : -1], axis=-1))
    got = [lp for ev in events if ev.index == 0 for lp in ev.logprobs]
    np.testing.assert_allclose(got, want[np.arange(len(out.token_ids)), out.token_ids], atol=2e-4)


def test_a_stop_string_cuts_a_constrained_answer(model, served):
    """A stop string inside the constrained text ends the answer there ("stop"), the text before it a valid prefix."""
    (whole,) = _run(model, served[0], [(PROMPTS[0], SamplingParams(max_new_tokens=60, temperature=0.0, structured=CONSTRAINTS[0]))])
    stop = whole.text[5:7]
    (out,) = _run(model, served[0], [(PROMPTS[0], SamplingParams(max_new_tokens=60, temperature=0.0, structured=CONSTRAINTS[0],
                                                                 stop=(stop,)))])
    assert out.finish_reason == "stop" and out.text == whole.text[: whole.text.index(stop)], (whole.text, out.text)


@pytest.mark.parametrize("specials, eos, refused", [((), [], True), (("<unk>",), [], False), ((), [5], False), ((), [-1], True)])
def test_an_eos_less_tokenizer_is_refused_where_llguidance_would_end_on_a_text_token(specials, eos, refused):
    """Without the engine's EOS ids llguidance takes one of its own: a special token is hidden from the text (the
    grammar ends the answer), a text token would be written after a complete answer (it was: "!" of GPT-2's id 0)."""
    vocab = {**{s: i for i, s in enumerate(specials)}, **{c: i + len(specials) for i, c in enumerate(CHARS)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.add_special_tokens(list(specials))
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    if not refused:
        assert structured.tokenizer(SimpleNamespace(backend_tokenizer=backend), eos).vocab_size == len(vocab)
        return
    with pytest.raises(jaxllm.GenerationError) as err:
        structured.tokenizer(SimpleNamespace(backend_tokenizer=backend), eos)
    assert str(err.value).startswith("structured outputs need an end-of-sequence token and this model has none")


@pytest.mark.parametrize("fields, answers", [
    (dict(regex="()"), [""]),  # only the empty string: EOS at once
    (dict(choice=["ab", "ab", "ab"]), ["ab"]),  # duplicates
    (dict(choice=[f"c{i}" for i in range(3000)]), [f"c{i}" for i in range(3000)]),  # a huge choice: it ended "error"
    (dict(choice=["a.b", "(x)|y", "\\d+", "[z]^$", "a b~#&-"]), ["a.b", "(x)|y", "\\d+", "[z]^$", "a b~#&-"]),  # meta
    (dict(json_schema={"enum": [f"v{i}" for i in range(3000)]}), [json.dumps(f"v{i}") for i in range(3000)]),  # a huge enum
    (dict(grammar='start: "x" | "y"\nunused: "z"'), ["x", "y"]),  # an unreachable rule
    (dict(grammar='root ::= "x" | "y"'), ["x", "y"]),  # GBNF
    (dict(regex="(a+)+b"), None),  # "catastrophic" for a backtracking engine; llguidance's lexer is a DFA
])
def test_edge_constraints_are_served_and_match(model, served, fields, answers):
    (out,) = _run(model, served[0], [(PROMPTS[0], SamplingParams(max_new_tokens=12, temperature=0.0, structured=fields))])
    if answers is None:
        assert out.finish_reason == "length" or re.fullmatch(fields["regex"], out.text), out
        assert re.fullmatch("a*", out.text[:-1] if out.text.endswith("b") else out.text), out
    else:
        assert out.finish_reason == "stop" and out.text in answers, out


@pytest.mark.parametrize("choice", ["a.b", "(x)|y", "\\d+", "[z]^$", "a b~#&-", "{2}*?", "ab"])
def test_a_choice_matches_its_text_alone_whatever_regex_characters_it_holds(model, choice):
    """A choice is compiled as a regex alternation: each string matches itself, and no other text (its characters
    as a regex would: 'a.b' taking 'axb', '\\d+' taking '12')."""
    tok = structured.tokenizer(model.tokenizer, [2])
    st = jaxllm.Structured(choice=[choice, "other"])
    ids = model.tokenizer.encode(choice, add_special_tokens=False)
    matcher = llguidance.LLMatcher(tok, structured.grammar_text(st))
    assert matcher.validate_tokens(ids) == len(ids) and matcher.consume_tokens(ids) and matcher.is_accepting()
    for near in ("axb", "x", "12", "z", "a b", "{{", "abab"):
        matcher.reset()
        ids = model.tokenizer.encode(near, add_special_tokens=False)
        if near != choice and not choice.startswith(near) and not "other".startswith(near):
            assert matcher.validate_tokens(ids) < len(ids), near


@pytest.mark.parametrize("st", CONSTRAINTS, ids=lambda st: st.kind)
def test_copies_of_a_sampled_constrained_request_each_keep_their_own_matcher(model, served, st):
    """n > 1 as the server sends it (copies, seeds apart): each copy's answer matches, one seed gives one answer."""
    outs = _run(model, served[0], [(PROMPTS[0], SamplingParams(max_new_tokens=60, temperature=1.0, seed=s, structured=st))
                                   for s in (7, 8, 7, 9)])
    assert all(o.finish_reason == "stop" and _matches(st, o.text) for o in outs), [o.text for o in outs]
    assert outs[0].token_ids == outs[2].token_ids


@pytest.mark.parametrize("tools", [3, 2500])
def test_a_forced_call_among_thousands_of_tools_is_served(model, tools):
    """tool_choice 'required' is an anyOf of one object a tool: past 2,000 tools llguidance's parser row overflowed
    at the call's name (finish_reason 'error'); the call of the last tool is taken and completes the grammar."""
    from jaxllm.api import forced_tools

    def tool(i):
        return SimpleNamespace(function=SimpleNamespace(name=f"f{i}", parameters={"type": "object", "properties": {"x": {"type": "integer"}}}))

    st = forced_tools.constraint([tool(i) for i in range(tools)], "required")
    grammar = structured.Grammar(st, structured.tokenizer(model.tokenizer, [2]))
    assert grammar.advance(model.tokenizer.encode(f'[{{"name":"f{tools - 1}","parameters":{{"x":1}}}}]', add_special_tokens=False))
    assert grammar.advance([2]) and grammar.stopped, grammar.error
