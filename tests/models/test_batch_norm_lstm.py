from __future__ import annotations

import datetime
import io
import time

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from models.batch_norm_lstm import GAIN, BatchNormLSTM

BATCH, STEPS, FEATURES, HIDDEN = 8, 6, 3, 4
NORMS = ("norm_ih_l0", "norm_hh_l0", "norm_cell_l0")


def growing_inputs(steps=STEPS, seed=1):
    """Inputs whose scale and offset change with the step, so each step's statistics do."""
    torch.manual_seed(seed)
    scale = torch.arange(1, steps + 1, dtype=torch.float32).view(1, steps, 1)
    return torch.randn(BATCH, steps, FEATURES) * scale + scale


def trained(passes=20, num_layers=1):
    torch.manual_seed(0)
    rnn = BatchNormLSTM(FEATURES, HIDDEN, num_layers).train()
    for seed in range(passes):
        rnn(growing_inputs(seed=seed))
    return rnn.eval()


def running(rnn):
    return {name: tensor.clone() for name, tensor in rnn.named_buffers()}


def test_gains_start_at_a_tenth_and_shifts_at_zero():
    rnn = BatchNormLSTM(FEATURES, HIDDEN, num_layers=2)
    for k in range(2):
        for part in ("ih", "hh", "cell"):
            norm = getattr(rnn, f"norm_{part}_l{k}")
            assert torch.equal(norm.weight.detach(), torch.full_like(norm.weight, GAIN))
            assert GAIN == 0.1
        assert rnn.get_submodule(f"norm_ih_l{k}").bias is None  # the LSTM bias is the shift
        assert torch.equal(rnn.get_submodule(f"norm_cell_l{k}").bias.detach(),
                           torch.zeros(HIDDEN))


def test_first_update_is_a_tenth_of_the_batch_statistics_per_step():
    torch.manual_seed(0)
    rnn = BatchNormLSTM(FEATURES, HIDDEN).train()
    x = growing_inputs()
    rnn(x)
    with torch.no_grad():
        pre = F.linear(x, rnn.weight_ih_l0)  # (B, T, 4H)
    norm = rnn.norm_ih_l0
    assert norm.running_mean.shape == (STEPS, 4 * HIDDEN)
    torch.testing.assert_close(norm.running_mean, 0.1 * pre.mean(0))
    torch.testing.assert_close(norm.running_var, 0.9 + 0.1 * pre.var(0, correction=1))


def test_running_statistics_differ_from_step_to_step():
    rnn = trained()
    for name in NORMS:
        variances = rnn.get_submodule(name).running_var
        assert variances.shape[0] == STEPS
        rows = variances[1:]  # step 0 of norm_hh sees h_0 = 0 everywhere
        differences = (rows.unsqueeze(0) - rows.unsqueeze(1)).abs().amax(-1)
        assert (differences + torch.eye(STEPS - 1) * 1e9).min() > 1e-4, name


def test_evaluation_reads_each_steps_own_statistics():
    rnn = trained()
    x = growing_inputs(seed=99)
    with torch.no_grad():
        before = rnn(x)[0]
        rnn.norm_hh_l0.running_mean[3] += 1.0
        after = rnn(x)[0]
        rnn.train()
        training = rnn(x)[0]
        rnn.norm_hh_l0.running_mean[3] -= 5.0
        assert torch.equal(rnn(x)[0], training)  # training normalises with the batch's
    torch.testing.assert_close(after[:, :3], before[:, :3], atol=0, rtol=0)
    assert (after[:, 3] - before[:, 3]).abs().min() > 0


def test_steps_beyond_the_longest_seen_use_the_last_steps_statistics():
    rnn = trained()
    longer = growing_inputs(steps=STEPS + 4, seed=99)
    with torch.no_grad():
        before = rnn(longer)[0]
        for name in NORMS:
            rnn.get_submodule(name).cover(STEPS + 4)  # copies the last step's rows
        torch.testing.assert_close(rnn(longer)[0], before, atol=0, rtol=0)
        rnn.norm_cell_l0.running_var[STEPS:] *= 4  # only the copies beyond the last step
        changed = rnn(longer)[0]
    torch.testing.assert_close(changed[:, :STEPS], before[:, :STEPS], atol=0, rtol=0)
    assert (changed[:, STEPS:] - before[:, STEPS:]).abs().amin(-1).min() > 0


def test_a_longer_sequence_extends_the_statistics_from_the_last_step():
    rnn = trained()
    last = rnn.norm_ih_l0.running_mean[-1].clone()
    rnn.train()(growing_inputs(steps=STEPS + 2))
    assert rnn.norm_ih_l0.running_mean.shape[0] == STEPS + 2
    assert not torch.equal(rnn.norm_ih_l0.running_mean[-1], last)  # extended, then updated


