"""A synthetic audio-visual emotion corpus: real media files read like any other corpus.

Each clip is one synthetic speaker saying a vowel-like utterance with one of
six emotions: ``<clip_id>.mp4`` (H.264 video of a drawn face + AAC audio),
``<clip_id>.csv`` (the exact 68 landmarks of every frame, in OpenFace 2.0
FeatureExtraction format) and one ``corpus.json`` (labels, config, seed).

The emotion is learnable from either modality but not trivially: every clip
has its own intensity, each modality is blended toward a second, random
emotion by its own amount, and speakers have their own faces, voices and
habits. Generation is deterministic per (seed, clip index).
"""

from __future__ import annotations

import json
import os
import re
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import av
import numpy as np
from tqdm import tqdm

from avser.config import config_hash, to_dict
from avser.data.manifest import Clip, ScanProblem, ScanResult
from avser.data.synthetic.drawing import render_frames
from avser.data.synthetic.face import (
    EXPRESSION_KEYS,
    FaceSynthConfig,
    face_track,
    sample_face_identity,
)
from avser.data.synthetic.voice import (
    PROSODY_KEYS,
    VoiceSynthConfig,
    plan_syllables,
    sample_voice_identity,
    syllable_envelope,
    synthesize_voice,
)
from avser.errors import AvserError, ConfigError

CORPUS = "synthetic"
EMOTIONS = ("neutral", "happy", "sad", "angry", "fearful", "surprised")
CORPUS_FILE = "corpus.json"
# The landmarks are exact, so every frame is a confident, successful detection.
OPENFACE_CONFIDENCE = 0.98
CLIP_NAME = re.compile(r"^(?P<speaker>spk\d+)_(?P<emotion>[a-z]+)_(?P<index>\d+)$")
NOT_A_CLIP = "not a synthetic corpus file (expected spkNN_<emotion>_NNNNN.mp4 or .csv)"
# A blend weight of one half makes the partner emotion as strong as the labelled one.
MAX_OVERLAP = 0.5
# Per-clip facts copied into the manifest's ``extra``.
EXTRA_FIELDS = ("intensity", "duration_s")

# Independent random streams, so that e.g. a drawing change leaves the audio untouched.
PLAN_STREAM, SPEAKER_STREAM, FACE_STREAM, VOICE_STREAM = range(4)


@dataclass
class SynthConfig:
    """Every number of the generator. The first emotion is the neutral reference."""

    emotions: tuple[str, ...] = EMOTIONS
    n_speakers: int = 8
    # Speakers are numbered from here: a held-out corpus (e.g. first_speaker 9)
    # has speakers, and names, that a training corpus starting at 1 never had.
    first_speaker: int = 1
    fps: int = 25
    duration_s: tuple[float, float] = (2.0, 4.0)
    width: int = 320
    height: int = 240
    sample_rate: int = 16000
    # Per-clip intensity scales the distance from neutral, in both modalities.
    intensity: tuple[float, float] = (0.5, 1.0)
    # Each modality is blended toward a random other emotion by up to this weight.
    label_overlap: float = 0.3
    video_crf: int = 23
    video_preset: str = "veryfast"
    # One encoder thread per clip: parallel generation scales over clips, not inside one.
    video_threads: int = 1
    audio_bitrate: int = 64000
    face: FaceSynthConfig = field(default_factory=FaceSynthConfig)
    voice: VoiceSynthConfig = field(default_factory=VoiceSynthConfig)


@dataclass
class ClipPlan:
    """What one clip will be, drawn before any sample or pixel."""

    index: int
    speaker: int  # 1-based
    label: int
    emotion: str
    intensity: float
    duration_s: float
    n_frames: int
    face_partner: str
    face_blend: float
    voice_partner: str
    voice_blend: float

    @property
    def speaker_id(self) -> str:
        return f"spk{self.speaker:02d}"

    @property
    def clip_id(self) -> str:
        return f"{self.speaker_id}_{self.emotion}_{self.index:05d}"


