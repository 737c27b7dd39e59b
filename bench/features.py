"""Per-clip feature extraction speed on the real data in ../shared/data.

    python bench/features.py [--data ../shared/data] [--clips 5] [--rounds 3]

(a) audio: ``load_audio`` + ``logmel`` per RAVDESS clip (16 kHz flac);
(b) dlib landmarks on ``face-videos/WolfgangLanger_Pexels.mp4`` (640x360, 472
frames): naive (detect on every full-size frame) against ours
(detect-and-track), plus the mean landmark distance of ours from the naive
per-frame result, as a fraction of the inter-ocular distance.

Other work sharing the cores slows whichever method runs at that moment, so
methods run in interleaved rounds and each keeps its fastest round. Prints
markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from avser.features.audio import load_audio, logmel
from avser.features.config import AudioConfig, LandmarkConfig, VideoConfig
from avser.features.landmarks import DlibBackend, LandmarkTrack
from avser.features.video import decode_video

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data"
VIDEO = Path("face-videos") / "WolfgangLanger_Pexels.mp4"
SPEECH = Path("ravdess-speech-16k")
# Targets from the design brief.
TARGET_SPEEDUP = 4.0
TARGET_ERROR_IOD = 0.03


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--clips", type=int, default=5, help="RAVDESS clips timed (one per actor)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="interleaved timing rounds per method"
    )
    return parser.parse_args()


def speech_clips(data: Path, n: int) -> list[Path]:
    """The first clip of each of the first ``n`` actors (sorted: the same files every run)."""
    actors = sorted((data / SPEECH).glob("Actor_*"))[:n]
    return [sorted(actor.glob("*.flac"))[0] for actor in actors]


def time_audio(clips: list[Path], rounds: int) -> list[tuple[str, float, float]]:
    """(file name, seconds of audio, fastest per-clip seconds) per clip."""
    cfg = AudioConfig()
    load_audio(clips[0], cfg.sample_rate)  # warm-up: imports, filter banks, FFT plans
    rows = []
    for clip in clips:
        best = float("inf")
        for _ in range(rounds):
            start = time.perf_counter()
            wave = load_audio(clip, cfg.sample_rate, silence_rms=cfg.silence_rms)
            logmel(wave, cfg)
            best = min(best, time.perf_counter() - start)
        rows.append((clip.name, len(wave) / cfg.sample_rate, best))
    return rows


def time_landmarks(video, backends: dict[str, DlibBackend], rounds: int):
    """Fastest whole-clip time and the track of each backend, rounds interleaved."""
    best = {name: float("inf") for name in backends}
    tracks: dict[str, LandmarkTrack] = {}
    for _ in range(rounds):
        for name, backend in backends.items():
            start = time.perf_counter()
            tracks[name] = backend.track(video)
            best[name] = min(best[name], time.perf_counter() - start)
    return best, tracks


def error_vs(reference: LandmarkTrack, track: LandmarkTrack) -> np.ndarray:
    """Per frame found by both: mean point distance / the reference's inter-ocular distance."""
    both = reference.success & track.success
    ref = reference.points[both]
    iod = np.linalg.norm(ref[:, 42:48].mean(axis=1) - ref[:, 36:42].mean(axis=1), axis=1)
    return np.linalg.norm(track.points[both] - ref, axis=2).mean(axis=1) / iod


def main() -> None:
    args = parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"real data folder {args.data} is absent (pass --data)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start")

    print("\n### Audio features per clip (load_audio + logmel, 16 kHz flac)\n")
    print("| clip | audio s | time ms |")
    print("| --- | ---: | ---: |")
    audio = time_audio(speech_clips(args.data, args.clips), args.rounds)
    for name, seconds, best in audio:
        print(f"| {name} | {seconds:.2f} | {best * 1000:.1f} |")
    print(f"| median | {statistics.median(r[1] for r in audio):.2f} | "
          f"{statistics.median(r[2] for r in audio) * 1000:.1f} |")

    video = decode_video(args.data / VIDEO, VideoConfig())
    cfg = LandmarkConfig()
    every, width = cfg.redetect_every, cfg.detect_width
    backends = {
        "naive: detect every frame, full size": replace(cfg, track=False, detect_width=None),
        f"naive: detect every frame at {width} px": replace(cfg, track=False),
        f"ours: detect every {every} at {width} px, track between": cfg,
    }
    backends = {name: DlibBackend(backend_cfg) for name, backend_cfg in backends.items()}
    best, tracks = time_landmarks(video, backends, args.rounds)
    naive_name, ours_name = next(iter(backends)), list(backends)[-1]
    height, width = video.frames.shape[1:3]
    print(f"\n### dlib 68-point landmarks, {VIDEO.name} ({len(video)} frames, {width}x{height})\n")
    print("| method | frames/s | speed-up | faces found | mean error / IOD | p95 error / IOD |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, track in tracks.items():
        error = error_vs(tracks[naive_name], track)
        print(f"| {name} | {len(video) / best[name]:.0f} | {best[naive_name] / best[name]:.1f}x | "
              f"{track.found_fraction:.1%} | {error.mean():.2%} | {np.percentile(error, 95):.2%} |")
    speedup = best[naive_name] / best[ours_name]
    error = error_vs(tracks[naive_name], tracks[ours_name]).mean()
    verdict = {True: "met", False: "MISSED"}
    print(f"\ntargets: speed-up >= {TARGET_SPEEDUP:.0f}x ({verdict[speedup >= TARGET_SPEEDUP]}), "
          f"mean error < {TARGET_ERROR_IOD:.0%} of IOD ({verdict[error < TARGET_ERROR_IOD]}); "
          f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
