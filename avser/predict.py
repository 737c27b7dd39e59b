"""A file in, class probabilities out: ``avser predict`` and ``avser evaluate``.

A trained model travels as a bundle (:mod:`avser.bundle`): plain values,
loaded without running code.

One path from a file to probabilities serves both commands: load the audio
(wav/flac/mp3, or a video's sound track), the stored log-mel features with
the bundle's config, the RACNN input, the network, softmax.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from avser.bundle import DEFAULT_WEIGHTS, ModelBundle, load_bundle
from avser.errors import AvserError, ClipError
from avser.features.audio import load_logmel
from avser.models.factory import SPEECH
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
# Clips per forward pass in ``evaluate``.
EVAL_BATCH = 16


def resolve_bundle(weights: str | None = None, model: str | None = None) -> ModelBundle:
    """``--weights FILE``, ``--model NAME@ALIAS`` (the registry), or the shipped model."""
    if weights and model:
        raise AvserError("give --weights or --model, not both")
    if model:
        from avser.platform.registry import download_registered_bundle  # needs MLflow

        return load_bundle(download_registered_bundle(model))
    return load_bundle(weights or DEFAULT_WEIGHTS)


@dataclass
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]
    note: str = ""


def file_logmel(path: str | Path, bundle: ModelBundle) -> np.ndarray:
    """The stored features of a file, as the bundle's training store computed them."""
    path = Path(path)
    if path.suffix.lower() not in AUDIO_SUFFIXES + VIDEO_SUFFIXES:
        raise ClipError(path, f"unsupported file type {path.suffix!r}",
                        f"give audio ({', '.join(AUDIO_SUFFIXES)}) or video "
                        f"({', '.join(VIDEO_SUFFIXES)})")
    return load_logmel(path, bundle.audio_cfg)


def _note_for(path: Path, bundle: ModelBundle) -> str:
    is_video = path.suffix.lower() in VIDEO_SUFFIXES
    if bundle.kind == SPEECH:
        return "speech model: the video's sound track only" if is_video else ""
    if not bundle.model_cfg.fusion.uses_speech:
        raise ClipError(path, "this model reads video only (fusion variant 'vision')",
                        "give it a video file")
    return "no video: speech alone" if not is_video else "speech alone (faces not read yet)"


@torch.no_grad()
def probabilities(net: torch.nn.Module, logmels: Sequence[np.ndarray], bundle: ModelBundle) -> np.ndarray:
    """(N, C) softmax probabilities of log-mel clips (audio branch only for fusion)."""
    from avser.features.racnn_input import racnn_input

    speech = racnn_input([torch.from_numpy(np.asarray(m, dtype=np.float32)) for m in logmels],
                         bundle.input_cfg)
    if bundle.kind == SPEECH:
        logits = net(speech)
    else:
        n = len(logmels)
        k, size = bundle.model_cfg.keyframes, bundle.model_cfg.appearance.image_size
        logits, _ = net(speech=speech, faces=torch.zeros(n, k, 3, size, size),
                        landmarks=torch.zeros(n, k, 68, 2), visual_mask=torch.zeros(n, dtype=torch.bool))
    return torch.softmax(logits.float(), dim=-1).numpy()


def predict_files(paths: Sequence[str | Path], bundle: ModelBundle) -> list[Prediction]:
    net = bundle.network()
    results = []
    for path in map(Path, paths):
        note = _note_for(path, bundle)
        probs = probabilities(net, [file_logmel(path, bundle)], bundle)[0]
        results.append(Prediction(str(path), bundle.label_names[int(probs.argmax())],
                                  dict(zip(bundle.label_names, map(float, probs))), note))
    return results


def check_labels(manifest_labels: Sequence[str], bundle: ModelBundle, where: str) -> None:
    unknown = sorted(set(manifest_labels) - set(bundle.label_names))
    if unknown:
        raise AvserError(f"{where} has labels {unknown} that the model does not know; its "
                         f"classes are {bundle.label_names}. Evaluate on a corpus with the same "
                         "label set (or map the labels first)")


def evaluate_manifest(bundle: ModelBundle, manifest_path: str | Path, out: str | Path | None = None):
    """Scores of ``bundle`` on every clip of a manifest; writes the confusion
    matrix PNG and a predictions CSV under ``out`` when given."""
    import pandas as pd

    from avser.data.manifest import read_manifest
    from avser.metrics import classification_report, plot_confusion

    frame = read_manifest(manifest_path)
    check_labels(frame["label_name"].unique(), bundle, str(manifest_path))
    net, probs = bundle.network(), []
    paths = [a or v for a, v in zip(frame["audio_path"], frame["video_path"])]
    for start in range(0, len(paths), EVAL_BATCH):
        chunk = [file_logmel(p, bundle) for p in paths[start:start + EVAL_BATCH]]
        probs.append(probabilities(net, chunk, bundle))
    probs = np.concatenate(probs)
    truth = np.array([bundle.label_names.index(n) for n in frame["label_name"]])
    report = classification_report(truth, probs.argmax(1), bundle.label_names)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plot_confusion(np.asarray(report["confusion"]), bundle.label_names, out / "confusion.png",
                       title=f"{Path(manifest_path).name}: UA {report['ua']:.1%}")
        table = pd.DataFrame({"clip_id": frame["clip_id"], "speaker": frame["speaker"],
                              "label": frame["label_name"],
                              "predicted": [bundle.label_names[i] for i in probs.argmax(1)]})
        for i, name in enumerate(bundle.label_names):
            table[f"p_{name}"] = probs[:, i]
        table.to_csv(out / "predictions.csv", index=False)
    return report
