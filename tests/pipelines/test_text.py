"""Text for language models (pipelines.text): reading a corpus, vocabularies, contiguous
splits, the streams and chunks of truncated BPTT, and the reference figures."""

from __future__ import annotations

import lzma
import math
import re

import numpy as np
import pytest
import torch

from pipelines.errors import DataError
from pipelines.text import (
    TextBatches,
    Vocabulary,
    encode_corpus,
    in_chunks,
    read_corpus,
    read_description,
    read_share,
    reference_figures,
    streams,
    write_prepared,
    xz_bits,
)


def test_byte_vocabulary_encodes_any_file_and_decodes_back():
    vocab = Vocabulary.fit("bytes", b"", "unused")
    text = "naïve\x00 bytes".encode()
    ids = vocab.encode(text, "f")
    assert vocab.size == 256 and ids.tolist() == list(text)
    assert vocab.decode(ids) == text.decode()


def test_character_vocabulary_is_the_training_texts_characters_in_order():
    vocab = Vocabulary.fit("chars", "ba ñb".encode(), "train")
    assert vocab.chars == " abñ" and vocab.size == 4
    ids = vocab.encode("ñab".encode(), "val")
    assert ids.tolist() == [3, 1, 2] and vocab.decode(ids) == "ñab"


def test_character_vocabulary_names_what_the_training_text_lacks():
    vocab = Vocabulary.fit("chars", b"abc", "train")
    with pytest.raises(DataError, match=r"val\.txt.*'x', 'z'.*task\.vocab=bytes"):
        vocab.encode(b"abzcx", "val.txt")


def test_character_vocabulary_refuses_text_that_is_not_utf8():
    with pytest.raises(DataError, match=r"notes\.txt: not UTF-8 text \(byte 1"):
        Vocabulary.fit("chars", b"a\xff", "notes.txt")


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_bytes(b"bbbb")
    (root / "a.txt").write_bytes(b"aa")
    (root / "sub" / "c.md").write_bytes(b"ccc")
    (root / ".hidden").write_bytes(b"never read")
    return root


def test_a_directory_is_read_recursively_in_name_order_without_hidden_files(corpus):
    read = read_corpus(str(corpus))
    assert read.text == b"aabbbbccc"
    assert [name.rsplit("/", 1)[1] for name in read.files] == ["a.txt", "b.txt", "c.md"]
    assert read.file_at(0).endswith("a.txt") and read.file_at(5).endswith("b.txt")
    assert read.file_at(8).endswith("c.md")


def test_a_glob_and_a_single_file(corpus):
    assert read_corpus(f"{corpus}/*.txt").text == b"aabbbb"
    assert read_corpus(f"{corpus}/sub/c.md").text == b"ccc"


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file or directory"),
    ("nothing matches", "no files there"),
    ("empty", "are empty"),
])
def test_a_corpus_that_gives_no_text_is_refused_naming_the_path(tmp_path, case, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "blank.txt").write_bytes(b"")
    path = {"missing": tmp_path / "nowhere", "nothing matches": tmp_path / "empty" / "*.md",
            "empty": tmp_path / "empty"}[case]
    with pytest.raises(DataError, match=f"task.path {re.escape(str(path))}.*{message}"):
        read_corpus(str(path))


def prepare(path: str, kind: str, val_fraction: float, test_fraction: float,
            directory: str):
    layout, tokens = encode_corpus(path, kind, val_fraction, test_fraction)
    write_prepared(directory, layout, tokens)
    return layout


def test_prepare_splits_contiguously_and_every_rank_reads_an_equal_share(tmp_path):
    (tmp_path / "t.txt").write_bytes(bytes(range(100)))
    assert read_description(str(tmp_path / "prep")) is None
    layout = prepare(str(tmp_path / "t.txt"), "bytes", 0.2, 0.1, str(tmp_path / "prep"))
    assert layout.tokens == {"train": 70, "val": 20, "test": 10}
    directory = str(tmp_path / "prep")
    assert read_share(directory, "train", 0, 1).tolist() == list(range(70))
    assert read_share(directory, "val", 0, 1).tolist() == list(range(70, 90))
    shares = [read_share(directory, "train", rank, 3).tolist() for rank in range(3)]
    assert shares == [list(range(0, 23)), list(range(23, 46)), list(range(46, 69))]
    assert read_description(directory) == layout


