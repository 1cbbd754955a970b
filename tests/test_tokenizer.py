"""BarkTokenizer gives the same ids as transformers' BertTokenizer; loading errors are clear."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from streaming.errors import WeightsError
from streaming.tokenizer import BarkTokenizer, load_tokenizer, read_vocab

VOCAB = Path(__file__).parent / "data" / "tokenizer" / "vocab.txt"

TEXTS = [
    "hello world",
    "Hello, world! This is the streaming text.",
    "café résumé naïve déjà vu Ça va",
    "España niño mañana señor über Müller Zürich",
    "Kraków Łódź łódź São Paulo",
    "cafe\u0301 nin\u0303o u\u0308ber",  # combining accents (decomposed)
    "\u0301 leading combining mark",
    "你好世界。我是中国人！",
    "こんにちは 日本語",
    "안녕하세요",
    "Привет мир",
    "नमस्ते",
    "In 2023, 3.14 and 10,000 and v1.2.3",
    "!!!???...,,,;;:: --- ()[]{}",
    "“quoted” ‘single’ «guillemets» ¿qué? ¡sí!",
    "emoji 😀 and 🎵 and 👍🏽",
    "[laughs] hello [music] ♪ la la ♪ [clears throat] [sighs]",
    "hello[laughs]world",
    "tabs\tand\nnewlines\r\nand  many   spaces\u00a0nbsp\u2003em",
    "zero\u200bwidth soft\u00adhyphen control\x07bell null\x00x",
    "replacement \ufffd char",
    "unaffable supercalifragilistic",
    "a" * 100,
    "a" * 101,
    "x" * 250 + " hello",
    "streaming tokenize laughing",
    "[MASK] [CLS] and [SEP] or [UNK] inline[PAD]",
    "Dr. Smith vs. Mr. Jones, e.g. at 10 a.m. (U.S.)",
    "www.example.com mail@example.org https://example.com/x?y=1",
    "",
    "   ",
    "\u3000全角\u3000スペース",
    "ＡＢＣ full-width",
    "𠀀 extension-B ideograph 丽 compatibility",
]


@pytest.fixture(scope="module")
def vocab_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("vocab")
    return Path(shutil.copy(VOCAB, directory / "vocab.txt"))


@pytest.fixture(scope="module")
def ours(vocab_file: Path) -> BarkTokenizer:
    return BarkTokenizer.from_vocab_file(vocab_file)


@pytest.fixture(scope="module")
def reference(vocab_file: Path) -> transformers.BertTokenizer:
    return transformers.BertTokenizer(
        str(vocab_file), do_lower_case=False, tokenize_chinese_chars=True, strip_accents=None
    )


def test_vocab_fixture_has_the_needed_entries() -> None:
    """The made-up vocab holds special tokens, ## pieces, accents, CJK, digits and tag words."""
    vocab = read_vocab(VOCAB)
    for token in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[", "]", "laughs", "##ing", "é", "你", "3", "♪"):
        assert token in vocab
    assert 300 <= len(vocab) <= 1000


@pytest.mark.parametrize("text", TEXTS)
def test_ids_match_transformers(ours: BarkTokenizer, reference: transformers.BertTokenizer, text: str) -> None:
    """Our ids equal BertTokenizer.encode(text, add_special_tokens=False) on a tricky text."""
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False)


def test_cases_exercise_unk_and_pieces(ours: BarkTokenizer) -> None:
    """The table is not trivial: emoji give [UNK], tags split into brackets, words into ## pieces."""
    vocab = read_vocab(VOCAB)
    assert ours.encode("😀") == [vocab["[UNK]"]]
    assert ours.encode("[laughs]") == [vocab["["], vocab["laughs"], vocab["]"]]
    assert ours.encode("laughing") == [vocab["laugh"], vocab["##ing"]]
    assert ours.encode("a" * 101) == [vocab["[UNK]"]]
    assert ours.encode("[MASK]") == [vocab["[MASK]"]]
    assert ours.count("你好") == 2


ALPHABET = st.sampled_from(
    list("abcehlorstuwxyzHSAT0123456789 .,!?;:'\"-()[]")
    + ["é", "ñ", "ü", "ß", "ł", "\u0301", "\u0308", "你", "好", "。", "！", "こ", "ん", "안", "♪", "…", "—", "😀", "🎵"]
    + ["\t", "\n", "\u00a0", "\u200b", "\x00", "\x07"]
    + [" laughs ", "[laughs]", "[music]", "##ing", "[MASK]", "ing", "hello", "world", "caf"]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(ALPHABET, max_size=40).map("".join))
