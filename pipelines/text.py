"""Text for language models: a corpus read from files, a byte or character vocabulary,
contiguous splits, and the chunks of truncated backpropagation through time.

Preparation (the driver, once per run; a resume reuses it):

    files (sorted) --concatenate--> corpus --vocabulary--> token ids
    token ids:  [ train ..................... | val ...... | test ...... ]
                 contiguous stretches, never interleaved (task.val_fraction, test_fraction)

Storage, beside the run's checkpoints:

    <dir>/text.json              the vocabulary, the files read, the references
    <dir>/{train,val,test}.bin   token ids, little-endian uint16

Batches (every worker): rank r reads only its own share of a split, the r-th of `world`
equal stretches, and lays it out as B parallel streams (B = train.batch_size), as
word_language_model's `batchify` does:

    share:    t0 t1 t2 ................................................ t(N-1)
    stream 0: t0       ... t(L)            each stream holds L + 1 tokens;
    stream 1: t(L)     ... t(2L)           the targets are the inputs shifted by one
    ...
                 chunk 0         chunk 1         chunk 2   (task.bptt steps each)
    row b:    [x x x x x x]   [x x x x x x]   [x x x x x x]  ...

Training step s takes chunk (s - 1) mod (L // bptt) of every stream, so a batch is a pure
function of the step and a resumed run sees exactly the text it would have. The model
carries each row's hidden state from one chunk to the next; `reset` (one flag per row)
marks the first chunk of an epoch, where every stream starts again from the beginning of
the share.
"""

from __future__ import annotations

import fnmatch
import json
import lzma
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import torch

from pipelines.errors import DataError
from pipelines.tables import filesystem_of, read_text, write_text

VOCABULARIES = ("bytes", "chars")
DESCRIPTION_FILE = "text.json"
SPLITS = ("train", "val", "test")
TOKEN_DTYPE = np.dtype("<u2")
EVAL_STREAMS = 16  # streams a validation or test share is read in
XZ_CONTEXT = 16 << 20  # bytes of preceding text the xz reference may use


@dataclass(frozen=True)
class Vocabulary:
    """Bytes (256 symbols: any file encodes) or the characters of the training text.

    A character vocabulary holds the characters in code-point order; a symbol's id is its
    position.
    """

    kind: str
    chars: str = ""

    @property
    def size(self) -> int:
        return 256 if self.kind == "bytes" else len(self.chars)

    @classmethod
    def fit(cls, kind: str, text: bytes, where: str) -> Vocabulary:
        if kind == "bytes":
            return cls("bytes")
        return cls("chars", "".join(sorted(set(_decode(text, where)))))

    def encode(self, text: bytes, where: str) -> np.ndarray:
        """Token ids of `text`; a DataError names the characters the vocabulary lacks."""
        if self.kind == "bytes":
            return np.frombuffer(text, dtype=np.uint8).astype(TOKEN_DTYPE)
        codes = np.frombuffer(_decode(text, where).encode("utf-32-le"), dtype="<u4")
        known = np.frombuffer(self.chars.encode("utf-32-le"), dtype="<u4")
        ids = np.searchsorted(known, codes).clip(0, len(known) - 1)
        missing = known[ids] != codes
        if missing.any():
            unknown = sorted({chr(code) for code in codes[missing]})
            raise DataError(
                f"{where}: {len(unknown)} character(s) that the training text never uses "
                f"({', '.join(repr(char) for char in unknown[:10])}"
                f"{', ...' if len(unknown) > 10 else ''}); task.vocab=chars learns its "
                "characters from the training split only. Use task.vocab=bytes (it covers "
                "any file), or move text so the training split holds every character.")
        return ids.astype(TOKEN_DTYPE)

    def decode(self, ids) -> str:
        ids = np.asarray(ids, dtype=np.int64)
        if self.kind == "bytes":
            return ids.astype(np.uint8).tobytes().decode("utf-8", errors="replace")
        return "".join(self.chars[i] for i in ids)


def _decode(text: bytes, where: str) -> str:
    try:
        return text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{where}: not UTF-8 text (byte {error.start}: {error.reason}); "
                        "task.vocab=chars reads UTF-8. Use task.vocab=bytes for any "
                        "other encoding.") from None


@dataclass(frozen=True)
class TextLayout:
    """What the prepared text is: its vocabulary, the files it came from, the tokens in
    each split, and the reference figures on it (`references`)."""

    vocab: Vocabulary
    files: tuple[str, ...]
    tokens: dict[str, int]
    references: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> TextLayout:
        data = json.loads(text)
        return cls(Vocabulary(**data["vocab"]), tuple(data["files"]), data["tokens"],
                   data["references"])


@dataclass(frozen=True)
class Corpus:
    """The files of a corpus, concatenated, and where each one starts in `text`."""

    text: bytes
    files: tuple[str, ...]
    starts: tuple[int, ...]

    def file_at(self, offset: int) -> str:
        return self.files[int(np.searchsorted(self.starts, offset, side="right")) - 1]


