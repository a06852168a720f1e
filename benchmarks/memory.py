"""Peak resident memory of descend's runs against a plain PyTorch loop on the same problem,
measured in the same invocation, each in a fresh process (peak RSS is a per-process high-water mark).

    python benchmarks/memory.py [--size 2000] [--rank 20] [--steps 100] [--tasks lowrank,inverse,mlp]

Both processes import the same modules (torch, Lightning, Hydra, descend) before training, so the
ratio compares what training holds, not import sizes. Rows:
  lowrank   A ≈ U Vᵀ, a random size×size matrix, rank `--rank`, Adam: the large-problem case
  inverse   W·M = I for a random size×size M, SGD
  mlp       the teacher data (20 000 rows), Adam, mini-batches of 256
Target: descend's peak at most about 1.5× the plain loop's, for every task.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def overrides(task: str, size: int, rank: int, steps: int) -> list[str]:
    common = [f"trainer.max_steps={steps}", "trainer.enable_progress_bar=false", "logger=none", "seed=314"]
    if task == "lowrank":
        return ["task=lowrank", f"task.matrix.rows={size}", f"task.matrix.cols={size}", f"task.rank={rank}",
                "optimizer=adam", "optimizer.lr=0.01", *common]
    if task == "inverse":
        return ["task=inverse", "task.matrix.source=random", f"task.matrix.rows={size}", "optimizer.lr=0.1", *common]
    return ["task=mlp", "task.data.source=teacher", "task.data.rows=20000", "task.batch_size=256", "optimizer=adam", *common]


def descend_job(args: argparse.Namespace) -> None:
    """The real CLI in this process, into a temporary folder."""
    from descend.cli import main

    sys.argv = ["train", *overrides(args.task, args.size, args.rank, args.steps), f"hydra.run.dir={tempfile.mkdtemp()}",
                "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    try:
        main()
    except SystemExit:
        pass


def plain_job(args: argparse.Namespace) -> None:
    """The same objective written by hand: loss, zero_grad, backward, step."""
    import lightning  # noqa: F401  (the same imports as descend's process: a fair baseline)
    import torch

    import descend.cli  # noqa: F401
    from descend.data.matrix import matrix_source

    torch.manual_seed(314)
    if args.task == "lowrank":
        a = matrix_source(source="random", rows=args.size, cols=args.size)
        u = torch.nn.Parameter(torch.rand(args.size, args.rank))
        v = torch.nn.Parameter(torch.rand(args.size, args.rank))
        optimizer, params = torch.optim.Adam([u, v], lr=0.01), None

        def loss() -> torch.Tensor:
            return torch.sum((a - u @ v.T) ** 2)
    elif args.task == "inverse":
        m = matrix_source(source="random", rows=args.size)
        eye = torch.eye(args.size)
        w = torch.nn.Parameter(torch.rand(args.size, args.size))
        optimizer = torch.optim.SGD([w], lr=0.1)

        def loss() -> torch.Tensor:
            return torch.mean((w @ m - eye) ** 2)
    else:
        from descend.data.table import table_source
        from descend.tasks.mlp import build_mlp

        table = table_source(source="teacher", rows=20000, features=8, noise=0.05)
        net = build_mlp(8, [64, 64], "tanh", 0.0)
        optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
        batches = iter(range(10**9))

        def loss() -> torch.Tensor:
            start = next(batches) * 256 % (len(table.target) - 256)
            x, y = table.features[start:start + 256], table.target[start:start + 256]
            return torch.mean((net(x).squeeze(-1) - y) ** 2)
    for _ in range(args.steps):
        value = loss()
        optimizer.zero_grad()
        value.backward()
        optimizer.step()


def measure(kind: str, args: argparse.Namespace) -> float:
    command = [sys.executable, __file__, "--child", kind, "--task", args.task, f"--size={args.size}",
               f"--rank={args.rank}", f"--steps={args.steps}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1].split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=2000)
    parser.add_argument("--rank", type=int, default=20)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--tasks", default="lowrank,inverse,mlp")
    parser.add_argument("--task", help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=("plain", "descend"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        (plain_job if args.child == "plain" else descend_job)(args)
        print(f"peak_mb {peak_mb():.1f}")
        return
    print(f"{'task':10s} {'plain MB':>9s} {'descend MB':>11s} {'ratio':>6s}   (size {args.size}, {args.steps} steps; target <= 1.5x)")
    for task in args.tasks.split(","):
        args.task = task
        plain, ours = measure("plain", args), measure("descend", args)
        print(f"{task:10s} {plain:9.0f} {ours:11.0f} {ours / plain:6.2f}x")


if __name__ == "__main__":
    main()
