"""What does rnn-orch cost over a hand-written PyTorch loop, on one worker and on two?

Seven ways train the same model (from rnn-orch's own config and `model_spec`) on the same
adding-problem batches, with the same optimizer, clipping and one intra-op thread per
process:
- plain: one process, a bare loop (make the batch, forward, loss, backward,
  `clip_grad_norm_`, step);
- plain DDP: two processes of that loop in a gloo process group (`torch.distributed`,
  no Ray);
- two independent: two plain processes side by side, not talking: the machine's own
  limit for two ranks;
- a hand-written Ray Train script, 1 worker and 2 workers: the plain loop as a
  TorchTrainer's train function (`prepare_model` for DDP), on the same Ray, CPUs per
  worker and malloc settings as rnn-orch: what Ray Train itself costs;
- rnn-orch, 1 worker and 2 workers: `driver.train` on a local Ray, as `rnn-orch train`
  runs it (MLflow logging, the guard and its snapshots, the progress line), validating
  and checkpointing only at the end. Its steady state is timed between two steps' MLflow
  timestamps (`timed_runs.logged_seconds`), so start-up and the end are left out.

rnn-orch's workers keep the memory they free (`orchestrator.allocator`), which a plain
loop does not do unless its author knows to; so the three plain ways run twice, as
written and with the same malloc settings ("memory kept"). The second is the like for
like comparison that the targets are judged on: it leaves the allocator out of the
overhead. The Ray Train script runs with them too, so that it shows Ray's own cost.

The ways take turns, `--repeats` times, and each figure is the median. The plain ways
run while Ray is down; rnn-orch's figures carry the CPU its own processes take. Targets:
1 worker >= 0.95 of plain; 2 workers >= 0.95 of plain DDP, both with memory kept. Exits
non-zero when it could not measure.

    .venv/bin/python benchmarks/overhead.py                  # ~15 min on 2 cores
    .venv/bin/python benchmarks/overhead.py --out benchmarks/results/overhead.md
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import ray
import ray.train.torch
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from machine import results_header
from timed_runs import logged_seconds

from models.sequence_model import build_model
from orchestrator import allocator, driver
from orchestrator.config import Config, apply_overrides
from orchestrator.optimizers import build_optimizer
from orchestrator.worker import model_spec
from pipelines.parquet import TaskInfo
from pipelines.synthetic import make_task

TARGET = 0.95  # the target for both ratios
KEPT = ", memory kept"  # the plain ways started with orchestrator.allocator's settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cell", default="lstm")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64, help="rows per step in each process")
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--steps", type=int, default=300, help="steps of every run")
    parser.add_argument("--skip", type=int, default=50,
                        help="steps left out of the timing at the start of every run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    model = [f"model.cell={args.cell}", f"model.hidden_size={args.hidden}",
             f"task.seq_len={args.seq_len}", f"train.batch_size={args.batch}",
             "task.name=adding"]
    config = apply_overrides(Config(), model)

    if not 0 <= args.skip < args.steps:
        sys.exit("--skip: fewer steps than --steps")
    plain_ways = {f"{way}{kept}": (world, ddp, bool(kept))
                  for kept in ("", KEPT)
                  for way, (world, ddp) in {"plain": (1, False),
                                            "plain DDP (2 processes)": (2, True),
                                            "two independent processes": (2, False)}.items()}
    measured: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        store = [f"run.storage_path={Path(scratch) / 'runs'}", "task.val_size=64",
                 f"tracking.uri=sqlite:///{Path(scratch) / 'mlflow.db'}",
                 "tracking.experiment=bench"]
        for _ in range(args.repeats):
            for way, (world, ddp, kept) in plain_ways.items():
                measured.setdefault(way, []).append(
                    plain_throughput(config, world, ddp, kept, args))
            ray.init(log_to_driver=False)
            try:
                for workers in (1, 2):
                    workers_named = f"{workers} worker{'s' * (workers > 1)}"
                    measured.setdefault(f"Ray Train script, {workers_named}", []).append(
                        ray_train_throughput(config, workers, args, scratch))
                    measured.setdefault(f"rnn-orch, {workers_named}", []).append(
                        rnn_orch_throughput(
                            [*store, *model, f"scaling.num_workers={workers}"], args))
            finally:
                ray.shutdown()

    throughput = {way: float(np.median(values)) for way, values in measured.items()}
    lines = report(throughput, measured, args)
    print("\n".join(lines))
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


def plain_throughput(config: Config, world: int, ddp: bool, kept: bool, args) -> float:
    """Tokens/s of `world` processes running the plain loop together (summed); with
    `kept`, started with rnn-orch's workers' malloc settings."""
    queue = mp.get_context("spawn").SimpleQueue()
    port = free_port()
    processes = [mp.get_context("spawn").Process(
        target=plain_loop,
        args=(config.to_dict(), rank, world, ddp, args.skip, args.steps, port, queue))
        for rank in range(world)]
    environment = allocator.worker_runtime_env().get("env_vars", {}) if kept else {}
    os.environ.update(environment)  # read by glibc as each spawned interpreter starts
    for process in processes:
        process.start()
    for name in environment:
        del os.environ[name]
    for process in processes:
        process.join()
    if any(process.exitcode for process in processes):
        sys.exit(f"the plain loop (world {world}, ddp {ddp}) failed")
    tokens_per_second = sum(queue.get() for _ in processes)
    print(f"  plain, world {world}, ddp {ddp}, memory kept {kept}: "
          f"{tokens_per_second:,.0f} tokens/s",
          file=sys.stderr, flush=True)
    return tokens_per_second


def plain_loop(config_dict: dict, rank: int, world: int, ddp: bool, skip: int, steps: int,
               port: int, queue) -> None:
    """One process of a hand-written training loop; puts its tokens/s on `queue`."""
    if ddp:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    queue.put(timed_steps(Config.from_dict(config_dict), rank, skip, steps, torch.nn.
                          parallel.DistributedDataParallel if ddp else lambda model: model))
    if ddp:
        dist.destroy_process_group()


def ray_train_throughput(config: Config, workers: int, args, scratch: str) -> float:
    """Tokens/s of the plain loop in a minimal hand-written Ray Train script (TorchTrainer,
    `prepare_model`, rnn-orch's malloc settings, nothing else), summed over its workers."""
    trainer = ray.train.torch.TorchTrainer(
        ray_train_loop, train_loop_config={"config": config.to_dict(), "skip": args.skip,
                                           "steps": args.steps, "scratch": scratch},
        scaling_config=driver.scaling_config(apply_overrides(
            config, [f"scaling.num_workers={workers}"])),
        run_config=ray.train.RunConfig(storage_path=scratch, name=f"plain-{time.time_ns()}",
                                       worker_runtime_env=allocator.worker_runtime_env()))
    trainer.fit()
    tokens_per_second = sum(float(Path(scratch, f"rank{rank}").read_text())
                            for rank in range(workers))
    print(f"  Ray Train script, {workers} workers: {tokens_per_second:,.0f} tokens/s",
          file=sys.stderr, flush=True)
    return tokens_per_second


def ray_train_loop(loop_config: dict) -> None:
    rank = ray.train.get_context().get_world_rank()
    tokens_per_second = timed_steps(Config.from_dict(loop_config["config"]), rank,
                                    loop_config["skip"], loop_config["steps"],
                                    ray.train.torch.prepare_model)
    Path(loop_config["scratch"], f"rank{rank}").write_text(str(tokens_per_second))


def timed_steps(config: Config, rank: int, skip: int, steps: int, wrap) -> float:
    """The hand-written loop: make the batch, forward, loss, backward, clip, step;
    `steps` of them, timed from the end of step `skip`. Tokens/s of this process."""
    torch.set_num_threads(1)
    task = make_task(config.task.name, config.task.seq_len)
    torch.manual_seed(config.seed)
    model = wrap(build_model(model_spec(config, TaskInfo.of(task))))
    optimizer = build_optimizer(config.optim.name, model.parameters(), config.optim.lr,
                                config.optim.weight_decay, config.optim.momentum)
    rng = np.random.default_rng([config.seed, rank])
    for step in range(steps):
        if step == skip:
            if dist.is_initialized():
                dist.barrier()
            started = time.perf_counter()
        batch = {name: torch.from_numpy(array)
                 for name, array in task.generate(rng, config.train.batch_size).items()}
        loss = torch.nn.functional.mse_loss(model(batch["inputs"], batch["lengths"]),
                                            batch["targets"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip.threshold)
        optimizer.step()
    return (steps - skip) * config.train.batch_size * config.task.seq_len / (
        time.perf_counter() - started)


def rnn_orch_throughput(overrides: list[str], args) -> float:
    """Tokens/s of one `driver.train` run between the ends of step `--skip` and of its
    last step."""
    config = apply_overrides(Config(), overrides)
    seconds = logged_seconds([*overrides, f"train.eval_every={args.steps}"], args.skip,
                             args.steps)
    steps = args.steps - args.skip
    tokens = steps * config.train.batch_size * config.task.seq_len * config.scaling.num_workers
    tokens_per_second = tokens / seconds
    print(f"  rnn-orch, {config.scaling.num_workers} workers: {tokens_per_second:,.0f} "
          "tokens/s", file=sys.stderr, flush=True)
    return tokens_per_second


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def report(throughput: dict[str, float], measured: dict[str, list[float]],
           args) -> list[str]:
    plain, ddp = throughput["plain"], throughput["plain DDP (2 processes)"]
    kept_plain, kept_ddp = throughput[f"plain{KEPT}"], throughput[f"plain DDP (2 processes){KEPT}"]
    one, two = throughput["rnn-orch, 1 worker"], throughput["rnn-orch, 2 workers"]
    lines = [
        *results_header("rnn-orch against a hand-written PyTorch loop, one process and two"),
        f"- Model: {args.cell} H={args.hidden}, adding problem T={args.seq_len}, batch "
        f"{args.batch} per process, one intra-op thread per process",
        f"- Every way trains {args.steps} steps and is timed from the end of step "
        f"{args.skip} to the end of its last",
        f"- Each way measured {args.repeats} times, taking turns; the median is shown",
        f"- \"{KEPT[2:]}\": started with the malloc settings of rnn-orch's workers "
        "(`orchestrator.allocator`)",
        "",
        "| way | tokens/s (median) | each repeat | against plain | against plain DDP |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {way} | {value:,.0f} | "
              f"{', '.join(f'{one:,.0f}' for one in measured[way])} | {value / plain:.2f} | "
              f"{value / ddp:.2f} |" for way, value in throughput.items()]
    lines += [
        "",
        f"- Overhead, 1 worker / plain with memory kept: **{one / kept_plain:.2f}** (target "
        f">= {TARGET}: {'met' if one / kept_plain >= TARGET else 'NOT met'}); against the "
        f"plain loop as written: {one / plain:.2f}.",
        f"- Scaling, 2 workers / plain DDP with memory kept: **{two / kept_ddp:.2f}** (target "
        f">= {TARGET}: {'met' if two / kept_ddp >= TARGET else 'NOT met'}); against plain DDP "
        f"as written: {two / ddp:.2f}; 2 workers / 1 worker: {two / one:.2f}; plain DDP / "
        f"plain: {ddp / plain:.2f}; the machine's limit, two independent processes / plain: "
        f"{throughput['two independent processes'] / plain:.2f}.",
        f"- Keeping freed memory, plain loop: {kept_plain / plain:.2f}x; plain DDP: "
        f"{kept_ddp / ddp:.2f}x.",
        f"- rnn-orch against the hand-written Ray Train script: 1 worker "
        f"{one / throughput['Ray Train script, 1 worker']:.2f}, 2 workers "
        f"{two / throughput['Ray Train script, 2 workers']:.2f}.",
    ]
    return lines


if __name__ == "__main__":
    main()
