"""Prompt ids: what generate builds from a chat (through the chat template) or a plain prompt is
transformers' apply_chat_template(tokenize=True) / tokenizer(prompt), on the real SmolLM2 GGUF
tokenizer and on a Llama-3-style one trained here (a template that writes bos_token while the
tokenizer adds BOS too, date_string and tools, raise_exception). Nothing comes from the hub."""

import io
from types import SimpleNamespace

import pytest
from tokenizers import ByteLevelBPETokenizer, processors
from transformers import PreTrainedTokenizerFast

from jaxllm import tokenizing
from jaxllm.errors import GenerationError, InputError
from jaxllm.generation import encode, encode_messages, prepare

LLAMA3 = """{{- bos_token }}
{%- if not date_string is defined %}{%- set date_string = "26 Jul 2024" %}{%- endif %}
{%- if messages[0]['role'] == 'system' %}{%- set system_message = messages[0]['content']|trim %}{%- set messages = messages[1:] %}
{%- else %}{%- set system_message = "" %}{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if tools is not none %}{{- "Environment: ipython\\n" }}{%- endif %}
{{- "Today Date: " + date_string + "\\n\\n" + system_message + "<|eot_id|>" }}
{%- for message in messages %}
{%- if message.role not in ['user', 'assistant'] %}{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}
{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"""

CHATS = [
    [{"role": "user", "content": "Hello world"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
     {"role": "assistant", "content": "Hello! How can I help?"}, {"role": "user", "content": "Name a colour, é 🍮 東京"}],
]


@pytest.fixture(scope="module")
def llama3():
    """transformers' tokenizer: its post-processor adds <|begin_of_text|>, and its template writes bos_token."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["Hello world, be brief. Today Date: 26 Jul 2024", "user assistant system"] * 4, vocab_size=300,
                            min_frequency=1, special_tokens=["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>",
                                                             "<|end_header_id|>"])
    bpe.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                       special_tokens=[("<|begin_of_text|>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   chat_template=LLAMA3)


def reference(tok):
    return getattr(tok, "transformers", tok)  # transformers' tokenizer of jaxllm's stand-in


def hf_chat_ids(tok, messages):
    out = reference(tok).apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("name", ["smollm2", "llama3", "llama3_ours"])
def test_chat_and_plain_prompt_ids_are_transformers(name, request):
    tok = request.getfixturevalue(name.removesuffix("_ours"))
    if name.endswith("_ours"):
        tok = tokenizing.wrap(tok)  # jaxllm's stand-in around it renders the template itself
        assert isinstance(tok, tokenizing.Tokenizer)
    bos = reference(tok).bos_token_id
    for chat in CHATS:
        ids = encode_messages(tok, chat)
        assert ids == hf_chat_ids(tok, chat)
        if name != "smollm2":  # (SmolLM2's BOS is <|im_start|>, which starts every turn)
            assert ids.count(bos) == 1  # the template's, not a second one from the tokenizer
    system, user = CHATS[1][0]["content"], CHATS[0][0]["content"]
    assert encode(tok, user, chat=True, system=system) == hf_chat_ids(tok, [CHATS[1][0], CHATS[0][0]])
    assert encode(tok, user, chat=True) == hf_chat_ids(tok, CHATS[0])
    assert encode(tok, user, chat=False) == reference(tok)(user)["input_ids"]  # with the tokenizer's own BOS


def test_llama3_template_writes_one_bos_and_its_defaults(llama3):
    ids = encode_messages(llama3, CHATS[0])
    assert ids[0] == llama3.bos_token_id and ids.count(llama3.bos_token_id) == 1  # not the template's and the tokenizer's
    text = llama3.decode(ids)
    assert "Today Date: 26 Jul 2024" in text and "Environment" not in text  # date_string undefined, tools None


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_template_that_refuses_the_messages_is_one_line(llama3, wrapped):
    tok = tokenizing.wrap(llama3) if wrapped else llama3
    with pytest.raises(InputError, match=r"^the chat template refused the messages: Only user and assistant roles are "
                                         r"supported!$"):
        encode_messages(tok, [{"role": "tool", "content": "42"}])


def test_a_tokenizer_without_a_template_takes_plain_text_or_says_so(llama3):
    bare = PreTrainedTokenizerFast(tokenizer_object=llama3.backend_tokenizer, bos_token="<|begin_of_text|>")
    model = SimpleNamespace(tokenizer=bare, generation_config={}, config=SimpleNamespace(vocab_size=300))
    ids, _ = prepare(model, ["Hello world"], None)  # chat=None: no template, the plain text
    assert ids == [bare("Hello world")["input_ids"]] and ids[0][0] == bare.bos_token_id
    with pytest.raises(GenerationError, match=r"^this checkpoint's tokenizer has no chat template: use chat=False "
                                              r"\(--no-chat\)$"):
        prepare(model, ["Hello world"], None, chat=True)


ANSWERS = ["The capital of France is Paris.\n\nIt is", "  é 🍮 東京  ", "<|im_end|> not an end", "- one\n- two"]


@pytest.mark.parametrize("system, context", [(None, 8192), ("Be brief.", 8192), ("", 8192), ("Be brief.", 64)])
def test_the_chats_history_renders_as_transformers_turn_after_turn(smollm2, monkeypatch, system, context):
    """Each turn of python -m jaxllm.chat sends the ids of transformers' apply_chat_template of the
    conversation so far (the system message, the earlier turns with the answers shown, the new
    message), on the real SmolLM2 tokenizer: turn after turn, after /reset and after /system, and in a
    context the conversation outgrows, of the newest turns it keeps."""
    from jaxllm import chat
    from jaxllm.sampling import SamplingParams

    sent = []

    def generate(ids, params, engine, on_text, on_token):
        sent.append(ids)
        on_token(0, [1])
        on_text(0, ANSWERS[len(sent) % len(ANSWERS)])
        return SimpleNamespace(finish_reason="stop")

    monkeypatch.setattr(chat, "Engine", lambda *args, **kwargs: None)
    model = SimpleNamespace(tokenizer=smollm2, config=SimpleNamespace(context_length=8192), generate=generate)
    talk = chat.Chat(model, SamplingParams(max_new_tokens=8), system, context=context)
    head, expected, turns, dropped = [{"role": "system", "content": system}] if system is not None else [], [], 0, 0
    for line in ["Hello!", "  What is the capital of France?  ", "Name a colour, é 🍮 東京", "/reset", "Hi again",
                 "And\tnow?", "/system You are a pirate.", "Ahoy", "Arr?"]:
        talk.handle(line, io.StringIO())
        if line == "/reset":
            expected = []
        elif line.startswith("/system"):
            head, expected = [{"role": "system", "content": "You are a pirate."}], []
        else:
            user, kept = {"role": "user", "content": line.strip()}, talk.history[:-2]
            assert kept == expected[len(expected) - len(kept) :], line  # the newest turns
            assert sent[-1] == hf_chat_ids(smollm2, head + kept + [user]), line
            dropped += len(expected) - len(kept)
            expected = kept + [user, {"role": "assistant", "content": ANSWERS[len(sent) % len(ANSWERS)]}]
            turns += 1
    assert len(sent) == turns == 7 and (dropped > 0) == (context < 8192)