def validate(cfg: SynthConfig) -> None:
    if len(cfg.emotions) < 2:
        raise ConfigError(
            f"SynthConfig.emotions needs at least two emotions, got {list(cfg.emotions)}"
        )
    tables = (
        (cfg.face.expressions, EXPRESSION_KEYS, "face.expressions"),
        (cfg.voice.prosody, PROSODY_KEYS, "voice.prosody"),
    )
    for table, keys, where in tables:
        missing = [e for e in cfg.emotions if e not in table]
        if missing:
            raise ConfigError(
                f"SynthConfig.{where} has no entry for {missing}; add one per emotion"
            )
        for emotion in cfg.emotions:
            if set(table[emotion]) != set(keys):
                raise ConfigError(
                    f"SynthConfig.{where}[{emotion!r}] must give exactly {list(keys)}"
                )
    if cfg.width % 2 or cfg.height % 2:
        raise ConfigError(
            "SynthConfig width and height must be even for yuv420p video, "
            f"got {cfg.width}x{cfg.height}"
        )
    if cfg.n_speakers < 1 or cfg.fps < 1 or cfg.first_speaker < 1:
        raise ConfigError("SynthConfig.n_speakers, first_speaker and fps must be positive")
    if not 0 <= cfg.label_overlap < MAX_OVERLAP:
        raise ConfigError(
            f"SynthConfig.label_overlap must be in [0, {MAX_OVERLAP}), got {cfg.label_overlap}: "
            "from there on a clip shows its partner emotion more than its own"
        )


