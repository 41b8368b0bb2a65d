from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from models import CELL_NAMES, HEAD_NAMES, ModelSpec, SequenceModel, build_model

BATCH, STEPS, FEATURES, HIDDEN, OUT = 4, 6, 3, 8, 5
EXPECTED_SHAPE = {"regression": (BATCH, OUT), "per_step": (BATCH, STEPS, OUT),
                  "sequence": (BATCH, OUT)}


def spec(cell="lstm", head="regression", num_layers=1, dropout=0.0):
    return ModelSpec(cell=cell, input_size=FEATURES, hidden_size=HIDDEN, num_layers=num_layers,
                     dropout=dropout, head=head, output_size=OUT)


def batch():
    torch.manual_seed(2)
    lengths = torch.tensor([6, 4, 1, 3], dtype=torch.int64)
    inputs = torch.randn(BATCH, STEPS, FEATURES)
    inputs[torch.arange(STEPS) >= lengths.unsqueeze(1)] = 0.0
    return inputs, lengths


@pytest.mark.parametrize("head", HEAD_NAMES)
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_forward_and_backward(cell, head):
    torch.manual_seed(0)
    model = build_model(spec(cell, head))
    inputs, lengths = batch()
    out = model(inputs, lengths)
    assert out.shape == EXPECTED_SHAPE[head]
    assert out.dtype == torch.float32
    out.square().mean().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_keeps_spec_and_builds_its_parts():
    s = spec("gru", "sequence", num_layers=2, dropout=0.1)
    model = build_model(s)
    assert isinstance(model, SequenceModel)
    assert model.spec is s
    assert (model.rnn.num_layers, model.rnn.dropout, model.rnn.hidden_size) == (2, 0.1, HIDDEN)
    assert model.head.linear.out_features == OUT


def test_spec_is_frozen():
    with pytest.raises(AttributeError):
        spec().hidden_size = 16


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_stacked_layers_with_dropout(cell):
    torch.manual_seed(0)
    model = build_model(spec(cell, "per_step", num_layers=3, dropout=0.5))
    inputs, lengths = batch()
    model.train()
    assert not torch.equal(model(inputs, lengths), model(inputs, lengths))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(inputs, lengths), model(inputs, lengths))


@pytest.mark.parametrize("head", HEAD_NAMES)
def test_lengths_none_means_full_length(head):
    model = build_model(spec("lstm", head)).eval()
    inputs, _ = batch()
    full = torch.full((BATCH,), STEPS, dtype=torch.int64)
    with torch.no_grad():
        torch.testing.assert_close(model(inputs), model(inputs, full), atol=0, rtol=0)
        shorter = torch.tensor([2, 2, 2, 2])
        if head != "per_step":
            assert not torch.allclose(model(inputs), model(inputs, shorter))


@pytest.mark.parametrize("cell", CELL_NAMES)
def test_pickle_round_trip(cell):
    model = build_model(spec(cell, "regression", num_layers=2, dropout=0.2)).eval()
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert isinstance(loaded, SequenceModel)
    assert loaded.spec == model.spec
    inputs, lengths = batch()
    with torch.no_grad():
        assert torch.equal(loaded(inputs, lengths), model(inputs, lengths))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cell", CELL_NAMES)
def test_cuda_matches_cpu(cell, monkeypatch):
    # In float32 proper: torch lets cuDNN's recurrent kernels use TF32 by default, which on
    # an H200 moved outputs by up to 6e-4 (rnn_relu); without it they agree to 1e-6.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    model = build_model(spec(cell, "sequence")).eval()
    inputs, lengths = batch()
    with torch.no_grad():
        expected = model(inputs, lengths)
        got = model.cuda()(inputs.cuda(), lengths)  # lengths may stay on the CPU
    torch.testing.assert_close(got.cpu(), expected, atol=1e-4, rtol=1e-4)


NEW_CELLS = ("ln_lstm", "ln_gru", "bn_lstm")


def tiny_regression_task():
    """Predict the mean of feature 0 over the sequence: needs memory of every step."""
    torch.manual_seed(4)
    inputs = torch.randn(32, 10, FEATURES)
    return inputs, inputs[:, :, :1].mean(dim=1)


def eval_loss(model, inputs, targets):
    model.eval()
    with torch.no_grad():
        return torch.nn.functional.mse_loss(model(inputs), targets).item()


@pytest.fixture
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation, which on a busy
    2-core machine made these loops ten times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("regularized", [False, True])
@pytest.mark.parametrize("cell", NEW_CELLS)
def test_new_cells_learn_a_tiny_task(cell, regularized, one_thread):
    torch.manual_seed(0)
    regularization = ({"input_dropout": 0.1, "output_dropout": 0.1, "variational": True,
                       "weight_drop": 0.2} if regularized else {})
    model = build_model(ModelSpec(cell, FEATURES, 16, 2, 0.1, "regression", 1,
                                  **regularization))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    inputs, targets = tiny_regression_task()
    before = eval_loss(model, inputs, targets)
    for _ in range(40):
        model.train()
        loss = torch.nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert eval_loss(model, inputs, targets) < 0.3 * before


@pytest.mark.parametrize("cell", NEW_CELLS)
def test_state_dict_round_trip_rebuilds_the_trained_model(cell):
    torch.manual_seed(0)
    original = spec(cell, "per_step", num_layers=2)
    model = build_model(original).train()
    inputs, lengths = batch()
    model(inputs, lengths).square().mean().backward()  # bn_lstm: statistics for 6 steps
    buffer = io.BytesIO()
    torch.save({"spec": dataclasses.asdict(original), "model": model.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    torch.manual_seed(1)  # different initial weights: everything must come from the file
    loaded = build_model(ModelSpec(**saved["spec"]))
    loaded.load_state_dict(saved["model"])
    model.eval(), loaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(inputs, lengths), model(inputs, lengths),
                                   atol=0, rtol=0)


def test_input_statistics_in_the_spec_normalize_every_channel():
    mean, std = (0.5, -1.0, 2.0), (2.0, 0.5, 4.0)
    plain = build_model(spec())
    normalizing = build_model(dataclasses.replace(spec(), input_mean=mean, input_std=std))
    normalizing.load_state_dict(plain.state_dict())  # the statistics are not weights
    inputs, lengths = batch()
    with torch.no_grad():
        expected = plain((inputs - torch.tensor(mean)) / torch.tensor(std), lengths)
        torch.testing.assert_close(normalizing(inputs, lengths), expected)
    assert set(normalizing.state_dict()) == set(plain.state_dict())