def test_unrolling_in_training_mode_leaves_the_statistics_alone():
    rnn = trained().train()
    saved = running(rnn)
    rnn.unroll(growing_inputs(steps=STEPS + 3))
    assert all(torch.equal(saved[name], tensor) for name, tensor in rnn.named_buffers())


def test_state_dict_restores_statistics_of_any_length():
    rnn = trained(num_layers=2)
    buffer = io.BytesIO()
    torch.save(rnn.state_dict(), buffer)
    buffer.seek(0)
    fresh = BatchNormLSTM(FEATURES, HIDDEN, num_layers=2)
    assert fresh.norm_hh_l1.running_mean.shape[0] == 1
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    fresh.eval()
    x = growing_inputs(seed=7)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[0], rnn(x)[0], atol=0, rtol=0)


def test_one_row_cannot_give_batch_statistics():
    rnn = BatchNormLSTM(FEATURES, HIDDEN).train()
    with pytest.raises(ValueError, match="at least 2 rows"):
        rnn(torch.randn(1, STEPS, FEATURES))


# --- two ranks: the statistics are the whole batch's, the same on every rank -----------

SCENARIOS = ((STEPS, STEPS), (STEPS - 2, STEPS))  # each rank's T: equal, then different


def rank_inputs(rank, steps):
    torch.manual_seed(10 + rank)  # different data on each rank
    return torch.randn(BATCH, steps, FEATURES) * (rank + 1) + rank


def one_training_step(rnn, x):
    outputs, _ = rnn(x)
    outputs.square().mean().backward()
    return outputs.detach()


def run_rank(rank, world, store, out_dir):
    """One process of the 2-rank test: DDP over gloo, one training step per scenario."""
    torch.set_num_threads(1)  # a forked child must not enter the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=60))
    for index, steps in enumerate(SCENARIOS):
        torch.manual_seed(0)
        model = DistributedDataParallel(BatchNormLSTM(FEATURES, HIDDEN, num_layers=2))
        outputs = one_training_step(model, rank_inputs(rank, steps[rank]))
        torch.save({"buffers": dict(model.module.named_buffers()),
                    "grads": {n: p.grad for n, p in model.module.named_parameters()},
                    "outputs": outputs}, out_dir / f"scenario{index}-rank{rank}.pt")
    dist.destroy_process_group()


def test_a_group_of_one_takes_no_collectives(alone_in_a_group):
    """One Ray Train worker runs in a process group of one: its statistics are its own
    batch's, without a round trip per step."""
    x = torch.randn(BATCH, STEPS, FEATURES)
    torch.manual_seed(0)
    alone = one_training_step(BatchNormLSTM(FEATURES, HIDDEN).train(), x)
    with alone_in_a_group():
        torch.manual_seed(0)
        grouped = one_training_step(BatchNormLSTM(FEATURES, HIDDEN).train(), x)
    assert torch.equal(grouped, alone)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The saved results of both ranks for every scenario (fork: no re-import, ~2 s)."""
    out_dir = tmp_path_factory.mktemp("ranks")
    ranks = mp.start_processes(run_rank, args=(2, out_dir / "store", out_dir), nprocs=2,
                               join=False, start_method="fork")
    deadline = time.monotonic() + 120
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for process in ranks.processes:
                process.kill()
            pytest.fail("the two ranks did not finish within 120 s")
    return [[torch.load(out_dir / f"scenario{i}-rank{r}.pt") for r in (0, 1)]
            for i in range(len(SCENARIOS))]


@pytest.mark.parametrize("scenario", range(len(SCENARIOS)))
def test_every_rank_keeps_the_same_statistics(two_ranks, scenario):
    first, second = two_ranks[scenario]
    longest = max(SCENARIOS[scenario])
    for name, tensor in first["buffers"].items():
        assert tensor.shape[0] == longest
        assert torch.equal(tensor, second["buffers"][name]), name
    for rank, result in enumerate((first, second)):
        assert result["outputs"].shape == (BATCH, SCENARIOS[scenario][rank], HIDDEN)


def test_two_ranks_normalise_and_learn_like_one_process_with_both_batches(two_ranks):
    """Same T on both ranks: statistics, outputs and (DDP-averaged) gradients are those of
    one process that sees both batches at once."""
    torch.manual_seed(0)
    single = BatchNormLSTM(FEATURES, HIDDEN, num_layers=2).train()
    both = torch.cat([rank_inputs(rank, STEPS) for rank in (0, 1)])
    outputs = one_training_step(single, both)
    ranks = two_ranks[0]
    torch.testing.assert_close(torch.cat([r["outputs"] for r in ranks]), outputs)
    for name, tensor in single.named_buffers():
        torch.testing.assert_close(ranks[0]["buffers"][name], tensor, msg=name)
    for name, param in single.named_parameters():
        torch.testing.assert_close(ranks[0]["grads"][name], param.grad, atol=1e-6, rtol=1e-4,
                                   msg=name)