def plan_clip(cfg: SynthConfig, seed: int, index: int) -> ClipPlan:
    """Clip ``index``: each block of len(emotions) clips is one speaker saying every emotion."""
    rng = np.random.default_rng([seed, PLAN_STREAM, index])
    n_emotions = len(cfg.emotions)
    label = index % n_emotions
    n_frames = int(round(rng.uniform(*cfg.duration_s) * cfg.fps))

    def partner() -> str:
        others = [e for i, e in enumerate(cfg.emotions) if i != label]
        return others[rng.integers(len(others))]

    return ClipPlan(
        index=index,
        speaker=(index // n_emotions) % cfg.n_speakers + cfg.first_speaker,
        label=label,
        emotion=cfg.emotions[label],
        intensity=float(rng.uniform(*cfg.intensity)),
        duration_s=n_frames / cfg.fps,
        n_frames=n_frames,
        face_partner=partner(),
        face_blend=float(rng.uniform(0, cfg.label_overlap)),
        voice_partner=partner(),
        voice_blend=float(rng.uniform(0, cfg.label_overlap)),
    )


def blend_emotion(
    table: dict[str, dict[str, float]], neutral: str, emotion: str, partner: str,
    blend: float, intensity: float,
) -> dict[str, float]:
    """The emotion's parameters, blended toward a partner emotion, then scaled from neutral."""
    params = {}
    for key, base in table[neutral].items():
        target = (1 - blend) * table[emotion][key] + blend * table[partner][key]
        params[key] = base + intensity * (target - base)
    return params


def perturb(
    params: dict[str, float], habit: dict[str, float], noise_sd: dict[str, float],
    rng: np.random.Generator,
) -> dict[str, float]:
    """Add the speaker's habit and this clip's own scatter."""
    return {key: value + habit[key] + rng.normal(0, noise_sd[key]) for key, value in params.items()}


def _speaker_habit(
    sd: dict[str, float], keys: tuple[str, ...], rng: np.random.Generator
) -> dict[str, float]:
    return {key: float(rng.normal(0, sd[key])) for key in keys}


@dataclass
class ClipMedia:
    frames: Iterator[np.ndarray]  # BGR uint8, drawn lazily while encoding
    landmarks: np.ndarray  # (T, 68, 2)
    audio: np.ndarray  # float32 mono


def synthesize_clip(plan: ClipPlan, cfg: SynthConfig, seed: int) -> ClipMedia:
    """The landmarks, frames and audio of one planned clip."""
    speaker_rng = np.random.default_rng([seed, SPEAKER_STREAM, plan.speaker])
    female = plan.speaker % 2 == 0  # as in RAVDESS: even speakers are female
    voice_id = sample_voice_identity(cfg.voice, female, speaker_rng)
    face_id = sample_face_identity(cfg.face, speaker_rng)
    voice_habit = _speaker_habit(cfg.voice.speaker_prosody_sd, PROSODY_KEYS, speaker_rng)
    face_habit = _speaker_habit(cfg.face.speaker_expression_sd, EXPRESSION_KEYS, speaker_rng)

    voice_rng = np.random.default_rng([seed, VOICE_STREAM, plan.index])
    face_rng = np.random.default_rng([seed, FACE_STREAM, plan.index])
    neutral = cfg.emotions[0]
    emotion, intensity = plan.emotion, plan.intensity
    prosody = blend_emotion(
        cfg.voice.prosody, neutral, emotion, plan.voice_partner, plan.voice_blend, intensity
    )
    prosody = perturb(prosody, voice_habit, cfg.voice.prosody_noise, voice_rng)
    apex = blend_emotion(
        cfg.face.expressions, neutral, emotion, plan.face_partner, plan.face_blend, intensity
    )
    apex = perturb(apex, face_habit, cfg.face.expression_noise, face_rng)

    syllables = plan_syllables(plan.duration_s, prosody, cfg.voice, voice_rng)
    audio = synthesize_voice(
        syllables, plan.duration_s, prosody, voice_id, cfg.voice, cfg.sample_rate, voice_rng
    )
    frame_times = np.arange(plan.n_frames) / cfg.fps
    articulation = syllable_envelope(syllables, frame_times, cfg.voice.syllable_shape)
    frame_size = (cfg.width, cfg.height)
    track = face_track(face_id, apex, articulation, cfg.face, cfg.fps, frame_size, face_rng)
    frames = render_frames(track, face_id, cfg.face.look, frame_size, face_rng)
    return ClipMedia(frames=frames, landmarks=track.landmarks, audio=audio)


def write_mp4(path: Path, media: ClipMedia, cfg: SynthConfig) -> None:
    """H.264 (yuv420p) video and AAC mono audio of the same length."""
    with av.open(str(path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=cfg.fps)
        video.width, video.height, video.pix_fmt = cfg.width, cfg.height, "yuv420p"
        video.options = {
            "crf": str(cfg.video_crf),
            "preset": cfg.video_preset,
            "threads": str(cfg.video_threads),
        }
        audio = container.add_stream("aac", rate=cfg.sample_rate, layout="mono")
        audio.bit_rate = cfg.audio_bitrate
        for image in media.frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(image, format="bgr24")))
        container.mux(video.encode(None))
        frame = av.AudioFrame.from_ndarray(media.audio[None, :], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = cfg.sample_rate, 0
        container.mux(audio.encode(frame))
        container.mux(audio.encode(None))


def openface_header() -> str:
    columns = ["frame", "face_id", "timestamp", "confidence", "success"]
    columns += [f"x_{i}" for i in range(68)] + [f"y_{i}" for i in range(68)]
    return ", ".join(columns)


def write_landmarks_csv(path: Path, landmarks: np.ndarray, fps: int) -> None:
    """OpenFace 2.0 FeatureExtraction layout: 1-based frames, ``, `` separators."""
    lines = [openface_header()]
    for t, points in enumerate(landmarks):
        coords = ", ".join(f"{v:.3f}" for v in np.concatenate([points[:, 0], points[:, 1]]))
        lines.append(f"{t + 1}, 0, {t / fps:.3f}, {OPENFACE_CONFIDENCE}, 1, {coords}")
    path.write_text("\n".join(lines) + "\n")


def _clip_record(out: Path, plan: ClipPlan) -> Clip:
    mp4 = str(out / f"{plan.clip_id}.mp4")
    return Clip(
        clip_id=plan.clip_id,
        corpus=CORPUS,
        speaker=plan.speaker_id,
        label=plan.label,
        label_name=plan.emotion,
        audio_path=mp4,
        video_path=mp4,
        landmarks_path=str(out / f"{plan.clip_id}.csv"),
        extra={key: getattr(plan, key) for key in EXTRA_FIELDS},
    )


def _read_meta(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AvserError(
            f"{path} is not valid JSON ({exc}); delete it and generate the corpus again"
        ) from exc


def _check_existing(out: Path, cfg: SynthConfig, seed: int) -> None:
    """Refuse to mix clips of different configs or seeds in one folder."""
    path = out / CORPUS_FILE
    if not path.is_file():
        return
    meta = _read_meta(path)
    if meta.get("seed") != seed or meta.get("config_hash") != config_hash(cfg):
        raise AvserError(
            f"{path} describes a corpus made with another seed or config; "
            "generate into an empty folder, or delete this one first"
        )


def generate_corpus(
    out_dir: str | Path,
    n_clips: int,
    seed: int = 0,
    cfg: SynthConfig | None = None,
    progress: bool = True,
    workers: int | None = None,
) -> list[Clip]:
    """Write ``n_clips`` clips (mp4 + landmark csv) and ``corpus.json`` into ``out_dir``.

    Clips already there (same seed and config) are kept, so a rerun only adds
    what is missing; files appear atomically, never half-written. ``workers``
    processes write clips side by side (default: one per CPU); every clip is
    drawn from its own (seed, index) streams, so the corpus is the same.
    """
    cfg = cfg or SynthConfig()
    validate(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _check_existing(out, cfg, seed)
    plans = [plan_clip(cfg, seed, index) for index in range(n_clips)]
    todo = [p for p in plans if not _written(out, p)]
    bar = tqdm(total=len(todo), desc="synthetic corpus", unit="clip", disable=not progress)
    workers = min(workers or os.cpu_count() or 1, len(todo))
    if workers <= 1:
        for plan in todo:
            _write_clip(out, plan, cfg, seed)
            bar.update()
    else:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            for done in as_completed([pool.submit(_write_clip, out, p, cfg, seed) for p in todo]):
                done.result()
                bar.update()
    bar.close()
    _write_corpus_json(out, cfg, seed, plans)
    return [_clip_record(out, plan) for plan in plans]


def _write_clip(out: Path, plan: ClipPlan, cfg: SynthConfig, seed: int) -> None:
    """Both files of one clip, each written under a temporary name then renamed."""
    mp4, csv = out / f"{plan.clip_id}.mp4", out / f"{plan.clip_id}.csv"
    if _written(out, plan):
        return
    media = synthesize_clip(plan, cfg, seed)
    partial = out / f"{plan.clip_id}.partial.mp4"
    write_mp4(partial, media, cfg)
    partial.replace(mp4)
    partial = out / f"{plan.clip_id}.partial.csv"
    write_landmarks_csv(partial, media.landmarks, cfg.fps)
    partial.replace(csv)


def _written(out: Path, plan: ClipPlan) -> bool:
    return (out / f"{plan.clip_id}.mp4").is_file() and (out / f"{plan.clip_id}.csv").is_file()


def _write_corpus_json(out: Path, cfg: SynthConfig, seed: int, plans: list[ClipPlan]) -> None:
    meta = {
        "corpus": CORPUS,
        "seed": seed,
        "emotions": list(cfg.emotions),
        "config_hash": config_hash(cfg),
        "config": to_dict(cfg),
        "clips": [{"clip_id": p.clip_id, **asdict(p), "speaker": p.speaker_id} for p in plans],
    }
    partial = out / f"{CORPUS_FILE}.partial"
    partial.write_text(json.dumps(meta, indent=1))
    partial.replace(out / CORPUS_FILE)


def scan_synthetic(root: str | Path) -> ScanResult:
    """Manifest rows of a generated corpus; any other file is reported as a problem."""
    root = Path(root)
    if not root.is_dir():
        raise AvserError(
            f"synthetic corpus folder {root} does not exist; "
            "make one with avser.data.synthetic.generate_corpus(out_dir, n_clips)"
        )
    meta_path = root / CORPUS_FILE
    meta = _read_meta(meta_path) if meta_path.is_file() else {}
    emotions = list(meta.get("emotions", EMOTIONS))
    details = {c["clip_id"]: c for c in meta.get("clips", [])}
    entries = sorted(p for p in root.iterdir() if p != meta_path)
    stems = {p.stem for p in entries if p.suffix == ".mp4"}
    clips, problems = [], []
    for path in entries:
        match = CLIP_NAME.match(path.stem)
        if not path.is_file() or path.suffix not in (".mp4", ".csv") or match is None:
            problems.append(ScanProblem(str(path), NOT_A_CLIP))
        elif match["emotion"] not in emotions:
            reason = f"unknown emotion {match['emotion']!r}; expected one of {emotions}"
            problems.append(ScanProblem(str(path), reason))
        elif path.suffix == ".csv" and path.stem not in stems:
            reason = "landmarks without a video; generate the corpus again"
            problems.append(ScanProblem(str(path), reason))
        elif path.suffix == ".mp4":
            detail = details.get(path.stem, {})
            clips.append(_scanned_clip(root, path, match, emotions, detail))
    if not meta_path.is_file():
        reason = "missing; the default emotion list is assumed"
        problems.append(ScanProblem(str(meta_path), reason))
    return ScanResult(clips=clips, problems=problems, labels=emotions)


def _scanned_clip(
    root: Path, path: Path, match: re.Match, emotions: list[str], detail: dict
) -> Clip:
    csv = root / f"{path.stem}.csv"
    return Clip(
        clip_id=path.stem,
        corpus=CORPUS,
        speaker=match["speaker"],
        label=emotions.index(match["emotion"]),
        label_name=match["emotion"],
        audio_path=str(path),
        video_path=str(path),
        landmarks_path=str(csv) if csv.is_file() else None,
        extra={key: detail[key] for key in EXTRA_FIELDS if key in detail},
    )
