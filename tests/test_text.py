"""Whitespace normalisation, sentence splitting and segmentation into Bark-sized pieces."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.errors import ConfigError, TextError
from streaming.text import estimate_seconds, normalize_whitespace, segment_text, split_sentences
from streaming.tokenizer import BarkTokenizer

VOCAB = Path(__file__).parent / "data" / "tokenizer" / "vocab.txt"
CJK_ENDS = "。！？"


def words(text: str) -> int:
    """Fake token counter: one token per space-separated word."""
    return len(text.split())


def assert_rejoins(pieces: list[str], text: str, *, strict: bool = True) -> None:
    """Pieces are consecutive slices of normalize_whitespace(text), one space apart.

    strict (sentences): a missing space is allowed only after a CJK end. Segments may also be cut
    without a space at a dash, a CJK comma or between characters of an unbreakable word.
    """
    normalized = normalize_whitespace(text)
    position = 0
    for index, piece in enumerate(pieces):
        assert piece and normalized.startswith(piece, position), (piece, normalized[position:])
        position += len(piece)
        if index + 1 < len(pieces):
            if normalized[position] == " ":
                position += 1
            else:
                assert not strict or _ends_softly(piece), f"no space after {piece!r}"
    assert position == len(normalized)


def _ends_softly(piece: str) -> bool:
    """A piece that may be followed directly by the next: a CJK end (then closers/tags), a dash or a cut word."""
    stripped = re.sub(r"(\s?\[[^\[\]]*\])+$", "", piece).rstrip("\"'”’»)]}）」』】〕〉》")
    return stripped[-1:] in CJK_ENDS


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  hello \t\n world  ", "hello world"),
        ("a\u00a0\u2003b\r\nc", "a b c"),
        ("", ""),
        (" \n\t ", ""),
    ],
)
def test_normalize_whitespace(text: str, expected: str) -> None:
    """Whitespace runs (Unicode included) collapse to one space and the ends are stripped."""
    assert normalize_whitespace(text) == expected


SPLITS = [
    ("Hello there. How are you?", ["Hello there.", "How are you?"]),
    ("One! Two? Three.", ["One!", "Two?", "Three."]),
    ("Really?! Yes!!! Wait... OK.", ["Really?!", "Yes!!!", "Wait...", "OK."]),
    ("No terminator at the end", ["No terminator at the end"]),
    ("Dr. Smith met Mr. Jones. Then they left.", ["Dr. Smith met Mr. Jones.", "Then they left."]),
    ("Mrs. Brown and Ms. Green saw Prof. White at St. Paul's.", ["Mrs. Brown and Ms. Green saw Prof. White at St. Paul's."]),
    ("It was Kramer vs. Kramer. Good film.", ["It was Kramer vs. Kramer.", "Good film."]),
    ("Fruit, e.g. Apples, i.e. Red ones. Done.", ["Fruit, e.g. Apples, i.e. Red ones.", "Done."]),
    ("We need pens, paper, etc. and some ink. Thanks.", ["We need pens, paper, etc. and some ink.", "Thanks."]),
    ("Bring pens, paper, etc. Then we start.", ["Bring pens, paper, etc.", "Then we start."]),
    ("We meet at 10 a.m. daily and at 5 p.m. on Fridays. Be on time.", ["We meet at 10 a.m. daily and at 5 p.m. on Fridays.", "Be on time."]),
    ("The U.S. Army arrived. It rained.", ["The U.S. Army arrived.", "It rained."]),
    ("I read J. R. R. Tolkien. He wrote well.", ["I read J. R. R. Tolkien.", "He wrote well."]),
    ("So do I. She agrees.", ["So do I.", "She agrees."]),
    ("Pi is 3.14 today. Version v1.2.3 is out.", ["Pi is 3.14 today.", "Version v1.2.3 is out."]),
    ("It is No. 5 on the list. No. I refuse.", ["It is No. 5 on the list.", "No.", "I refuse."]),
    ("Well... I think so. And then... we left.", ["Well...", "I think so.", "And then... we left."]),
    ("Hmm… maybe later. Fine.", ["Hmm… maybe later.", "Fine."]),
    ("Wait . . . what happened? Nothing.", ["Wait . . . what happened?", "Nothing."]),
    ("Visit www.example.com. Mail bob@example.org today. Go to https://a.b/c?d=1. Bye.",
     ["Visit www.example.com.", "Mail bob@example.org today.", "Go to https://a.b/c?d=1.", "Bye."]),
    ('He said "Stop." Then he left.', ['He said "Stop."', "Then he left."]),
    ("“Really?” she asked. Yes.", ["“Really?” she asked.", "Yes."]),
    ("(This is an aside.) Back to it.", ["(This is an aside.)", "Back to it."]),
    ("Hello. [laughs] How are you?", ["Hello. [laughs]", "How are you?"]),
    ("It happened on Jan. 5th in Paris. Then we left.", ["It happened on Jan. 5th in Paris.", "Then we left."]),
    ("Smith et al. (2019) showed it. Good.", ["Smith et al. (2019) showed it.", "Good."]),
    ("Call ext. 5 now. Thanks.", ["Call ext. 5 now.", "Thanks."]),
    ("The end. [music] ♪ Happy birthday to you ♪", ["The end.", "[music] ♪ Happy birthday to you ♪"]),
    ("Bravo! [applause] [music] ♪ La la ♪", ["Bravo! [applause]", "[music] ♪ La la ♪"]),
    ("That was funny! [laughs] [music]", ["That was funny! [laughs] [music]"]),
    ("[clears throat] Ladies and gentlemen. Welcome.", ["[clears throat] Ladies and gentlemen.", "Welcome."]),
    ("[laughs]", ["[laughs]"]),
    ("[laughs] [music]", ["[laughs] [music]"]),
    ("[sighs]. It is over.", ["[sighs]. It is over."]),
    ("Okay. ... Fine.", ["Okay. ...", "Fine."]),
    ("♪ La la la ♪. ♪ ♪", ["♪ La la la ♪. ♪ ♪"]),
    ("你好。我是中国人！你呢？", ["你好。", "我是中国人！", "你呢？"]),
    ("他说：“你好。”然后走了。", ["他说：“你好。”", "然后走了。"]),
    ("こんにちは。 元気ですか？", ["こんにちは。", "元気ですか？"]),
    ("Hello 你好。World.", ["Hello 你好。", "World."]),
    ("안녕하세요. 반갑습니다!", ["안녕하세요.", "반갑습니다!"]),
    ("नमस्ते। आप कैसे हैं?", ["नमस्ते।", "आप कैसे हैं?"]),
    ("¿Qué tal? ¡Muy bien! Gracias.", ["¿Qué tal?", "¡Muy bien!", "Gracias."]),
    ("  Spaces\n\tand   newlines.\n\nNext  line.  ", ["Spaces and newlines.", "Next line."]),
    ("", []),
    ("   ", []),
]


@pytest.mark.parametrize(("text", "expected"), SPLITS)
def test_split_sentences(text: str, expected: list[str]) -> None:
    """Each tricky input splits exactly as expected (abbreviations, decimals, tags, CJK, quotes)."""
    pieces = split_sentences(text)
    assert pieces == expected
    assert_rejoins(pieces, text)


def test_join_invariant_without_cjk() -> None:
    """Without CJK terminators, joining the pieces with single spaces gives the normalised text back."""
    text = "  Dr. Who? [laughs]\n Yes... no.  The end! “Quote.” (Aside.) "
    assert " ".join(split_sentences(text)) == normalize_whitespace(text)


SENTENCE_WORDS = st.sampled_from(
    ["hello", "World", "Dr.", "e.g.", "3.14", "v1.2", "J.", "U.S.", "a.m.", "No.", "5", "[laughs]", "[music]",
     "♪", "café", "niño", "你好", "世界", "“quoted”", "(aside)", "...", "—", "etc.", "I", "x@y.com", "Über"]
)
TERMINATORS = st.sampled_from([".", "!", "?", "?!", "...", "…", "。", "！", "？", ".”", "?)", "", "。」"])
SPACES = st.sampled_from([" ", "  ", "\n", "\t ", "", " \u00a0"])


@st.composite
def texts(draw: st.DrawFn) -> str:
    parts = []
    for _ in range(draw(st.integers(0, 6))):
        body = " ".join(draw(st.lists(SENTENCE_WORDS, min_size=0, max_size=6)))
        parts.append(body + draw(TERMINATORS) + draw(SPACES))
    return draw(SPACES) + "".join(parts)


@settings(max_examples=400, deadline=None)
@given(texts())
def test_split_invariants_on_random_text(text: str) -> None:
    """On random sentences: no empty pieces, the pieces rejoin to the normalised text, tags never stand alone."""
    pieces = split_sentences(text)
    assert_rejoins(pieces, text)
    if len(pieces) > 1:
        for piece in pieces:
            assert any(char.isalnum() for char in re.sub(r"\[[^\[\]]*\]", "", piece)), piece


LONG = (
    "Once upon a time, in a land far far away, there lived a king who had three daughters; each of them was "
    "more beautiful than the last. The king loved them dearly. One day — a rainy one — a stranger came to "
    "the gate: he was tall, thin and very old, and he carried a bag full of strange things. [laughs] "
    "Nobody knew his name."
)


@pytest.mark.parametrize("max_tokens", [5, 8, 20, 256])
@pytest.mark.parametrize("max_seconds", [2.0, 5.0, 13.0])
def test_segment_limits_with_word_counter(max_tokens: int, max_seconds: float) -> None:
    """Every segment respects max_tokens and max_seconds, and the segments rejoin to the text."""
    segments = segment_text(LONG, words, max_tokens=max_tokens, max_seconds=max_seconds, first_clause=False)
    for segment in segments:
        assert words(segment) <= max_tokens and estimate_seconds(segment) <= max_seconds
    assert_rejoins(segments, LONG, strict=False)
    assert len(segments) > 1 or max_tokens == 256 and max_seconds == 13.0


def test_segments_keep_whole_sentences_when_they_fit() -> None:
    """With room to spare, segments end at sentence ends and pack several sentences."""
    segments = segment_text(LONG, words, first_clause=False)
    assert all(segment.endswith((".", "]")) for segment in segments)
    assert segments[0].endswith("The king loved them dearly.")


def test_oversize_sentence_splits_at_clauses_then_evenly_at_words() -> None:
    """A sentence over the limit is cut at , ; : — first, then into near-equal word runs."""
    segments = segment_text(LONG, words, max_tokens=10, max_seconds=60.0, first_clause=False)
    assert segments[:3] == [
        "Once upon a time, in a land far far away,",
        "there lived a king who had three daughters;",
        "each of them was more beautiful than the last.",
    ]
    tight = segment_text("each of them was more beautiful than the last.", words, max_tokens=5, first_clause=False)
    assert tight == ["each of them was more", "beautiful than the last."]


def test_unbreakable_text_is_split_between_characters() -> None:
    """CJK text with no punctuation (or one huge word) is split between characters to fit."""
    segments = segment_text("你" * 250, len, max_tokens=100, max_seconds=1000.0, first_clause=False)
    assert [len(s) for s in segments] == [100, 100, 50]
    assert_rejoins(segments, "你" * 250, strict=False)
    huge = segment_text("x" * 500, len, max_tokens=64, max_seconds=1000.0, first_clause=False)
    assert "".join(huge) == "x" * 500 and all(len(s) <= 64 for s in huge)


@settings(max_examples=200, deadline=None)
@given(texts(), st.integers(1, 12), st.floats(0.5, 13.0), st.booleans(), st.integers(1, 8))
def test_segment_invariants_on_random_text(
    text: str, max_tokens: int, max_seconds: float, first_clause: bool, first_max_tokens: int
) -> None:
    """On random text and limits: segments are non-empty, within the limits, and rejoin to the text."""
    if not normalize_whitespace(text):
        return
    segments = segment_text(
        text, words, max_tokens=max_tokens, max_seconds=max_seconds,
        first_clause=first_clause, first_max_tokens=first_max_tokens,
    )
    for segment in segments:
        assert segment and words(segment) <= max_tokens and estimate_seconds(segment) <= max_seconds
    assert_rejoins(segments, text, strict=False)


def test_segment_limits_with_real_tokenizer() -> None:
    """With BarkTokenizer on the made-up vocab, every segment encodes to at most max_tokens ids."""
    tokenizer = BarkTokenizer.from_vocab_file(VOCAB)
    text = LONG + " 你好世界。我是中国人！ Dr. Müller lachte [laughs] über das Café, e.g. très naïve. " * 3
    for max_tokens in (12, 30, 256):
        segments = segment_text(text, tokenizer.count, max_tokens=max_tokens)
        assert all(tokenizer.count(s) <= max_tokens for s in segments)
        assert all(estimate_seconds(s) <= 13.0 for s in segments)
        assert_rejoins(segments, text, strict=False)
    assert len(segment_text(text, tokenizer.count, max_tokens=12)) > len(segment_text(text, tokenizer.count))


def test_first_clause_cuts_a_long_first_sentence() -> None:
    """A first sentence over first_max_tokens is cut after its first clauses; later ones are not."""
    segments = segment_text(LONG, words, first_max_tokens=8)
    assert segments[0] == "Once upon a time,"
    assert segments[1].startswith("in a land far far away, there lived a king")
    assert segment_text(LONG, words, first_max_tokens=10)[0] == "Once upon a time, in a land far far away,"


def test_first_clause_leaves_short_first_sentence_alone() -> None:
    """A first sentence within first_max_tokens is not cut, and short sentences still pack up to that budget."""
    text = "Hi there. How are you? " + LONG
    assert segment_text(text, words, first_max_tokens=24)[0] == "Hi there. How are you?"
    assert segment_text(text, words, first_max_tokens=2)[0] == "Hi there."


def test_first_clause_off_packs_the_first_segment() -> None:
    """With first_clause=False the first segment packs as much as the limits allow."""
    assert segment_text(LONG, words, first_clause=False)[0].startswith("Once upon a time, in a land")
    assert words(segment_text(LONG, words, first_clause=False)[0]) > 24


def test_first_clause_without_clause_marks_keeps_sentence() -> None:
    """A long first sentence with no clause mark is kept whole (within the normal limits)."""
    text = "This first sentence has no commas at all but it is rather long for a start. Next."
    assert segment_text(text, words, first_max_tokens=4)[0] == text.split(" Next.")[0]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_text_raises(text: str) -> None:
    """Empty or whitespace-only text raises TextError("text: is empty")."""
    with pytest.raises(TextError, match="^text: is empty$"):
        segment_text(text, words)


def test_tag_only_text_is_one_segment() -> None:
    """Text made only of a Bark tag is kept as one segment."""
    assert segment_text(" [laughs] ", words) == ["[laughs]"]


@pytest.mark.parametrize(
    ("option", "value"),
    [("max_tokens", 0), ("max_tokens", 257), ("max_tokens", 2.5), ("max_seconds", 0), ("first_max_tokens", 0)],
)
def test_bad_limits_raise_config_error(option: str, value: object) -> None:
    """Out-of-range limits raise ConfigError naming the option."""
    with pytest.raises(ConfigError, match=f"^{option}:"):
        segment_text("Hello.", words, **{option: value})


def test_estimate_seconds_rates() -> None:
    """The duration estimate follows ~2.75 words/s, 15 chars/s for long words and 4.5 CJK chars/s."""
    assert estimate_seconds("one two three four five six seven eight nine ten eleven") == pytest.approx(4.0)
    assert estimate_seconds("x" * 30) == pytest.approx(2.0)
    assert estimate_seconds("你好世界你好世界你") == pytest.approx(2.0)
    assert estimate_seconds("[laughs] ...") == pytest.approx(max(1 / 2.75, 6 / 15))


def test_long_sentence_is_not_cut_inside_a_quotation() -> None:
    """A sentence over the limit is cut at clause marks outside the quotation when those cuts suffice,
    so no segment ends inside "Goodnight, everyone, and thank you,"."""
    text = ('She smiled at them all — and then she said, "Goodnight, everyone, and thank you," and walked away '
            "into the night.")
    pieces = segment_text(text, lambda s: len(s.split()), max_tokens=12, first_clause=False)
    assert len(pieces) > 1
    quote = text[text.index('"'):text.rindex('"') + 1]
    assert any(quote in piece for piece in pieces), pieces


def test_segmenter_is_linear_on_unbroken_text() -> None:
    """20,000 characters of CJK without punctuation, and of emoji with combining marks: the number of tokenizer
    calls grows linearly with the text (bisecting the whole span each time was quadratic). No timing."""
    import random

    rng = random.Random(0)
    cjk = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(20_000))
    calls: list[int] = []

    def count(piece: str) -> int:
        calls.append(len(piece))
        return len(piece)

    for n in (5_000, 20_000):
        calls.clear()
        pieces = segment_text(cjk[:n], count, first_clause=False)
        assert "".join(pieces) == cjk[:n]
        per_char = sum(calls) / n  # characters read by the tokenizer per input character
        assert per_char < 12, (n, per_char)
