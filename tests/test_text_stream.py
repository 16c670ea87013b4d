"""TextStream: streamed text equals the whole decode, stop strings end it (with the shortest token
prefix kept), and each token costs the same however long the answer, on real tokenizers: the
SmolLM2 GGUF's (byte-level BPE), a SentencePiece one as a Llama GGUF gives, byte-level BPE and
WordPiece (with transformers' space cleanup) trained here. Nothing comes from the hub."""

import random
import re
import string

import pytest

from jaxllm.text_stream import TextStream

TEXTS = [
    "Hello world, this is a test. It's fine, isn't it?",
    "Crème brûlée 🍮 costs 5€ — 東京で食べた",
    "  leading spaces\n\nnew lines\ttabs  and  double  spaces ",
    "👨‍👩‍👧 família 😀😀 ñandú — ½ ∑ 한국어 текст",
    "The capital of France is Paris. Paris is lovely; PARIS!",
    "don ' t stop , ok ? yes . they 're here ! we 've done it",
]
CORPUS = TEXTS + [
    "The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.",
    "Stop strings end the answer: STOP, halt, end. Ünïcödé — 東京 🍮 ok?",
]


@pytest.fixture(scope="module")
def sentencepiece():
    """Built as a Llama GGUF's tokenizer is (Metaspace, byte fallback, a Strip of the first space),
    from a small vocabulary: characters outside it fall back to byte tokens."""
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf import convert_gguf_tokenizer

    chars = ["\u2581"] + list(string.ascii_letters + string.digits + ".,!?'-:;()\"") + ["é", "è"]  # "\n" is <0x0A>
    words = ["\u2581the", "\u2581Hello", "\u2581world", "\u2581Paris", "\u2581test", "\u2581STOP", "ing", "er"]
    pieces = sorted({w[:k] for w in words for k in range(2, len(w) + 1)}, key=len)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + chars + pieces
    scores = [0.0] * 259 + [-1.0] * len(chars) + [float(len(p)) for p in pieces]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(chars) + len(pieces))
    backend, _ = convert_gguf_tokenizer("llama", {
        "tokenizer_type": "llama", "tokens": tokens, "scores": scores, "token_type": types,
        "bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 0})
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


@pytest.fixture(scope="module")
def byte_bpe():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS * 3, vocab_size=400, min_frequency=2, special_tokens=["<|endoftext|>", "<|im_start|>"])
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", bos_token="<|im_start|>")


@pytest.fixture(scope="module")
def wordpiece():
    """transformers cleans up spaces before punctuation in decode here: a window must not see it."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    wp = BertWordPieceTokenizer(lowercase=False)
    wp.train_from_iterator(CORPUS * 3, vocab_size=300, min_frequency=1)
    return PreTrainedTokenizerFast(tokenizer_object=wp, unk_token="[UNK]", sep_token="[SEP]", cls_token="[CLS]",
                                   pad_token="[PAD]", mask_token="[MASK]", clean_up_tokenization_spaces=True)


TOKENIZERS = ["smollm2", "sentencepiece", "byte_bpe", "wordpiece"]


def stream(tok, ids, stop=(), sizes=None, rng=None, **options):
    """Push `ids` one at a time (or in chunks of random sizes); (stream, pieces from push, flush)."""
    s = TextStream(tok, stop, **options)
    pieces, k = [], 0
    while k < len(ids):
        n = rng.randint(1, sizes) if sizes else 1
        pieces.append(s.push(ids[k : k + n]))
        k += n
    return s, pieces, s.flush()


def brute_force(tok, ids, stop, include_stop=False, min_tokens=0):
    """The old answer: decode every prefix; the first that holds a stop string ends the text (after
    it with include_stop; with min_tokens, one ending past the text of the first min_tokens tokens)."""
    floor = len(tok.decode(ids[:min_tokens], skip_special_tokens=True).rstrip("\ufffd"))
    for n in range(1, len(ids) + 1):
        text = tok.decode(ids[:n], skip_special_tokens=True)
        hits = [(i, len(s)) for i, s in ((text.find(s, max(0, floor - len(s) + 1)), s) for s in stop) if i >= 0]
        if hits:
            i, length = min(hits, key=lambda hit: hit[0])
            return text[: i + length * include_stop], n
    return tok.decode(ids, skip_special_tokens=True), None


@pytest.mark.parametrize("name", TOKENIZERS)
def test_streamed_text_equals_the_whole_decode(name, request):
    tok = request.getfixturevalue(name)
    rng = random.Random(0)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        full = tok.decode(ids, skip_special_tokens=True)
        for sizes in (None, 3, 7):
            s, pieces, rest = stream(tok, ids, sizes=sizes, rng=rng)
            assert "".join(pieces) + rest == full == s.text, (name, text)
            assert all("\ufffd" not in p for p in pieces + [rest])  # no half characters, ever
            assert not s.stopped and s.kept_tokens == len(ids) and s.tokens == ids


@pytest.mark.parametrize("skip", [True, False])
@pytest.mark.parametrize("name", TOKENIZERS)
def test_special_tokens_are_skipped_or_kept(name, skip, request):
    tok = request.getfixturevalue(name)
    special = [t for t in tok.all_special_ids if t != tok.unk_token_id]
    assert special
    rng = random.Random(1)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        for _ in range(3):  # special tokens at the start, the end, in runs and mid-character
            mixed = list(ids)
            for _ in range(rng.randint(1, 6)):
                mixed.insert(rng.randint(0, len(mixed)), rng.choice(special))
            s, pieces, rest = stream(tok, mixed, skip_special=skip)
            assert s.text == tok.decode(mixed, skip_special_tokens=skip)
            if skip or name != "sentencepiece":  # a kept one mid-character breaks its bytes: test_random_token_ids_even_broken_bytes
                assert "".join(pieces) + rest == s.text


@pytest.mark.parametrize("name", ["smollm2", "sentencepiece", "byte_bpe"])
def test_random_token_ids_even_broken_bytes(name, request):
    """Arbitrary ids: lone continuation bytes and unfinished characters mid-text stay U+FFFD as
    in the whole decode, and an unfinished one at the end comes out at flush.

    With byte-fallback tokens (SentencePiece), bytes that never form a character turn the whole
    run of byte tokens into U+FFFD, even characters of it already streamed (as "<0x41><0xF0>x"
    decodes to three U+FFFD and an x): there, only `text` is the whole decode's."""
    tok = request.getfixturevalue(name)
    rng = random.Random(2)
    for _ in range(150):
        ids = [rng.randrange(len(tok)) for _ in range(rng.randint(1, 30))]
        s, pieces, rest = stream(tok, ids, sizes=4, rng=rng)
        assert s.text == tok.decode(ids, skip_special_tokens=True)
        if name != "sentencepiece":
            assert "".join(pieces) + rest == s.text


def test_the_first_token_leading_space_is_decoded_as_in_the_whole(sentencepiece):
    tok = sentencepiece
    for text in [" Hello world", "  Hello", "Hello", " 🍮 the", "\u2581the", " ", "the   world  "]:
        ids = tok(text, add_special_tokens=True)["input_ids"]  # with <s> first
        s, pieces, rest = stream(tok, ids)
        assert "".join(pieces) + rest == tok.decode(ids, skip_special_tokens=True)


def test_characters_split_across_tokens_come_out_whole(byte_bpe, sentencepiece):
    for tok in (byte_bpe, sentencepiece):
        text = "🍮東京😀"
        ids = tok(text, add_special_tokens=False)["input_ids"]
        s, pieces, rest = stream(tok, ids)
        assert len(ids) > len(text)  # some character did span several tokens
        assert "".join(pieces) == text and rest == "" and all("\ufffd" not in p for p in pieces)
        assert len([p for p in pieces if p]) >= 3  # each as soon as its last byte came


@pytest.mark.parametrize("name", TOKENIZERS)
def test_stop_strings_against_every_prefix_decoded(name, request):
    """Stop strings of all kinds: spanning token boundaries, inside multi-byte characters,
    several at once, at the very start, kept in the text (include_stop), ignored in the text of
    the first min_tokens tokens; the text and kept_tokens are the brute force's."""
    tok = request.getfixturevalue(name)
    rng = random.Random(3)
    for text in TEXTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        full = tok.decode(ids, skip_special_tokens=True)
        stops = [(full[:4],), (full[-3:],), ("never there",)]
        for _ in range(12):
            stops.append(tuple(full[j : j + rng.randint(1, 6)] for j in rng.sample(range(len(full)), rng.randint(1, 3))))
        for k, stop in enumerate(stops):
            options = dict(include_stop=k % 2 == 1, min_tokens=rng.randrange(len(ids)) if k % 3 == 2 else 0)
            want_text, want_kept = brute_force(tok, ids, stop, **options)
            for sizes in (None, 5):
                s, pieces, rest = stream(tok, ids, stop, sizes=sizes, rng=rng, **options)
                assert s.text == want_text and "".join(pieces) + rest == want_text, (name, text, stop, options)
                assert s.stopped == (want_kept is not None)
                assert s.kept_tokens == (want_kept if want_kept is not None else len(ids)), (name, text, stop)


def test_stop_string_spanning_tokens(smollm2):
    tok = smollm2
    ids = tok("The capital of France is Paris. It is lovely.", add_special_tokens=False)["input_ids"]
    s, pieces, rest = stream(tok, ids, stop=("ris. It",))
    assert s.stopped and s.text == "The capital of France is Pa" == "".join(pieces) + rest
    n = s.kept_tokens
    assert "ris. It" in tok.decode(ids[:n]) and "ris. It" not in tok.decode(ids[: n - 1])
    assert s.push(ids) == "" and s.text == "The capital of France is Pa"  # nothing after a stop


def test_the_earliest_of_several_stop_strings_wins(smollm2):
    tok = smollm2
    ids = tok("one two three four five", add_special_tokens=False)["input_ids"]
    s, pieces, rest = stream(tok, ids, stop=("four", "two", "five"))
    assert s.text == "one " and s.kept_tokens == 2


def test_stop_string_at_the_very_start(smollm2, byte_bpe):
    for tok in (smollm2, byte_bpe):
        ids = tok("Paris is the capital.", add_special_tokens=False)["input_ids"]
        s, pieces, rest = stream(tok, ids, stop=("Paris",))
        assert s.stopped and s.text == "" and pieces == [""] * len(pieces) and rest == ""
        assert s.kept_tokens == brute_force(tok, ids, ("Paris",))[1]


def test_a_held_back_partial_match_is_released_when_it_does_not_complete(smollm2):
    tok = smollm2
    text = "Paris. Paris is big. Par"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    s = TextStream(tok, stop=("Paris!", "big deal"))
    out, pieces = "", []
    for t in ids:
        pieces.append(s.push([t]))
        out += pieces[-1]
        for stop in s.stop:  # never a tail that may still grow into a stop string
            assert not any(out.endswith(stop[:k]) for k in range(1, len(stop)))
        assert text.startswith(out)
    assert not s.stopped and out + s.flush() == text
    assert tok.decode(ids[:1]) == "Paris" and pieces[:2] == ["", "Paris."]  # held until "." came
    assert out == "Paris. Paris is big. " and s.text == text  # "Par" held back until the flush


def test_held_back_text_before_an_unfinished_character(byte_bpe):
    """A stop string that ends in a multi-byte character: its start is held while the bytes come."""
    tok = byte_bpe
    ids = tok("costs 5€ — 東京 ok", add_special_tokens=False)["input_ids"]
    for stop in (("5€",), ("京 o",), ("東京",), ("—",)):
        s, pieces, rest = stream(tok, ids, stop=stop)
        want_text, want_kept = brute_force(tok, ids, stop)
        assert s.text == want_text == "".join(pieces) + rest and s.kept_tokens == want_kept


def test_cleanup_of_spaces_is_as_in_the_whole_decode(wordpiece):
    tok = wordpiece
    text = "don ' t stop , ok ? yes . they 're here ! we 've done it . i 'm sure it 's fine"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    full = tok.decode(ids, skip_special_tokens=True)
    assert full != tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)  # it cleans up
    s, pieces, rest = stream(tok, ids)
    assert "".join(pieces) + rest == full == s.text
    assert sum(1 for p in pieces if p) > 5  # text is released as it comes, not only at the end


