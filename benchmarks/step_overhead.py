"""Per-step time of the default inverse run (the real config, Trainer, callbacks and logger)
against a plain PyTorch loop doing the same work, measured in the same process.

    python benchmarks/step_overhead.py [--steps 2000] [--repeats 3] [--device cpu|cuda]

Fixed costs (building the Trainer, the first checkpoint) are removed by timing two run lengths
and dividing the difference by the difference in steps. Prints both per-step times and the ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def plain_loop(steps: int, device: str) -> float:
    """Seconds for `steps` SGD steps of mean((W·M − I)²), written by hand."""
    torch.manual_seed(314)
    m = torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], device=device))
    eye = torch.eye(4, device=device)
    w = torch.nn.Parameter(torch.rand(4, 4, device=device))
    optimizer = torch.optim.SGD([w], lr=0.46)
    start = time.perf_counter()
    for _ in range(steps):
        loss = torch.mean((w @ m - eye) ** 2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    float(loss)  # wait for the device
    return time.perf_counter() - start


def descend_run(steps: int, device: str, out: Path, *extra: str) -> float:
    """Seconds of Trainer.fit for the default `python -m train` config at `steps` steps."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from descend.build import build_task, build_trainer
    from descend.cli import config_dir, quiet_lightning

    overrides = [f"trainer.max_steps={steps}", f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
                 "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", *extra]
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    run_dir = Path(tempfile.mkdtemp(dir=out))
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    quiet_lightning()
    import logging

    logging.getLogger("lightning").setLevel(logging.WARNING)
    torch.manual_seed(cfg.seed)
    task, trainer = build_task(cfg), build_trainer(cfg)
    start = time.perf_counter()
    trainer.fit(task)
    return time.perf_counter() - start


def per_step(run, short: int, long: int, repeats: int, *args) -> float:
    """Best-of-`repeats` marginal seconds per step between a short and a long run."""
    return min((run(long, *args) - run(short, *args)) / (long - short) for _ in range(repeats))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    short = max(1, args.steps // 10)
    with tempfile.TemporaryDirectory() as out:
        plain = per_step(plain_loop, short, args.steps, args.repeats, args.device)
        framework = per_step(descend_run, short, args.steps, args.repeats, args.device, Path(out))
        # the floor: Lightning's own loop with descend's callbacks and logger taken away
        bare = per_step(descend_run, short, args.steps, args.repeats, args.device, Path(out), "callbacks=none", "logger=none")
    print(f"device: {args.device}, steps: {short} vs {args.steps}, best of {args.repeats}")
    print(f"plain PyTorch loop                   : {plain * 1e6:9.1f} µs/step")
    print(f"Lightning alone (no callbacks/logger): {bare * 1e6:9.1f} µs/step")
    print(f"descend default run                  : {framework * 1e6:9.1f} µs/step")
    print(f"ratio descend/plain                  : {framework / plain:9.1f}x")
    print(f"ratio descend/Lightning alone        : {framework / bare:9.1f}x")


if __name__ == "__main__":
    main()
