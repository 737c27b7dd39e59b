"""A file in, class probabilities out: ``avser predict`` and ``avser evaluate``.

A trained model travels as a bundle (:mod:`avser.bundle`): plain values,
loaded without running code.

One path from a file to probabilities serves both commands: the features
with the bundle's feature config (the log-mel of the audio or a video's
sound track; for an audio-visual model and a video, also the keyframe faces
and landmarks, as the training store computed them), the RACNN input, the
network, softmax. A video without a face falls back to speech alone.
A speech model exported with a speaker-adaptive readout can also score
several clips of one speaker together (:mod:`avser.speaker_adapt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from avser.batches import visual_arrays
from avser.bundle import DEFAULT_WEIGHTS, ModelBundle, load_bundle
from avser.data.manifest import Clip
from avser.errors import AvserError, ClipError, MissingFileError, NoFaceError, TooFewFramesError
from avser.features.audio import load_logmel
from avser.features.clip import ClipFeatures, extract_clip
from avser.features.landmarks import make_landmark_backend
from avser.models.factory import SPEECH
from avser.speaker_adapt import PROTOCOL, speaker_readout_logits

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv")
# Clips per forward pass in ``evaluate``.
EVAL_BATCH = 16


def resolve_bundle(weights: str | None = None, model: str | None = None) -> ModelBundle:
    """``--weights FILE``, ``--model NAME@ALIAS`` (the registry), or the shipped model."""
    if weights and model:
        raise AvserError("give --weights or --model, not both")
    if model:
        from avser.platform.registry import load_registered_model  # needs MLflow

        return load_registered_model(model).bundle
    return load_bundle(weights or DEFAULT_WEIGHTS)


@dataclass
class Prediction:
    path: str
    label: str
    probabilities: dict[str, float]
    note: str = ""


@dataclass
class FileInputs:
    """What the network reads of one file."""

    logmel: np.ndarray
    visual: ClipFeatures | None = None  # keyframe faces and landmarks; None: speech alone
    note: str = ""


def _check_suffix(path: Path) -> bool:
    """True for a video file; refuses what is neither audio nor video."""
    suffix = path.suffix.lower()
    if suffix not in AUDIO_SUFFIXES + VIDEO_SUFFIXES:
        raise ClipError(path, f"unsupported file type {suffix!r}",
                        f"give audio ({', '.join(AUDIO_SUFFIXES)}) or video "
                        f"({', '.join(VIDEO_SUFFIXES)})")
    return suffix in VIDEO_SUFFIXES


class FileReader:
    """Files -> network inputs with the bundle's feature config: the sound
    track for every model; for an audio-visual model and a video, also the
    keyframe faces and landmarks, read as the training store read them."""

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self._landmarker = None  # made on the first video (dlib loads its models once)

    def read(self, path: str | Path, landmarks_path: str | None = None) -> FileInputs:
        path = Path(path)
        is_video = _check_suffix(path)
        bundle = self.bundle
        if bundle.kind == SPEECH:
            note = "speech model: the video's sound track only" if is_video else ""
            return FileInputs(load_logmel(path, bundle.audio_cfg), note=note)
        uses_speech = bundle.model_cfg.fusion.uses_speech
        if not is_video:
            if not uses_speech:
                raise ClipError(path, "this model reads video only (fusion variant 'vision')",
                                "give it a video file")
            return FileInputs(load_logmel(path, bundle.audio_cfg), note="no video: speech alone")
        return self._read_video(path, landmarks_path or _beside(path, ".csv"), uses_speech)

    def _read_video(self, path: Path, landmarks_path: str | None, uses_speech: bool) -> FileInputs:
        clip = Clip(clip_id=path.stem, corpus="file", speaker="", label=-1, label_name="",
                    video_path=str(path), landmarks_path=landmarks_path)
        try:
            features = extract_clip(clip, self.bundle.feature_cfg, self.landmarker())
        except (NoFaceError, TooFewFramesError, MissingFileError) as exc:
            if not uses_speech:
                raise
            return FileInputs(load_logmel(path, self.bundle.audio_cfg),
                              note=f"no face read ({exc.reason}: {exc.detail}): speech alone")
        return FileInputs(features.logmel, features)

    def landmarker(self):
        if self._landmarker is None:
            self._landmarker = make_landmark_backend(self.bundle.feature_cfg.landmarks)
        return self._landmarker


def _beside(path: Path, suffix: str) -> str | None:
    """An OpenFace CSV next to the video (``clip.mp4`` -> ``clip.csv``), if there is one."""
    candidate = path.with_suffix(suffix)
    return str(candidate) if candidate.is_file() else None


def _visual_tensors(inputs: Sequence[FileInputs], bundle: ModelBundle):
    """Faces, landmarks and the visual mask of a batch of files, as ``collate`` builds them."""
    clips = [(x.visual.landmarks, x.visual.face_jpegs) if x.visual is not None else (None, None)
             for x in inputs]
    arrays = visual_arrays(clips, bundle.model_cfg.appearance.image_size, bundle.model_cfg.keyframes)
    return tuple(torch.from_numpy(a) for a in arrays)


@torch.no_grad()
def network_outputs(net: torch.nn.Module, inputs: Sequence[FileInputs],
                    bundle: ModelBundle) -> tuple[np.ndarray, np.ndarray | None]:
    """(N, C) logits of a batch of files' inputs and, for a speech network,
    the (N, E) embeddings its head's FC reads (None for the fusion model)."""
    from avser.features.racnn_input import racnn_input

    speech = racnn_input([torch.from_numpy(np.asarray(x.logmel, dtype=np.float32)) for x in inputs],
                         bundle.input_cfg)
    if bundle.kind == SPEECH:
        logits, embedding = net(speech, with_embedding=True)
        return logits.float().numpy(), embedding.float().numpy()
    faces, landmarks, mask = _visual_tensors(inputs, bundle)
    logits, _ = net(speech=speech, faces=faces, landmarks=landmarks, visual_mask=mask)
    return logits.float().numpy(), None


