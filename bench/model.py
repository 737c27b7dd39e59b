"""Training throughput of the speech network (RACNN + speech_head) on this machine.

    python bench/model.py [--config configs/model/paper.yaml] [--batch 10]

Times forward + backward + Adam step on random clips of the config's input
size (the paper's batch size is 10) after a few warm-up steps, with torch's
default thread count (``--threads`` to change it), and prints a markdown
table for BENCHMARKS.md. On a shared machine the 1-minute load average it
prints says how much other work competed for the cores.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from avser.config import load_model_config
from avser.models.racnn import SpeechEmotionNet


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/model/paper.yaml")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's)"
    )
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (the paper's)")
    return parser.parse_args()


def time_steps(model, speech, labels, lr: float, warmup: int, steps: int) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for step in range(warmup + steps):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(speech), labels).backward()
        optimizer.step()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    args = parse_args()
    load_before = os.getloadavg()[0]  # other work sharing the cores skews the timing
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = load_model_config(args.config).racnn
    model = SpeechEmotionNet.from_config(cfg).train()
    speech = torch.randn(args.batch, cfg.in_channels, cfg.depth, cfg.input_size, cfg.input_size)
    labels = torch.randint(0, cfg.n_classes, (args.batch,))
    times = time_steps(model, speech, labels, args.lr, args.warmup, args.steps)
    step = statistics.median(times)
    shape = f"{cfg.in_channels}x{cfg.depth}x{cfg.input_size}x{cfg.input_size}"
    print(f"RACNN + speech_head, forward+backward+Adam, {args.config}, input {shape}")
    print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"1-min load average before the run {load_before:.2f}\n")
    print("| batch | warm-up | timed steps | median s/step | min s/step | clips/s |")
    print("|------:|--------:|------------:|--------------:|-----------:|--------:|")
    print(f"| {args.batch} | {args.warmup} | {args.steps} | {step:.3f} | {min(times):.3f} "
          f"| {args.batch / step:.2f} |")


if __name__ == "__main__":
    main()
