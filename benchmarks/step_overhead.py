"""Per-step time of descend's runs against a plain PyTorch loop doing the same work, measured
in the same process; and the share of a run that pictures and checkpoints take.

    python benchmarks/step_overhead.py [--steps 2000] [--repeats 3] [--device cpu|cuda] [--skip-pictures]

Per-step times: fixed costs (building the Trainer, the first checkpoint) are removed by timing
two run lengths and dividing the difference by the difference in steps. Rows:
  plain PyTorch loop           the seed inverse task's SGD loop, written by hand
  descend default run          the real config: TensorBoard logging, checkpoints, pictures, guard
  descend, one step per batch  the same with steps_per_batch=1 (Lightning's loop around every step)
  Lightning alone              steps_per_batch=1 without descend's callbacks and logger

Pictures and checkpoints: `lowrank` runs with the default callbacks against the same runs
without pictures and checkpoints; their share of the run's time (target: at most 10 %).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
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
    loss.detach().item()  # wait for the device (detached: float() of a tensor that requires grad warns)
    return time.perf_counter() - start


def descend_run(steps: int, device: str, out: Path, *extra: str) -> float:
    """Seconds of Trainer.fit for the default `python -m train` config at `steps` steps."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from descend.build import build_task, build_trainer
    from descend.cli import quiet_lightning
    from descend.prechecks import config_dir

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
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def per_step(run, short: int, long: int, repeats: int, *args) -> float:
    """Best-of-`repeats` marginal seconds per step between a short and a long run."""
    return min((run(long, *args) - run(short, *args)) / (long - short) for _ in range(repeats))


def ratio_to_plain(short: int, long: int, repeats: int, device: str, *args) -> tuple[float, float]:
    """Per-step seconds of descend and of the plain loop, measured alternately (this machine's
    speed drifts between runs): the best of each over `repeats` rounds."""
    descend, plain = [], []
    for _ in range(repeats):
        plain.append(per_step(plain_loop, short, long, 1, device))
        descend.append(per_step(descend_run, short, long, 1, device, *args))
    return min(descend), min(plain)


def picture_file(out: Path) -> Path:
    """A 640×480 grayscale "photo": smooth shapes plus texture, the kind of matrix users factorise."""
    y, x = np.mgrid[0:640, 0:480] / 480.0
    image = 0.5 + 0.3 * np.sin(6 * x) * np.cos(4 * y) + 0.2 * ((x - 0.5) ** 2 + (y - 0.7) ** 2 < 0.05)
    image += 0.05 * np.random.default_rng(0).standard_normal(image.shape)
    path = out / "picture.npy"
    np.save(path, image.astype(np.float32))
    return path


def picture_share(device: str, out: Path, repeats: int, *overrides: str) -> tuple[float, float]:
    """Best-of wall times of fit with the default callbacks and without pictures and checkpoints,
    measured alternately."""
    full, bare = [], []
    for _ in range(repeats):
        full.append(_fit(device, out, *overrides))
        bare.append(_fit(device, out, *overrides, "~callbacks.images", "~callbacks.checkpoint"))
    return min(full), min(bare)


def _fit(device: str, out: Path, *overrides: str) -> float:
    steps = next(int(o.split("=")[1]) for o in overrides if o.startswith("trainer.max_steps="))
    return descend_run(steps, device, out, *overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--skip-pictures", action="store_true", help="only the per-step times")
    args = parser.parse_args()
    short = max(1, args.steps // 10)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        grouped, plain = ratio_to_plain(short, args.steps, args.repeats, args.device, out)
        single = per_step(descend_run, short, args.steps, args.repeats, args.device, out, "steps_per_batch=1")
        bare = per_step(descend_run, short, args.steps, args.repeats, args.device, out, "steps_per_batch=1", "callbacks=none", "logger=none")
        print(f"device: {args.device}, steps: {short} vs {args.steps}, best of {args.repeats}")
        print(f"plain PyTorch loop                      : {plain * 1e6:9.1f} µs/step")
        print(f"descend default run                     : {grouped * 1e6:9.1f} µs/step   {grouped / plain:5.2f}x plain (target <= 1.3x)")
        print(f"descend, one step per batch             : {single * 1e6:9.1f} µs/step   {single / plain:5.2f}x plain")
        print(f"Lightning alone (one step per batch)    : {bare * 1e6:9.1f} µs/step   {bare / plain:5.2f}x plain")
        if args.skip_pictures:
            return
        cases = {
            "lowrank 640x480 picture, rank 20, adam, 200 steps": [
                "task=lowrank", f"task.matrix.path={picture_file(out)}", "task.rank=20", "optimizer=adam", "trainer.max_steps=200"],
            "lowrank random 300x200, rank 10, adam, 1000 steps": [
                "task=lowrank", "task.matrix.rows=300", "task.matrix.cols=200", "task.rank=10", "optimizer=adam", "trainer.max_steps=1000"],
        }
        print("pictures and checkpoints (default callbacks against none), fit wall time:")
        for name, overrides in cases.items():
            full, bare_fit = picture_share(args.device, out, args.repeats, *overrides)
            print(f"  {name:52s}: {full:6.2f} s against {bare_fit:6.2f} s: {(full - bare_fit) / full:6.1%} of the run (target <= 10 %)")


if __name__ == "__main__":
    main()
