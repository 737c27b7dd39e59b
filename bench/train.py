"""Ray Train's overhead: the paper-size speech network in a plain PyTorch loop
vs one Ray Train worker, on the same store rows, in one run.

    .venv/bin/python bench/train.py [--store out/store-ravdess] [--clips 100] [--epochs 3]
    python bench/train.py --device cuda      # on a GPU machine: bf16 autocast

Both sides run the platform's own ``train_one_epoch`` (collate, the RACNN
input transform on the device, forward, backward, Adam step) for ``--epochs``
epochs with the same thread count; the first epoch is warm-up. The plain loop
iterates a pandas frame of the rows (``avser.batches.FrameBatches``); the Ray side is a ``TorchTrainer`` with
one worker reading a materialized Ray dataset through ``get_dataset_shard``.

Printed: steady-state samples/s of each (epochs after the first), the Ray
worker's overhead against the loop (target: under 10%), and the Ray run's
fixed cost (controller and worker start-up, dataset split), which does not
grow with the corpus. On a shared machine the load average says how much
other work competed for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

REPO = Path(__file__).resolve().parents[1]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--store", default="out/store-ravdess",
                        help="a speech feature store (jobs/preprocess.py); RAVDESS by default")
    parser.add_argument("--model-config", default="configs/model/paper.yaml")
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=3, help="the first is warm-up")
    parser.add_argument("--batch", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads, both sides")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="autocast: auto is bf16 on a GPU or a CPU with native bf16")
    return parser.parse_args()


def load_rows(store: str, clips: int) -> pd.DataFrame:
    from avser.data.store import read_ok_rows
    from avser.errors import AvserError
    from avser.platform.stages import SPEECH_COLUMNS

    if not Path(store).is_dir():
        raise AvserError(
            f"no feature store at {store}; build one with `avser manifest --corpus ravdess "
            "--root ../shared/data/ravdess-speech-16k --out out/ravdess.parquet` and "
            "`python jobs/preprocess.py --manifest out/ravdess.parquet --out out/store-ravdess`")
    frame = read_ok_rows(store, SPEECH_COLUMNS)
    return frame.sample(n=min(clips, len(frame)), random_state=0).reset_index(drop=True)


def loop_context(args: argparse.Namespace, n_classes: int):
    from avser.config import load_model_config
    from avser.platform.config import OptimConfig, TrainConfig
    from avser.platform.epochs import LoopContext
    from avser.platform.runs import TrackingInfo

    model_cfg = load_model_config(args.model_config)
    cfg = TrainConfig(stage="pretrain", model_config=args.model_config,
                      optim=OptimConfig(batch_size=args.batch), use_gpu=args.device == "cuda",
                      mixed_precision=args.precision)
    return LoopContext(cfg=cfg, model_cfg=model_cfg, label_names=[str(i) for i in range(n_classes)],
                       run_name="bench-train",
                       tracking=TrackingInfo(experiment="none", uri="none", register=False))


def run_epochs(ctx, shard, device: torch.device, epochs: int) -> list[float]:
    """Seconds of each epoch of ``train_one_epoch`` on a fresh model."""
    from avser.models.factory import SPEECH, build_network
    from avser.platform.epochs import train_one_epoch

    torch.manual_seed(0)
    model = build_network(SPEECH, ctx.model_cfg).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=ctx.cfg.optim.lr)
    seconds = []
    for epoch in range(epochs):
        started = time.perf_counter()
        train_one_epoch(model, optimizer, shard, ctx, device, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds.append(time.perf_counter() - started)
    return seconds


def ray_worker_loop(config: dict[str, Any]) -> None:
    import ray.train
    import ray.train.torch

    torch.set_num_threads(config["threads"])
    seconds = run_epochs(config["ctx"], ray.train.get_dataset_shard("train"),
                         ray.train.torch.get_device(), config["epochs"])
    # Train V2 keeps the metrics of reports that carry a checkpoint.
    with tempfile.TemporaryDirectory() as folder:
        Path(folder, "epoch_seconds.json").write_text(json.dumps(seconds))
        ray.train.report({"epoch_seconds": seconds}, checkpoint=ray.train.Checkpoint.from_directory(folder))


def run_ray(ctx, frame: pd.DataFrame, args: argparse.Namespace) -> tuple[list[float], float]:
    """Per-epoch seconds inside the worker, and the whole ``fit()`` wall time."""
    import ray.data
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from avser.platform.rendezvous import NodeBoundTorchConfig

    dataset = ray.data.from_pandas(frame).materialize()
    trainer = TorchTrainer(
        ray_worker_loop,
        train_loop_config={"ctx": ctx, "epochs": args.epochs, "threads": args.threads},
        torch_config=NodeBoundTorchConfig(),
        scaling_config=ScalingConfig(num_workers=1, use_gpu=args.device == "cuda"),
        run_config=RunConfig(name="bench-train", storage_path=tempfile.mkdtemp(prefix="avser-bench-train-")),
        datasets={"train": dataset},
    )
    started = time.perf_counter()
    result = trainer.fit()
    return list(result.metrics["epoch_seconds"]), time.perf_counter() - started


def steady_rate(seconds: list[float], clips: int) -> float:
    """Samples/s over the epochs after the warm-up one (median epoch)."""
    return clips / statistics.median(seconds[1:] or seconds)


def main() -> None:
    args = parse_args()
    os.chdir(REPO)
    from avser.batches import FrameBatches
    from avser.platform.cluster import init_ray

    load_before = os.getloadavg()[0]
    frame = load_rows(args.store, args.clips)
    ctx = loop_context(args, n_classes=int(frame["label"].max()) + 1)
    torch.set_num_threads(args.threads)
    plain = run_epochs(ctx, FrameBatches(frame), torch.device(args.device), args.epochs)
    init_ray()
    in_worker, fit_seconds = run_ray(ctx, frame, args)

    n = len(frame)
    plain_rate, ray_rate = steady_rate(plain, n), steady_rate(in_worker, n)
    device = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {os.cpu_count()} cores"
    print(f"\n{args.model_config} speech network, {n} clips from {args.store}, batch {args.batch}, "
          f"{args.epochs} epochs (first = warm-up), {device}, {args.threads} torch threads, "
          f"precision {ctx.precision(torch.device(args.device))}; load average before {load_before:.2f}, "
          f"after {os.getloadavg()[0]:.2f}\n")
    print("| side | epoch seconds | samples/s (steady) |")
    print("| --- | --- | ---: |")
    print(f"| plain PyTorch loop | {', '.join(f'{s:.1f}' for s in plain)} | {plain_rate:.2f} |")
    print(f"| 1 Ray Train worker | {', '.join(f'{s:.1f}' for s in in_worker)} | {ray_rate:.2f} |")
    overhead = 1.0 - ray_rate / plain_rate
    fixed = fit_seconds - sum(in_worker)
    print(f"\nRay Train overhead on steady-state throughput: {100 * overhead:+.1f}% "
          f"(target < 10%); fixed cost of the Ray run (start-up, dataset split, report): {fixed:.1f} s")


if __name__ == "__main__":
    main()