class CountingTokenizer:
    """The tokenizer, counting the token ids that pass through decode."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoded = 0

    def decode(self, ids, **kwargs):
        self.decoded += len(ids)
        return self.tokenizer.decode(ids, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


@pytest.mark.parametrize("name", ["smollm2", "sentencepiece"])
def test_work_per_token_does_not_grow_with_the_answer(name, request):
    """A ~4,000-token answer streamed a token at a time: the ids decoded per push stay bounded by a
    small constant, no more for the last 500 pushes than for the first 500 (the old code decoded
    every id at every push: ~1.9 million ids for the last 500). The answer repeats one paragraph,
    cut so that the last 500 tokens start where the first 500 (after the first) do: like with like."""
    tok = request.getfixturevalue(name)
    block = tok(" ".join(TEXTS) + "\n", add_special_tokens=False)["input_ids"]
    n = len(block) * ((4000 - 501) // len(block)) + 501
    ids = (block * (n // len(block) + 1))[:n]
    counting = CountingTokenizer(tok)
    s = TextStream(counting, stop=("never appears", "STOP HERE"))
    per_push, out = [], []
    for t in ids:
        before = counting.decoded
        out.append(s.push([t]))
        per_push.append(counting.decoded - before)
    out.append(s.flush())
    assert "".join(out) == tok.decode(ids, skip_special_tokens=True)
    first, last = per_push[1:501], per_push[-500:]  # the very first push decodes one id less: no context
    assert n > 3900 and max(per_push) <= 16 and sum(per_push) <= 5 * n, (max(per_push), sum(per_push))
    assert sum(last) <= sum(first) and max(last) <= max(first), (sum(first), sum(last))


def test_bytes_that_never_form_a_character_do_not_grow_the_window(smollm2, sentencepiece):
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    lone = [(smollm2, smollm2.convert_tokens_to_ids(bytes_to_unicode()[0x80])),
            (sentencepiece, sentencepiece.convert_tokens_to_ids("<0x80>"))]
    for tok, byte in lone:
        ids = tok("Hi 🍮", add_special_tokens=False)["input_ids"] + [byte] * 300
        ids += tok(" ok 東京", add_special_tokens=False)["input_ids"]
        counting = CountingTokenizer(tok)
        s = TextStream(counting)
        pieces, per_push = [], []
        for t in ids:
            before = counting.decoded
            pieces.append(s.push([t]))
            per_push.append(counting.decoded - before)
        rest = s.flush()
        full = tok.decode(ids, skip_special_tokens=True)
        assert s.text == full
        if tok is smollm2:  # with byte fallback, the bytes make the run of byte tokens before them U+FFFD too
            assert "".join(pieces) + rest == full and full.count("\ufffd") == 300
        assert max(per_push) <= 40, max(per_push)


def test_a_push_after_flush_goes_on_where_it_stopped(byte_bpe):
    tok = byte_bpe
    ids = tok("Crème 🍮 東京 ok", add_special_tokens=False)["input_ids"]
    cut = next(k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd"))  # mid-character
    s = TextStream(tok)
    first = "".join(s.push([t]) for t in ids[:cut]) + s.flush()
    assert first == tok.decode(ids[:cut])  # the unfinished character comes out as U+FFFD
    second = "".join(s.push([t]) for t in ids[cut:]) + s.flush()
    assert s.text == tok.decode(ids)
    assert len(first) + len(second) == len(s.text)  # nothing twice


def _fffd_runs_as_wildcards(whole: str) -> str:
    """A regex of `whole` in which each run of U+FFFD stands for any text."""
    return "".join(".+?" if run[0] == "\ufffd" else re.escape(run) for run in re.findall("\ufffd+|[^\ufffd]+", whole))


def test_streamed_text_goes_on_from_what_it_streamed_after_broken_bytes(sentencepiece):
    """A stray byte after characters of byte tokens turns them all into U+FFFD in the whole decode,
    after they were streamed: `text` is the whole decode, and what comes out after goes on from what
    was streamed, neither repeating the whole decode's tail (" the worldld") nor skipping it."""
    tok = sentencepiece
    byte = lambda b: tok.convert_tokens_to_ids(f"<0x{b:02X}>")  # noqa: E731
    ids = tok("Hello", add_special_tokens=False)["input_ids"] + [byte(b) for b in "東京".encode() + b"\xe6"]
    ids += tok(" the world", add_special_tokens=False)["input_ids"]
    whole = tok.decode(ids, skip_special_tokens=True)
    assert whole == "Hello" + "\ufffd" * 7 + " the world"
    for stop, text in (((), whole), (("world",), whole[: -len("world")])):
        s, pieces, rest = stream(tok, ids, stop)
        assert s.text == text and "".join(pieces) + rest == "Hello東京\ufffd\ufffd\ufffd" + text[len("Hello") + 7 :]
    rng = random.Random(4)
    for _ in range(100):  # stray bytes in text: what is streamed is the whole decode, but for its U+FFFD runs
        ids = tok(rng.choice(TEXTS), add_special_tokens=False)["input_ids"]
        for _ in range(rng.randint(1, 3)):
            ids.insert(rng.randint(0, len(ids)), rng.randrange(3, 259))  # a byte token
        full = tok.decode(ids, skip_special_tokens=True)
        stop = tuple(x for x in (full[j : j + rng.randint(1, 4)] for j in rng.sample(range(len(full)), 2)) if "\ufffd" not in x)
        s, pieces, rest = stream(tok, ids, stop, sizes=3, rng=rng)
        want_text, want_kept = brute_force(tok, ids, stop)
        assert s.text == want_text and s.kept_tokens == (want_kept or len(ids))
        assert re.fullmatch(_fffd_runs_as_wildcards(s.text), "".join(pieces) + rest, re.S), (ids, stop)