def test_a_character_split_never_starts_inside_a_character(tmp_path):
    (tmp_path / "t.txt").write_text("é" * 50)  # two bytes each
    layout = prepare(str(tmp_path / "t.txt"), "chars", 0.15, 0.15, str(tmp_path / "prep"))
    assert sum(layout.tokens.values()) == 50 and layout.vocab.chars == "é"


def test_an_empty_split_and_unknown_characters_in_val_are_refused(tmp_path):
    (tmp_path / "t.txt").write_text("abcdefghij")
    with pytest.raises(DataError, match="the val split is empty"):
        prepare(str(tmp_path / "t.txt"), "bytes", 0.01, 0.35, str(tmp_path / "p1"))
    (tmp_path / "u.txt").write_text("aaaaaaaaaaaaaaaaxy")
    with pytest.raises(DataError, match=r"u\.txt \(test split.*'x', 'y'"):
        prepare(str(tmp_path / "u.txt"), "chars", 0.1, 0.1, str(tmp_path / "p2"))


def test_streams_are_contiguous_stretches_that_overlap_by_one_token():
    rows = streams(np.arange(21), 4)
    assert rows.tolist() == [[0, 1, 2, 3, 4, 5], [5, 6, 7, 8, 9, 10],
                             [10, 11, 12, 13, 14, 15], [15, 16, 17, 18, 19, 20]]


def text_batches(tmp_path, tokens=200, batch_size=4, bptt=5, world=1, rank=0):
    (tmp_path / "t.txt").write_bytes(bytes(range(251)) * (tokens // 251) + bytes(
        range(tokens % 251)))
    directory = str(tmp_path / "prep")
    layout = prepare(str(tmp_path / "t.txt"), "bytes", 0.1, 0.1, directory)
    return TextBatches(directory, layout, batch_size, bptt, rank, world)


def test_training_chunks_walk_each_stream_in_order_and_reset_each_epoch(tmp_path):
    batches = text_batches(tmp_path)  # 160 training tokens: 4 streams of 39 + 1
    assert batches.chunks_per_epoch == 7
    first, second = batches.train_batch(1), batches.train_batch(2)
    assert first["reset"].all() and not second["reset"].any()
    inputs = first["inputs"]
    assert inputs[1].tolist() == [39, 40, 41, 42, 43]
    assert first["targets"][1].tolist() == [40, 41, 42, 43, 44]
    assert second["inputs"][1].tolist() == [44, 45, 46, 47, 48]
    assert first["inputs"].shape == (4, 5) and first["lengths"].tolist() == [5] * 4
    again = batches.train_batch(8)  # the next epoch starts the streams again
    assert again["reset"].all() and torch.equal(again["inputs"], first["inputs"])


def test_a_share_too_small_for_the_streams_is_refused(tmp_path):
    with pytest.raises(DataError, match=r"train\.batch_size=8 streams .*task\.bptt=30"):
        text_batches(tmp_path, tokens=200, batch_size=8, bptt=30)


def test_evaluation_chunks_score_every_token_of_the_streams_once():
    tokens = np.arange(101) % 7
    chunks = list(in_chunks(tokens, 4, 6))
    assert [bool(c["reset"].all()) for c in chunks] == [True] + [False] * 4
    assert sum(c["targets"].numel() for c in chunks) == 100  # 4 streams of 25 targets
    assert chunks[-1]["inputs"].shape[1] == 1  # 25 = 4 * 6 + 1


def test_the_unigram_reference_is_the_cross_entropy_of_training_frequencies():
    tokens = {"train": np.array([0, 0, 1]), "val": np.array([0, 1]), "test": np.array([1])}
    figures = reference_figures(tokens, {"train": b"aab", "val": b"ab", "test": b"b"}, 2)
    p0, p1 = 3 / 5, 2 / 5  # add-one counts 3 and 2
    assert figures["val_bpc_unigram"] == pytest.approx(-(math.log2(p0) + math.log2(p1)) / 2)
    assert figures["bpc_unigram"] == pytest.approx(-math.log2(p1))


def test_xz_spends_few_bits_on_text_it_has_seen_before():
    rng = np.random.default_rng(0)
    text = rng.integers(0, 256, 4000, dtype=np.uint8).tobytes()
    alone = xz_bits(b"", text)
    assert alone == 8 * len(lzma.compress(text, preset=9)) - 8 * len(lzma.compress(b"",
                                                                                    preset=9))
    assert alone / len(text) > 7.5  # random bytes do not compress
    assert xz_bits(text, text) / len(text) < 0.5  # a repeat does
