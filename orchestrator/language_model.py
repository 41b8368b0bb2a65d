"""What a language model (`task.name: text`) adds to a training step: the hidden state
carried from one chunk of text to the next, bits per character, and sampling.

Truncated backpropagation through time: each batch row is a stream of text read chunk
after chunk (`pipelines.text`). The state a chunk ends in is where the next chunk of the
same row starts, detached, so gradients flow back at most `task.bptt` steps while the
model still reads the stream as one long sequence. The state is reset where the streams
start again (a batch's `reset`), and it is part of the checkpoint, so a resumed run
continues exactly where it stopped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from orchestrator.objectives import KindObjective
from pipelines.text import Vocabulary, bits


@dataclass(frozen=True)
class TextObjective(KindObjective):
    """Next-token cross-entropy, with `val_bpc` (bits per character: per byte with
    task.vocab=bytes) and `val_perplexity` beside `val_loss` and `val_accuracy`."""

    kind: str = "per_step"

    def summarize(self, sums: torch.Tensor, prefix: str = "val") -> dict[str, float]:
        figures = super().summarize(sums, prefix)
        loss = figures[f"{prefix}_loss"]
        return {**figures, f"{prefix}_bpc": bits(loss),
                f"{prefix}_perplexity": math.exp(min(loss, 700.0))}


State = torch.Tensor | tuple[torch.Tensor, ...]


class CarriedState:
    """The recurrent state one chunk leaves to the next (None before the first chunk)."""

    def __init__(self) -> None:
        self.state: State | None = None

    def run(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The model's prediction for `batch`, from the carried state; keeps the final
        state, detached, for the next chunk.

        The rows whose `reset` (B,) is set start their streams again, from zeros. The
        state is multiplied by the mask rather than the flag read on the host, so a step
        on a GPU waits for nothing."""
        start = self.state
        if start is not None:
            keep = (~batch["reset"])[None, :, None]
            start = _map(start, lambda tensor: tensor * keep)
        outputs, final = model(batch["inputs"], batch["lengths"], state=start,
                               return_state=True)
        self.state = _detached(final)
        return outputs

    def to_cpu(self) -> State | None:
        """For the checkpoint: plain CPU tensors."""
        return _map(self.state, lambda tensor: tensor.cpu()) if self.state is not None else None

    def load(self, state: State | None, device: torch.device) -> None:
        self.state = _map(state, lambda tensor: tensor.to(device)) if state is not None else None


def _detached(state: State) -> State:
    return _map(state, torch.Tensor.detach)


def _map(state: State, function) -> State:
    return tuple(map(function, state)) if isinstance(state, tuple) else function(state)


@torch.no_grad()
def sample(model: torch.nn.Module, vocab: Vocabulary, prime: str, length: int,
           temperature: float, generator: torch.Generator) -> str:
    """`length` symbols after `prime`, each drawn from the model's distribution over the
    next symbol sharpened (temperature < 1) or flattened (> 1). The model reads the prime
    first, carrying its state, then one drawn symbol at a time."""
    model.eval()
    ids = vocab.encode(prime.encode(), "the prime")
    device = next(model.parameters()).device
    carried = CarriedState()
    tokens = torch.as_tensor(ids, dtype=torch.int64, device=device)[None]
    drawn = []
    for position in range(length):
        batch = {"inputs": tokens, "lengths": torch.tensor([tokens.size(1)], device=device),
                 "reset": torch.tensor([position == 0], device=device)}
        logits = carried.run(model, batch)[0, -1].float()
        probabilities = torch.softmax(logits / temperature, dim=-1).cpu()
        tokens = torch.multinomial(probabilities, 1, generator=generator).to(device)[None]
        drawn.append(int(tokens))
    return vocab.decode(drawn)