def test_ids_match_transformers_on_random_text(
    ours: BarkTokenizer, reference: transformers.BertTokenizer, text: str
) -> None:
    """On random mixes of accents, CJK, punctuation, emoji, control chars and tags the ids agree."""
    assert ours.encode(text) == reference.encode(text, add_special_tokens=False)


def test_vocab_size_is_highest_id_plus_one(ours: BarkTokenizer) -> None:
    """vocab_size counts every line of vocab.txt."""
    assert ours.vocab_size == len(VOCAB.read_text(encoding="utf-8").splitlines())


def test_load_tokenizer_from_local_directory(vocab_file: Path) -> None:
    """A directory (Path or str) holding vocab.txt loads the same tokenizer."""
    for source in (vocab_file.parent, str(vocab_file.parent)):
        assert load_tokenizer(source).encode("hello [laughs] 你好") == BarkTokenizer.from_vocab_file(
            vocab_file
        ).encode("hello [laughs] 你好")


def test_load_tokenizer_from_tokenizer_json(tmp_path: Path, reference: transformers.BertTokenizer) -> None:
    """A directory with only tokenizer.json (as transformers saves it) gives the same ids."""
    reference.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    text = "Hello, café [laughs] 你好 😀 laughing"
    assert load_tokenizer(tmp_path).encode(text) == reference.encode(text, add_special_tokens=False)


def test_non_wordpiece_tokenizer_json_is_rejected(tmp_path: Path) -> None:
    """A tokenizer.json holding another model type (BPE) is refused, naming the file and WordPiece."""
    from tokenizers import Tokenizer
    from tokenizers.models import BPE

    Tokenizer(BPE(vocab={"a": 0}, merges=[])).save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(WeightsError, match="holds a BPE model, expected WordPiece"):
        load_tokenizer(tmp_path)


def test_missing_vocab_message(tmp_path: Path) -> None:
    """A local directory without vocab.txt raises WeightsError naming the file, the place and the fix."""
    with pytest.raises(WeightsError) as info:
        load_tokenizer(tmp_path)
    message = str(info.value)
    assert "vocab.txt" in message and str(tmp_path) in message and "pass --tokenizer DIR" in message
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_missing_absolute_path_is_treated_as_local(tmp_path: Path) -> None:
    """An absolute path that does not exist is reported as a missing local directory, not a hub repo."""
    with pytest.raises(WeightsError, match="found neither vocab.txt"):
        load_tokenizer(str(tmp_path / "nowhere"))


def test_vocab_without_unk_is_rejected(tmp_path: Path) -> None:
    """A vocab.txt with no [UNK] line is refused with a message saying so."""
    (tmp_path / "vocab.txt").write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(WeightsError, match=r"no \[UNK\]"):
        load_tokenizer(tmp_path)


def test_hub_miss_offline_gives_one_clear_message(tmp_path: Path) -> None:
    """A hub repo absent from the cache with local_files_only raises WeightsError with repo, place and fix."""
    with pytest.raises(WeightsError) as info:
        load_tokenizer("someone/not-cached-tokenizer", local_files_only=True, cache_dir=tmp_path)
    message = str(info.value)
    assert "'someone/not-cached-tokenizer'" in message and "vocab.txt" in message
    assert str(tmp_path) in message and "HF_HUB_OFFLINE=1" in message and "local directory" in message
    assert "\n" not in message and info.value.__cause__ is None


def test_hub_repo_found_in_cache(tmp_path: Path) -> None:
    """A hub repo id resolves through huggingface_hub's cache layout (refs/main → snapshot/vocab.txt)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--bert"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    shutil.copy(VOCAB, snapshot / "vocab.txt")
    tokenizer = load_tokenizer("someone/bert", local_files_only=True, cache_dir=tmp_path)
    assert tokenizer.encode("hello world") == [read_vocab(VOCAB)["hello"], read_vocab(VOCAB)["world"]]


def test_hub_tokenizer_error_names_the_flag(tmp_path: Path) -> None:
    """A hub tokenizer that cannot be had (offline, empty cache) says to pass --tokenizer DIR."""
    with pytest.raises(WeightsError, match="pass --tokenizer DIR"):
        load_tokenizer("bert-base-multilingual-cased", local_files_only=True, cache_dir=tmp_path)