def read_corpus(path: str) -> Corpus:
    """Every file `path` names: one file, a directory (all its files, recursively, in
    name order, hidden ones left out) or a glob such as `books/*.txt`; local or s3://."""
    filesystem, root = filesystem_of(path)
    pattern = root if any(char in root for char in "*?[") else ""
    base = root[:root.rfind("/", 0, _first_wildcard(root))] if pattern else root
    info = filesystem.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"task.path {path}: no such file or directory.")
    if info.type == pafs.FileType.File and not pattern:
        names = [base]
    else:
        found = filesystem.get_file_info(pafs.FileSelector(base, recursive=True))
        names = sorted(entry.path for entry in found if entry.type == pafs.FileType.File
                       and not any(part.startswith(".") for part
                                   in entry.path[len(base):].split("/"))
                       and (not pattern or fnmatch.fnmatch(entry.path, pattern)))
    if not names:
        raise DataError(f"task.path {path}: no files there; expected a text file, a "
                        "directory of text files or a glob that matches some.")
    parts, starts, offset = [], [], 0
    for name in names:
        try:
            with filesystem.open_input_stream(name) as stream:
                parts.append(stream.read())
        except (OSError, pa.ArrowException) as error:
            raise DataError(f"{name}: cannot be read ({error}).") from None
        starts.append(offset)
        offset += len(parts[-1])
    if offset == 0:
        raise DataError(f"task.path {path}: the {len(names)} file(s) there are empty; "
                        "a language model needs text.")
    return Corpus(b"".join(parts), tuple(names), tuple(starts))


def _first_wildcard(text: str) -> int:
    return min(text.index(char) for char in "*?[" if char in text)


def encode_corpus(path: str, kind: str, val_fraction: float,
                  test_fraction: float) -> tuple[TextLayout, dict[str, np.ndarray]]:
    """Read the corpus at `path`, fit the vocabulary on its training stretch and encode
    every split; the layout (with the references) and each split's token ids."""
    corpus = read_corpus(path)
    text = corpus.text
    cuts = _cuts(len(text), val_fraction, test_fraction, kind, text)
    stretches = {split: text[start:end] for split, (start, end) in zip(SPLITS, cuts,
                                                                       strict=True)}
    for split, stretch in stretches.items():
        if not stretch:
            raise DataError(f"task.path {path}: the {split} split is empty ({len(text)} "
                            "bytes in all); give more text or change task.val_fraction "
                            "and task.test_fraction.")
    train_where = f"{path} (training split, from {corpus.file_at(0)})"
    vocab = Vocabulary.fit(kind, stretches["train"], train_where)
    tokens = {}
    for split, (start, _) in zip(SPLITS, cuts, strict=True):
        where = f"{corpus.file_at(start)} ({split} split of {path})"
        tokens[split] = vocab.encode(stretches[split], where)
    layout = TextLayout(vocab, corpus.files, {split: len(ids) for split, ids in tokens.items()},
                        reference_figures(tokens, stretches, vocab.size))
    return layout, tokens


def write_prepared(directory: str, layout: TextLayout, tokens: dict[str, np.ndarray]) -> None:
    """Every split's token ids under `directory`, then the layout (`write_description`)."""
    filesystem, root = filesystem_of(directory)
    filesystem.create_dir(root, recursive=True)
    for split, ids in tokens.items():
        with filesystem.open_output_stream(f"{root}/{split}.bin") as stream:
            stream.write(ids.tobytes())
    write_description(directory, layout)


def _cuts(size: int, val_fraction: float, test_fraction: float, kind: str,
          text: bytes) -> list[tuple[int, int]]:
    """Byte ranges of train, val and test. For characters a cut moves forward to the
    start of a character, so no split begins inside a UTF-8 sequence."""
    val_start = int(size * (1 - val_fraction - test_fraction))
    test_start = int(size * (1 - test_fraction))
    if kind == "chars":
        val_start, test_start = (_char_start(text, cut) for cut in (val_start, test_start))
    return [(0, val_start), (val_start, test_start), (test_start, size)]


def _char_start(text: bytes, offset: int) -> int:
    while offset < len(text) and text[offset] & 0xC0 == 0x80:  # a continuation byte
        offset += 1
    return offset


def write_description(directory: str, layout: TextLayout) -> None:
    """Written last: its presence says the prepared text is complete."""
    write_text(directory, DESCRIPTION_FILE, layout.to_json())


def read_description(directory: str) -> TextLayout | None:
    """The prepared text's layout, or None when it was not prepared (completely) yet."""
    text = read_text(directory, DESCRIPTION_FILE)
    return TextLayout.from_json(text) if text is not None else None