def probabilities(net: torch.nn.Module, inputs: Sequence[FileInputs], bundle: ModelBundle) -> np.ndarray:
    """(N, C) softmax probabilities of a batch of files' inputs."""
    return softmax(network_outputs(net, inputs, bundle)[0])


def softmax(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.as_tensor(logits).float(), dim=-1).numpy()


def check_speaker_readout(bundle: ModelBundle, flag: str) -> None:
    if bundle.kind != SPEECH or not bundle.speaker_readout:
        raise AvserError(f"{flag}: this model has no {PROTOCOL} readout (only a speech model "
                         "exported with one has it: bench/export_speech_model.py "
                         f"--speaker-readout); score without {flag}")


def _scores(bundle: ModelBundle, inputs: Sequence[FileInputs], speakers: Sequence[str] | None,
            where: str) -> np.ndarray:
    """(N, C) probabilities of files read in order: one at a time, or with
    ``speakers`` given, through the speaker-adaptive readout over all of them."""
    net, logits, embeddings = bundle.network(), [], []
    for start in range(0, len(inputs), EVAL_BATCH):
        chunk_logits, chunk_embeddings = network_outputs(net, inputs[start:start + EVAL_BATCH], bundle)
        logits.append(chunk_logits)
        embeddings.append(chunk_embeddings)
    if speakers is None:
        return softmax(np.concatenate(logits))
    return softmax(speaker_readout_logits(bundle.speaker_readout, np.concatenate(embeddings),
                                          np.asarray(speakers), where))


def predict_files(paths: Sequence[str | Path], bundle: ModelBundle,
                  one_speaker: bool = False) -> list[Prediction]:
    """Label and probabilities per file; ``one_speaker``: the files are one
    speaker's, scored together by the speaker-adaptive readout."""
    if one_speaker:
        check_speaker_readout(bundle, "--one-speaker")
    reader = FileReader(bundle)
    inputs = [reader.read(path) for path in paths]
    speakers = ["speaker"] * len(inputs) if one_speaker else None
    probs = _scores(bundle, inputs, speakers, "the files of --one-speaker")
    note = f"{PROTOCOL}: the {len(inputs)} files standardised together" if one_speaker else ""
    return [Prediction(str(path), bundle.label_names[int(p.argmax())],
                       dict(zip(bundle.label_names, map(float, p))),
                       "; ".join(n for n in (x.note, note) if n))
            for path, x, p in zip(paths, inputs, probs)]


def check_labels(manifest_labels: Sequence[str], bundle: ModelBundle, where: str) -> None:
    unknown = sorted(set(manifest_labels) - set(bundle.label_names))
    if unknown:
        raise AvserError(f"{where} has labels {unknown} that the model does not know; its "
                         f"classes are {bundle.label_names}. Evaluate on a corpus with the same "
                         "label set (or map the labels first)")


def _manifest_files(frame, reads_video: bool):
    """(file, landmarks CSV) per row: the video for a model that reads faces, else the audio."""
    for row in frame.itertuples(index=False):
        audio, video = row.audio_path or None, row.video_path or None
        path = (video or audio) if reads_video else (audio or video)
        yield path, getattr(row, "landmarks_path", None) or None


def evaluate_manifest(bundle: ModelBundle, manifest_path: str | Path, out: str | Path | None = None,
                      speaker_adaptive: bool = False):
    """Scores of ``bundle`` on every clip of a manifest (``speaker_adaptive``:
    through the speaker-adaptive readout, grouping clips by the manifest's
    speaker column); writes the confusion matrix PNG and a predictions CSV
    under ``out`` when given."""
    import pandas as pd

    from avser.data.manifest import read_manifest
    from avser.metrics import classification_report, plot_confusion

    frame = read_manifest(manifest_path)
    check_labels(frame["label_name"].unique(), bundle, str(manifest_path))
    if speaker_adaptive:
        check_speaker_readout(bundle, "--speaker-adaptive")
    reader = FileReader(bundle)
    inputs = [reader.read(path, csv) for path, csv in _manifest_files(frame, bundle.kind != SPEECH)]
    speakers = frame["speaker"].astype(str).to_numpy() if speaker_adaptive else None
    probs = _scores(bundle, inputs, speakers, str(manifest_path))
    truth = np.array([bundle.label_names.index(n) for n in frame["label_name"]])
    report = classification_report(truth, probs.argmax(1), bundle.label_names)
    report["protocol"] = PROTOCOL if speaker_adaptive else "per clip"
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plot_confusion(np.asarray(report["confusion"]), bundle.label_names, out / "confusion.png",
                       title=f"{Path(manifest_path).name} ({report['protocol']}): UA {report['ua']:.1%}")
        table = pd.DataFrame({"clip_id": frame["clip_id"], "speaker": frame["speaker"],
                              "label": frame["label_name"],
                              "predicted": [bundle.label_names[i] for i in probs.argmax(1)]})
        for i, name in enumerate(bundle.label_names):
            table[f"p_{name}"] = probs[:, i]
        table.to_csv(out / "predictions.csv", index=False)
    return report
