"""A language model's training pieces (orchestrator.language_model and the loop's use of
them): the carried state of truncated BPTT, bits per character, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models import CELL_NAMES, ModelSpec, build_model
from orchestrator.language_model import CarriedState, TextObjective, sample
from orchestrator.training_step import Place
from orchestrator.worker import gather_carried, make_carried_state, validate
from pipelines.errors import DataError
from pipelines.text import Vocabulary, in_chunks, streams

VOCAB = 11


def language_model(cell: str = "lstm", num_layers: int = 2) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(cell=cell, input_size=6, hidden_size=8,
                                 num_layers=num_layers, dropout=0.0, head="per_step",
                                 output_size=VOCAB, vocab_size=VOCAB)).eval()


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_carrying_the_state_over_chunks_equals_one_pass_over_the_whole_text(cell):
    model = language_model(cell)
    ids = torch.randint(0, VOCAB, (3, 24), generator=torch.Generator().manual_seed(1))
    whole = model(ids)
    carried = CarriedState()
    parts = [carried.run(model, {"inputs": ids[:, start:start + 8],
                                 "lengths": torch.full((3,), 8),
                                 "reset": torch.full((3,), start == 0)})
             for start in range(0, 24, 8)]
    assert torch.allclose(torch.cat(parts, dim=1), whole, atol=1e-5)


def test_the_carried_state_is_detached_and_a_reset_starts_from_zeros():
    model = language_model()
    ids = torch.randint(0, VOCAB, (2, 5))
    batch = {"inputs": ids, "lengths": torch.full((2,), 5), "reset": torch.full((2,), True)}
    carried = CarriedState()
    first = carried.run(model, batch)
    assert all(not part.requires_grad for part in carried.state)
    assert not torch.equal(carried.run(model, {**batch, "reset": torch.full((2,), False)}),
                           first)
    assert torch.equal(carried.run(model, batch), first)  # reset: the state is not used
    carried.run(model, batch)
    mixed = carried.run(model, {**batch, "reset": torch.tensor([True, False])})
    assert torch.equal(mixed[0], first[0]) and not torch.equal(mixed[1], first[1])


def test_a_checkpointed_state_gives_the_same_next_chunk():
    """What `report` keeps (`gather_carried`) and a restored loop loads
    (`make_carried_state`) continue exactly."""
    model = language_model()
    ids = torch.randint(0, VOCAB, (2, 10))
    first = {"inputs": ids[:, :5], "lengths": torch.full((2,), 5),
             "reset": torch.full((2,), True)}
    second = {**first, "inputs": ids[:, 5:], "reset": torch.full((2,), False)}
    place = Place(0, 1, torch.device("cpu"))
    carried = make_carried_state({"directory": ""}, None, place)
    carried.run(model, first)
    saved = {"parts": {"carried": gather_carried(carried, place)}}
    restored = make_carried_state({"directory": ""}, saved, place)
    assert torch.equal(restored.run(model, second), carried.run(model, second))
    assert make_carried_state(None, saved, place) is None
    assert gather_carried(None, place) == []


def test_bits_per_character_and_perplexity_come_from_the_loss():
    sums = torch.tensor([2.0 * 40, 40.0, 10.0, 40.0], dtype=torch.float64)
    figures = TextObjective().summarize(sums, "test")
    assert figures["test_loss"] == pytest.approx(2.0)
    assert figures["test_bpc"] == pytest.approx(2.0 / math.log(2))
    assert figures["test_perplexity"] == pytest.approx(math.exp(2.0))
    assert figures["test_accuracy"] == pytest.approx(0.25)


def test_validation_of_text_reads_every_stream_in_order_with_the_state_carried():
    """Validation in chunks scores the same loss as the model over each whole stream."""
    model = language_model()
    tokens = np.random.default_rng(0).integers(0, VOCAB, 101)
    chunked = validate(model, in_chunks(tokens, 4, 7), TextObjective(),
                       Place(0, 1, torch.device("cpu")), carries_state=True)
    rows = torch.from_numpy(streams(tokens, 4))
    with torch.no_grad():
        logits = model(rows[:, :-1])
    expected = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB),
                                                 rows[:, 1:].reshape(-1))
    assert chunked["val_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_sampling_repeats_with_its_seed_and_refuses_an_unknown_prime():
    model = language_model()
    vocab = Vocabulary("chars", "abcdefghijk")
    draws = [sample(model, vocab, "abc", 20, 0.8, torch.Generator().manual_seed(3))
             for _ in range(2)]
    assert draws[0] == draws[1] and len(draws[0]) == 20 and set(draws[0]) <= set(vocab.chars)
    with pytest.raises(DataError, match="the prime.*'z'"):
        sample(model, vocab, "abz", 5, 1.0, torch.Generator())