def read_share(directory: str, split: str, rank: int, world: int) -> np.ndarray:
    """Rank `rank`'s share of a split: the rank-th of `world` equal stretches (the last
    count % world tokens are left out, so every rank has the same number of steps)."""
    filesystem, root = filesystem_of(directory)
    path = f"{root}/{split}.bin"
    count = filesystem.get_file_info(path).size // TOKEN_DTYPE.itemsize
    share = count // world
    with filesystem.open_input_file(path) as stream:
        raw = stream.read_at(share * TOKEN_DTYPE.itemsize, rank * share * TOKEN_DTYPE.itemsize)
    return np.frombuffer(raw, dtype=TOKEN_DTYPE).astype(np.int64)


def chunks_per_epoch(share: int, batch_size: int, bptt: int) -> int:
    """Training chunks in a worker's share of `share` tokens; a DataError when there is
    not even one."""
    chunks = (share - 1) // batch_size // bptt
    if chunks < 1:
        raise DataError(
            f"a worker's share of the training text holds {share} tokens: too few for "
            f"train.batch_size={batch_size} streams of at least task.bptt={bptt} steps "
            f"({batch_size * bptt + 1} tokens). Give more text, or lower train.batch_size, "
            "task.bptt or scaling.num_workers.")
    return chunks


def streams(tokens: np.ndarray, rows: int) -> np.ndarray:
    """`tokens` laid out as `rows` contiguous streams (rows, L + 1), neighbours
    overlapping by one token (the last target of a stream is the next one's first input)."""
    length = (len(tokens) - 1) // rows
    if length < 1:
        return np.empty((rows, 0), dtype=tokens.dtype)
    starts = np.arange(rows) * length
    return tokens[starts[:, None] + np.arange(length + 1)]


def chunk(stream_rows: np.ndarray, start: int, steps: int,
          reset: bool) -> dict[str, torch.Tensor]:
    """Steps start..start+steps of every stream as a batch: token ids as inputs, the next
    tokens as targets."""
    ids = torch.from_numpy(stream_rows[:, start:start + steps + 1])
    rows, steps = ids.size(0), ids.size(1) - 1
    return {"inputs": ids[:, :-1].contiguous(), "targets": ids[:, 1:].contiguous(),
            "lengths": torch.full((rows,), steps, dtype=torch.int64),
            "reset": torch.full((rows,), reset)}


def in_chunks(tokens: np.ndarray, rows: int, bptt: int) -> Iterator[dict[str, torch.Tensor]]:
    """All of `tokens` in `rows` streams, chunk after chunk in order (the last one may be
    shorter): how validation and test read a split, the state carried throughout."""
    rows = max(1, min(rows, (len(tokens) - 1) // max(bptt, 1)))
    laid_out = streams(tokens, rows)
    length = laid_out.shape[1] - 1
    for start in range(0, length, bptt):
        yield chunk(laid_out, start, min(bptt, length - start), start == 0)


class TextBatches:
    """A worker's training chunks and validation text (see the module docstring)."""

    def __init__(self, directory: str, layout: TextLayout, batch_size: int, bptt: int,
                 rank: int, world: int):
        self.vocab, self._bptt = layout.vocab, bptt
        share = read_share(directory, "train", rank, world)
        self.chunks_per_epoch = chunks_per_epoch(len(share), batch_size, bptt)
        self._streams = streams(share, batch_size)
        self._validation = read_share(directory, "val", rank, world)

    def train_batch(self, step: int, curriculum=None) -> dict[str, torch.Tensor]:
        position = (step - 1) % self.chunks_per_epoch
        return chunk(self._streams, position * self._bptt, self._bptt, reset=position == 0)

    def validation_batches(self, level: int | None = None) -> Iterator[dict[str, torch.Tensor]]:
        return in_chunks(self._validation, EVAL_STREAMS, self._bptt)

    def prime(self, length: int) -> str:
        """The start of this rank's validation text (rank 0: of the validation split)."""
        return self.vocab.decode(self._validation[:length])


def reference_figures(tokens: dict[str, np.ndarray], stretches: dict[str, bytes],
                      vocab_size: int) -> dict[str, float]:
    """Bits per token of two models that need no training, on val and test: a unigram
    model of the training text (`bpc_unigram`: a model that learned nothing more than
    which symbols are common) and xz (`bpc_xz`: a strong general compressor given the
    text before the split, so it knows the training text as the model does)."""
    counts = np.bincount(tokens["train"], minlength=vocab_size) + 1.0  # add-one
    log_p = np.log2(counts / counts.sum())
    figures = {}
    before = stretches["train"]
    for split, prefix in (("val", "val_"), ("test", "")):
        figures[f"{prefix}bpc_unigram"] = float(-log_p[tokens[split]].mean())
        figures[f"{prefix}bpc_xz"] = xz_bits(before[-XZ_CONTEXT:], stretches[split]) / len(
            tokens[split])
        before += stretches[split]
    return figures


def xz_bits(context: bytes, text: bytes) -> float:
    """Bits xz (preset 9) spends on `text` after `context`: the size of both compressed
    less that of the context alone."""
    def size(data: bytes) -> int:
        return len(lzma.compress(data, preset=9))
    return 8.0 * (size(context + text) - size(context))


def bits(nats: float) -> float:
    return nats / math.log(2)
