from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from orchestrator import objectives
from pipelines.collate import IGNORE_INDEX

B, T, C = 8, 6, 5


def regression_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(B, 2, generator=g), {"targets": torch.randn(B, 2, generator=g)}


def per_step_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Rows of different lengths (padding = IGNORE_INDEX), and a `scored` mask on the last
    two valid steps of each row, like the copy task's recall window."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(B, T, C, generator=g)
    targets = torch.randint(0, C, (B, T), generator=g)
    lengths = torch.tensor([6, 6, 5, 4, 3, 6, 2, 5])
    steps = torch.arange(T)
    targets[steps >= lengths[:, None]] = IGNORE_INDEX
    scored = (steps < lengths[:, None]) & (steps >= lengths[:, None] - 2)
    return logits, {"targets": targets, "scored": scored}


def sequence_batch() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(2)
    return torch.randn(B, C, generator=g), {"targets": torch.randint(0, C, (B,), generator=g)}


BATCHES = {"regression": regression_batch, "per_step": per_step_batch,
           "sequence": sequence_batch}


def rows(batch: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
    return {key: value[part] for key, value in batch.items()}


def test_regression_loss_is_mse():
    outputs, batch = regression_batch()
    expected = ((outputs - batch["targets"]) ** 2).mean()
    assert objectives.loss("regression", outputs, batch).item() == pytest.approx(expected.item())


def test_per_step_loss_ignores_padding():
    logits, batch = per_step_batch()
    valid = batch["targets"] != IGNORE_INDEX
    assert not valid.all()
    expected = F.cross_entropy(logits[valid], batch["targets"][valid])
    assert objectives.loss("per_step", logits, batch).item() == pytest.approx(expected.item())

    # whatever the model says at padded steps does not change the loss
    noisy = logits.clone()
    noisy[~valid] = 100 * torch.randn(int((~valid).sum()), C)
    assert objectives.loss("per_step", noisy, batch).item() == pytest.approx(expected.item())


def test_sequence_loss_is_cross_entropy():
    logits, batch = sequence_batch()
    expected = F.cross_entropy(logits, batch["targets"])
    assert objectives.loss("sequence", logits, batch).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("kind", list(BATCHES))
def test_sums_over_shards_give_the_figures_of_the_whole_batch(kind):
    """Ranks hold shards of different sizes; all-reducing their sums must give the exact
    figure over the whole validation set."""
    outputs, batch = BATCHES[kind]()
    first, second = slice(0, 3), slice(3, None)  # unequal halves: means would not add up
    sums = (objectives.validation_sums(kind, outputs[first], rows(batch, first))
            + objectives.validation_sums(kind, outputs[second], rows(batch, second)))
    whole = objectives.validation_sums(kind, outputs, batch)
    assert sums.shape == (4,)
    assert torch.allclose(sums, whole)

    figures = objectives.summarize(kind, sums)
    assert figures == pytest.approx(objectives.summarize(kind, whole))
    # val_loss is the loss the model trains on, over the whole batch
    assert figures["val_loss"] == pytest.approx(objectives.loss(kind, outputs, batch).item())
    assert ("val_accuracy" in figures) == (kind != "regression")


def test_accuracy_counts_only_scored_positions():
    logits, batch = per_step_batch()
    targets, scored = batch["targets"], batch["scored"]
    valid = targets != IGNORE_INDEX
    # right where scored, wrong at every other valid step
    right = F.one_hot(targets.clamp(min=0), C).float() * 10
    wrong = F.one_hot((targets.clamp(min=0) + 1) % C, C).float() * 10
    outputs = torch.where(scored[..., None], right, wrong)
    sums = objectives.validation_sums("per_step", outputs, batch)
    assert sums[3].item() == scored.sum().item()  # scored count
    assert sums[1].item() == valid.sum().item()   # loss count: every valid step
    assert objectives.summarize("per_step", sums)["val_accuracy"] == 1.0

    flipped = torch.where(scored[..., None], wrong, right)
    assert objectives.summarize(
        "per_step", objectives.validation_sums("per_step", flipped, batch)
    )["val_accuracy"] == 0.0


def test_accuracy_without_a_scored_mask_counts_every_valid_step():
    logits, batch = per_step_batch()
    del batch["scored"]
    valid = batch["targets"] != IGNORE_INDEX
    correct = ((logits.argmax(-1) == batch["targets"]) & valid).sum().item()
    figures = objectives.summarize("per_step", objectives.validation_sums("per_step", logits,
                                                                          batch))
    assert figures["val_accuracy"] == pytest.approx(correct / valid.sum().item())


def test_summarize_of_nothing_is_zero_not_a_division_error():
    assert objectives.summarize("per_step", torch.zeros(4, dtype=torch.float64)) == {
        "val_loss": 0.0, "val_accuracy": 0.0}
