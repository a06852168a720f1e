"""Training throughput of descend's `mlp` task against a plain PyTorch slicing loop over the
same batches, measured in the same process.

    python benchmarks/mlp_throughput.py [--rows 20000] [--batch-size 256] [--repeats 3] [--device cpu|cuda]

Both train the same network (teacher data, Adam, shuffled mini-batches sliced from tensors in
memory) and evaluate the validation split once per epoch. Fixed costs (building the Trainer,
the test pass) are removed by timing two epoch counts; the rate is training samples per second.
Target: descend at least 0.8x the plain loop.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from step_overhead import descend_run  # noqa: E402  (one way to run descend in-process)


def overrides(rows: int, batch_size: int, epochs: int) -> list[str]:
    return ["task=mlp", "task.data.source=teacher", f"task.data.rows={rows}", f"task.batch_size={batch_size}",
            "optimizer=adam", "optimizer.lr=0.001", "trainer.max_steps=-1", f"trainer.max_epochs={epochs}"]


def plain_loop(epochs: int, device: str, rows: int, batch_size: int) -> float:
    """The same training by hand: the task's own standardised splits, a fresh permutation per epoch."""
    from hydra import compose, initialize_config_dir

    from descend.build import build_task
    from descend.prechecks import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides(rows, batch_size, epochs))
    task = build_task(cfg).to(device)
    net, x, y = task.net, task.x_train, task.y_train
    x_val, y_val = task.x_val, task.y_val
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001)
    start = time.perf_counter()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch)).to(device)
        for first in range(0, len(x), batch_size):
            rows_ = order[first : first + batch_size]
            loss = torch.mean((net(x[rows_]).squeeze(-1) - y[rows_]) ** 2)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            float(torch.mean((net(x_val).squeeze(-1) - y_val) ** 2))
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def per_epoch(run, short: int, long: int, repeats: int, *args) -> float:
    return min((run(long, *args) - run(short, *args)) / (long - short) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    short, long = 1, 1 + args.epochs
    train_rows = args.rows - 2 * int(args.rows * 0.1)  # the default split 0.8 / 0.1 / 0.1
    with tempfile.TemporaryDirectory() as tmp:
        plain = per_epoch(plain_loop, short, long, 1, args.device, args.rows, args.batch_size)

        def descend(epochs: int, *extra: str) -> float:
            return descend_run(-1, args.device, Path(tmp), *overrides(args.rows, args.batch_size, epochs), *extra)

        # alternately with the plain loop: this machine's speed drifts between runs
        plains, groupeds = [plain], []
        for _ in range(args.repeats):
            groupeds.append(per_epoch(descend, short, long, 1))
            plains.append(per_epoch(plain_loop, short, long, 1, args.device, args.rows, args.batch_size))
        plain, grouped = min(plains), min(groupeds)
        single = per_epoch(descend, short, long, args.repeats, "steps_per_batch=1")
    rate = lambda seconds: train_rows / seconds  # noqa: E731
    print(f"device: {args.device}, {train_rows} training rows, batch {args.batch_size}, epochs {short} vs {long}, best of {args.repeats}")
    print(f"plain slicing loop          : {rate(plain):10.0f} samples/s")
    print(f"descend mlp                 : {rate(grouped):10.0f} samples/s   {plain / grouped:5.2f}x plain (target >= 0.8x)")
    print(f"descend, one step per batch : {rate(single):10.0f} samples/s   {plain / single:5.2f}x plain")


if __name__ == "__main__":
    main()
