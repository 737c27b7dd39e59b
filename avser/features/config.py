"""Typed configuration of per-clip feature extraction."""

from __future__ import annotations

from dataclasses import dataclass, field

from avser.errors import BackendUnavailableError

LANDMARK_BACKENDS = ("dlib", "openface-csv", "openface")


@dataclass
class AudioConfig:
    sample_rate: int = 16000
    n_mels: int = 128
    n_fft: int = 1024
    win_length_ms: float = 25.0
    hop_length_ms: float = 10.0
    fmin: float = 20.0
    fmax: float | None = None
    # log-mel = 10*log10(max(power, power_floor)), clipped to top_db below the clip's peak.
    power_floor: float = 1e-10
    top_db: float | None = 80.0
    delta_width: int = 9
    # Utterances longer than this are cut (keeps the store compact); shorter are kept as is.
    max_seconds: float = 8.0
    # Shorter audio is an error (too_short), not features: 25 ms makes 3 log-mel
    # frames, which the RACNN input would stretch to 224 columns.
    min_seconds: float = 0.5
    # RMS below this (full scale 1.0) counts as silence.
    silence_rms: float = 1e-4


@dataclass
class RacnnInputConfig:
    """The RACNN input transform: D overlapping segments, each resized to size x size.

    Neighbouring segments share ``overlap`` of their length; their length is
    chosen so the ``segments`` together cover the whole utterance.
    """

    segments: int = 9
    size: int = 224
    overlap: float = 0.5
    # Floor of the per-utterance standard deviation (a constant utterance -> zeros).
    min_std: float = 1e-5
    # Trim leading and trailing silence: the segments cover the first to the
    # last frame whose energy is within trim_db of the clip's loudest, widened
    # by trim_pad_frames each side. None covers the whole clip (Table I's input).
    trim_db: float | None = None
    trim_pad_frames: int = 5
    # Also subtract each mel bin's own mean over the clip (cepstral mean
    # normalisation, on log-mels): removes the clip's long-term spectrum,
    # which the speaker's vocal tract and the channel set. False: one mean
    # per channel (the paper's input).
    bin_mean: bool = False


@dataclass
class VideoConfig:
    frame_stride: int = 1
    max_side: int | None = 640
    max_frames: int | None = None
    min_frames: int = 3


@dataclass
class LandmarkConfig:
    backend: str = "dlib"  # dlib | openface-csv | openface
    # dlib: detect faces on a frame downscaled to this width (None: full size),
    # re-detect every N frames; in between, follow the face from its landmarks.
    detect_width: int | None = 320
    redetect_every: int = 10
    upsample: int = 0
    # dlib: False detects on every frame (slow; the benchmark's baseline).
    track: bool = True
    # dlib: a followed face is checked by re-running the detector on a crop
    # around it, resized so the face is this many pixels wide (its window is 80).
    verify_face_px: int = 80
    openface_binary: str = "FeatureExtraction"
    openface_timeout_s: float = 600.0
    # A frame counts as found at or above this confidence; for dlib the
    # confidence is sigmoid(detector score), so 0.5 is the detector's own threshold.
    min_confidence: float = 0.5

    def __post_init__(self) -> None:
        if self.backend not in LANDMARK_BACKENDS:
            # The error make_landmark_backend gave when this was checked only there.
            raise BackendUnavailableError(
                f"landmarks.backend={self.backend!r} is an unknown landmark backend; choose one "
                f"of {', '.join(LANDMARK_BACKENDS)}")


@dataclass
class KeyframeConfig:
    k: int = 9
    gamma: float | None = None  # RBF width; None -> 1 / median squared distance
    max_iter: int = 50
    seed: int = 0
    # k-means runs from different seeded starts; the tightest clustering wins.
    restarts: int = 4


@dataclass
class FaceConfig:
    size: int = 224
    # Fraction of the inter-ocular distance kept around the face.
    margin: float = 0.6
    jpeg_quality: int = 90


@dataclass
class FeatureConfig:
    audio: AudioConfig = field(default_factory=AudioConfig)
    racnn_input: RacnnInputConfig = field(default_factory=RacnnInputConfig)
    video: VideoConfig = field(default_factory=VideoConfig)
    landmarks: LandmarkConfig = field(default_factory=LandmarkConfig)
    keyframes: KeyframeConfig = field(default_factory=KeyframeConfig)
    faces: FaceConfig = field(default_factory=FaceConfig)
