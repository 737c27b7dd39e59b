"""The synthetic corpus's face: 68 iBUG landmarks that express the emotion.

A parametric face in "face units" (half the jaw width = 1; origin between
the eyes; x to the image right, y down, z toward the camera) is built from
the speaker's proportions, deformed by seven action-unit-like expression
parameters that follow an onset-apex-offset course, opened by speech
articulation and blinks, turned by a wandering head pose, and projected into
the frame. The projected points are the ground-truth landmarks; the drawing
(:mod:`avser.data.synthetic.drawing`) is made from exactly those points.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter1d

from avser.data.synthetic.look import FaceLook

EXPRESSION_KEYS = (
    "brow_raise",  # whole brows up (+) or down (-)
    "brow_inner",  # inner brow corners up (+, sad/fearful) or down and together (-, angry)
    "eye_open",  # eyes widened (+) or narrowed (-)
    "mouth_corner",  # lip corners up (+, smile) or down (-)
    "mouth_open",  # lips parted (+) or pressed (-)
    "mouth_width",  # lips stretched (+) or rounded (-)
    "jaw_drop",  # jaw lowered
)


def _default_expressions() -> dict[str, dict[str, float]]:
    rows = {
        #             brow  inner  eye  corner open width  jaw
        "neutral": (0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        "happy": (0.1, 0.0, -0.35, 1.0, 0.25, 0.6, 0.1),
        "sad": (-0.2, 0.9, -0.35, -0.8, 0.0, -0.1, 0.0),
        "angry": (-0.8, -1.0, 0.25, -0.4, -0.3, -0.3, 0.0),
        "fearful": (0.7, 0.8, 0.8, -0.3, 0.4, 0.6, 0.2),
        "surprised": (1.0, 0.3, 0.9, 0.0, 0.9, -0.3, 0.7),
    }
    return {name: dict(zip(EXPRESSION_KEYS, values)) for name, values in rows.items()}


def _uniform_dict(value: float) -> dict[str, float]:
    return {key: value for key in EXPRESSION_KEYS}


@dataclass
class FaceSynthConfig:
    expressions: dict[str, dict[str, float]] = field(default_factory=_default_expressions)
    expression_noise: dict[str, float] = field(default_factory=lambda: _uniform_dict(0.25))
    speaker_expression_sd: dict[str, float] = field(default_factory=lambda: _uniform_dict(0.15))
    # Identity ranges, in face units unless said otherwise.
    face_size: tuple[float, float] = (0.2, 0.24)  # one face unit, as a fraction of frame height
    eye_line: float = 0.4  # eye height in the frame, fraction of frame height
    face_length: tuple[float, float] = (1.5, 1.75)  # eye line to chin
    jaw_roundness: tuple[float, float] = (2.0, 2.8)  # superellipse exponent; larger = squarer
    forehead: tuple[float, float] = (0.95, 1.1)  # eye line to top of the head
    eye_spacing: tuple[float, float] = (0.40, 0.47)
    eye_half_width: tuple[float, float] = (0.16, 0.2)
    eye_half_height: tuple[float, float] = (0.065, 0.085)
    brow_height: tuple[float, float] = (0.17, 0.24)
    brow_arch: tuple[float, float] = (0.07, 0.12)
    brow_thickness: tuple[float, float] = (0.045, 0.075)
    nose_length: tuple[float, float] = (0.45, 0.56)
    nostril_half_width: tuple[float, float] = (0.15, 0.21)
    mouth_line: tuple[float, float] = (0.88, 0.98)
    mouth_half_width: tuple[float, float] = (0.32, 0.42)
    upper_lip: tuple[float, float] = (0.05, 0.08)
    lower_lip: tuple[float, float] = (0.07, 0.11)
    # Expression gains: face units moved per unit of expression parameter.
    brow_raise_gain: float = 0.10
    brow_inner_gain: float = 0.08
    brow_furrow_gain: float = 0.06
    eye_open_gain: float = 0.7
    lower_lid_gain: float = 0.35
    min_eye_open: float = 0.08
    corner_gain: float = 0.12
    mouth_open_gain: float = 0.25
    lip_press_gain: float = 0.4
    mouth_width_gain: float = 0.15
    jaw_drop_gain: float = 0.25
    jaw_follows_mouth: float = 0.6
    articulation_open: float = 0.10  # lip gap at a syllable's peak
    # Expression time course (onset, rise to apex, partial offset near the end).
    onset_s: tuple[float, float] = (0.0, 0.6)
    rise_s: tuple[float, float] = (0.25, 0.8)
    offset_at: tuple[float, float] = (0.65, 0.95)  # fraction of the clip
    offset_depth: tuple[float, float] = (0.0, 0.5)
    blink_rate_hz: float = 0.3
    blink_s: float = 0.15
    # Head pose: a fixed offset per clip plus a slow wander, both Gaussian.
    yaw_sd_deg: float = 7.0
    pitch_sd_deg: float = 4.0
    roll_sd_deg: float = 4.0
    shift_sd: float = 0.04  # fraction of the frame size
    scale_sd: float = 0.04  # relative
    pose_wander: float = 0.5  # wander sd relative to the offset sd
    pose_smooth_s: float = 0.5
    pose_limit_sd: float = 2.0  # pose is clipped at this many sds, keeping the face in frame
    look: FaceLook = field(default_factory=lambda: FaceLook())


@dataclass
class FaceIdentity:
    """The proportions of one synthetic speaker's face (face units), and its colours."""

    size: float
    face_length: float
    jaw_roundness: float
    forehead: float
    eye_spacing: float
    eye_half_width: float
    eye_half_height: float
    brow_height: float
    brow_arch: float
    brow_thickness: float
    nose_length: float
    nostril_half_width: float
    mouth_line: float
    mouth_half_width: float
    upper_lip: float
    lower_lip: float
    palette: dict[str, tuple[int, int, int]]


_IDENTITY_RANGES = (
    "face_size", "face_length", "jaw_roundness", "forehead", "eye_spacing", "eye_half_width",
    "eye_half_height", "brow_height", "brow_arch", "brow_thickness", "nose_length",
    "nostril_half_width", "mouth_line", "mouth_half_width", "upper_lip", "lower_lip",
)


def sample_face_identity(cfg: FaceSynthConfig, rng: np.random.Generator) -> FaceIdentity:
    values = {name: float(rng.uniform(*getattr(cfg, name))) for name in _IDENTITY_RANGES}
    values["size"] = values.pop("face_size")
    return FaceIdentity(**values, palette=cfg.look.sample_palette(rng))


# Fixed shape of the template (face units), shared by every identity.
JAW_TOP = 0.02  # jaw points 0 and 16 sit just below the eye line
JAW_DEPTH = 0.7  # how far the jaw's sides recede from the chin
BROW_OUTER_REACH = 0.37  # brow's outer end beyond the eye centre
BROW_INNER_REACH = 0.25  # brow's inner end inside the eye centre
BROW_INNER_LIFT = 0.04
BROW_DEPTH = 0.25
EYE_LID_X = 0.4  # lid landmarks at this fraction of the eye half width
LOWER_LID_RATIO = 0.7
EYE_DEPTH = 0.15
NOSE_TIP_DEPTH = 0.55
NOSE_ROOT_DEPTH = 0.2
NOSTRIL_DROP = (0.11, 0.15, 0.18, 0.15, 0.11)
NOSTRIL_X = (-1.0, -0.5, 0.0, 0.5, 1.0)
NOSTRIL_DEPTH = 0.4
MOUTH_OUTER_UPPER_U = (-1.0, -0.62, -0.27, 0.0, 0.27, 0.62, 1.0)
MOUTH_OUTER_LOWER_U = (0.62, 0.27, 0.0, -0.27, -0.62)
MOUTH_INNER_UPPER_U = (-0.85, -0.3, 0.0, 0.3, 0.85)
MOUTH_INNER_LOWER_U = (0.3, 0.0, -0.3)
INNER_CORNER_U = 0.85
CUPID_DIP = 0.3  # fraction of the upper lip dipped at the philtrum
CUPID_WIDTH = 0.15  # of the mouth half width
MOUTH_DEPTH = 0.35
MOUTH_CURVE_DEPTH = 0.15
HEAD_PIVOT = (0.0, 0.6, -0.6)  # rotation centre, inside the head
OUTLINE_POINTS = 15
LANDMARK_DECIMALS = 3


def _jaw(ident: FaceIdentity, drop: np.ndarray) -> np.ndarray:
    theta = np.pi - np.arange(17) * np.pi / 16
    cos, sin = np.cos(theta), np.sin(theta)
    power = 2 / ident.jaw_roundness
    x = np.sign(cos) * np.abs(cos) ** power
    y = JAW_TOP + ident.face_length * np.abs(sin) ** power + drop[:, None] * sin**2
    z = JAW_DEPTH * (np.abs(sin) ** power - 1)
    return _stack(x, y, z, drop.size)


def _brows(
    ident: FaceIdentity, cfg: FaceSynthConfig, raise_: np.ndarray, inner: np.ndarray
) -> np.ndarray:
    u = np.linspace(0, 1, 5)  # outer -> inner end
    reach = ident.eye_spacing + BROW_OUTER_REACH - (BROW_OUTER_REACH + BROW_INNER_REACH) * u
    furrow = np.maximum(-inner, 0)[:, None]
    x = reach - cfg.brow_furrow_gain * furrow * u**2
    y = (
        -(ident.brow_height + ident.brow_arch * np.sin(np.pi * u) + BROW_INNER_LIFT * u)
        - cfg.brow_raise_gain * raise_[:, None]
        - cfg.brow_inner_gain * inner[:, None] * u**2
    )
    right = _stack(-x, y, BROW_DEPTH, raise_.size)  # 17-21, outer to inner
    left = _stack(x[:, ::-1], y[:, ::-1], BROW_DEPTH, raise_.size)  # 22-26, inner to outer
    return np.concatenate([right, left], axis=1)


def _eyes(
    ident: FaceIdentity, cfg: FaceSynthConfig, eye_open: np.ndarray, blink: np.ndarray
) -> np.ndarray:
    upper = np.maximum(1 + cfg.eye_open_gain * eye_open, cfg.min_eye_open) * (1 - blink)
    lower = np.maximum(1 + cfg.lower_lid_gain * eye_open, cfg.min_eye_open)
    # Image order for both eyes: left corner, upper lid x2, right corner, lower lid x2.
    dx = np.array([-1, -EYE_LID_X, EYE_LID_X, 1, EYE_LID_X, -EYE_LID_X]) * ident.eye_half_width
    up = -ident.eye_half_height * upper[:, None]
    low = ident.eye_half_height * LOWER_LID_RATIO * lower[:, None]
    zero = np.zeros_like(up)
    dy = np.concatenate([zero, up, up, zero, low, low], axis=1)
    eyes = [_stack(side * ident.eye_spacing + dx, dy, EYE_DEPTH, eye_open.size) for side in (-1, 1)]
    return np.concatenate(eyes, axis=1)  # 36-41 right eye, 42-47 left eye


def _nose(ident: FaceIdentity, n_frames: int) -> np.ndarray:
    t = np.linspace(0, 1, 4)
    depth = NOSE_ROOT_DEPTH + (NOSE_TIP_DEPTH - NOSE_ROOT_DEPTH) * t
    bridge = _stack(np.zeros(4), t * ident.nose_length, depth, n_frames)
    x = np.array(NOSTRIL_X) * ident.nostril_half_width
    nostrils = _stack(x, ident.nose_length + np.array(NOSTRIL_DROP), NOSTRIL_DEPTH, n_frames)
    return np.concatenate([bridge, nostrils], axis=1)


def _mouth(
    ident: FaceIdentity, cfg: FaceSynthConfig, expr: dict[str, np.ndarray], gap: np.ndarray
) -> np.ndarray:
    """Outer lips 48-59 and inner lips 60-67; ``gap`` is the lip opening per frame."""
    half_width = ident.mouth_half_width * (1 + cfg.mouth_width_gain * expr["mouth_width"])[:, None]
    lift = cfg.corner_gain * expr["mouth_corner"][:, None]
    press = np.maximum(1 + cfg.lip_press_gain * np.minimum(expr["mouth_open"], 0), 0)[:, None]

    def part(us: tuple[float, ...], side: int, lip: float) -> np.ndarray:
        u = np.array(us)
        opening = np.sqrt(np.clip(1 - (u / INNER_CORNER_U) ** 2, 0, None))
        y = ident.mouth_line - lift * u**2 + side * gap[:, None] / 2 * opening
        thickness = lip * press * np.sqrt(np.clip(1 - u**2, 0, None))
        if side < 0 and lip > 0:
            thickness = thickness * (1 - CUPID_DIP * np.exp(-((u / CUPID_WIDTH) ** 2)))
        z = MOUTH_DEPTH - MOUTH_CURVE_DEPTH * u**2
        return _stack(u * half_width, y + side * thickness, z, gap.size)

    return np.concatenate(
        [
            part(MOUTH_OUTER_UPPER_U, -1, ident.upper_lip),  # 48-54
            part(MOUTH_OUTER_LOWER_U, 1, ident.lower_lip),  # 55-59
            part(MOUTH_INNER_UPPER_U, -1, 0.0),  # 60-64
            part(MOUTH_INNER_LOWER_U, 1, 0.0),  # 65-67
        ],
        axis=1,
    )


def _stack(x, y, z, n_frames: int) -> np.ndarray:
    """(T, N, 3) from coordinates given per point, or per frame and point."""
    x, y, z = np.broadcast_arrays(*(np.atleast_2d(np.asarray(v, dtype=float)) for v in (x, y, z)))
    return np.broadcast_to(np.stack([x, y, z], axis=-1), (n_frames, x.shape[1], 3))


def face_shape(
    ident: FaceIdentity, cfg: FaceSynthConfig, expr: dict[str, np.ndarray],
    articulation: np.ndarray, blink: np.ndarray,
) -> np.ndarray:
    """(T, 68, 3) landmarks in face units for per-frame expression values."""
    expression_gap = cfg.mouth_open_gain * np.maximum(expr["mouth_open"], 0)
    gap = expression_gap + cfg.articulation_open * articulation
    drop = cfg.jaw_drop_gain * np.maximum(expr["jaw_drop"], 0) + cfg.jaw_follows_mouth * gap
    return np.concatenate(
        [
            _jaw(ident, drop),
            _brows(ident, cfg, expr["brow_raise"], expr["brow_inner"]),
            _nose(ident, gap.size),
            _eyes(ident, cfg, expr["eye_open"], blink),
            _mouth(ident, cfg, expr, gap),
        ],
        axis=1,
    )


# ---------------------------------------------------------------- motion


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0, 1)
    return x * x * (3 - 2 * x)


def expression_course(
    apex: dict[str, float], n_frames: int, fps: float, cfg: FaceSynthConfig,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Per-frame expression: rises from neutral to the apex, then partly relaxes near the end."""
    t = np.arange(n_frames) / fps
    duration = n_frames / fps
    onset, rise = rng.uniform(*cfg.onset_s), rng.uniform(*cfg.rise_s)
    offset_at, depth = rng.uniform(*cfg.offset_at) * duration, rng.uniform(*cfg.offset_depth)
    course = _smoothstep((t - onset) / rise) * (1 - depth * _smoothstep((t - offset_at) / rise))
    return {key: apex[key] * course for key in EXPRESSION_KEYS}


def blinks(n_frames: int, fps: float, cfg: FaceSynthConfig, rng: np.random.Generator) -> np.ndarray:
    """Eyelid closure per frame, 0..1 (a triangular closure per blink)."""
    t = np.arange(n_frames) / fps
    closure = np.zeros(n_frames)
    for centre in rng.uniform(0, n_frames / fps, rng.poisson(cfg.blink_rate_hz * n_frames / fps)):
        closure = np.maximum(closure, 1 - np.abs(t - centre) / (cfg.blink_s / 2))
    return np.clip(closure, 0, 1)


def _wander(n_frames: int, smooth_frames: float, rng: np.random.Generator) -> np.ndarray:
    """A slow random signal with unit standard deviation."""
    signal = gaussian_filter1d(rng.normal(size=n_frames), smooth_frames, mode="reflect")
    return signal / max(np.std(signal), 1e-9)


def head_pose(
    n_frames: int, fps: float, cfg: FaceSynthConfig, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """Yaw/pitch/roll (radians), shift (frame fraction) and scale per frame."""
    sds = {
        "yaw": np.radians(cfg.yaw_sd_deg),
        "pitch": np.radians(cfg.pitch_sd_deg),
        "roll": np.radians(cfg.roll_sd_deg),
        "dx": cfg.shift_sd,
        "dy": cfg.shift_sd,
        "scale": cfg.scale_sd,
    }
    smooth, limit = cfg.pose_smooth_s * fps, cfg.pose_limit_sd
    pose = {}
    for name, sd in sds.items():
        course = rng.normal() + cfg.pose_wander * _wander(n_frames, smooth, rng)
        pose[name] = sd * np.clip(course, -limit, limit)
    pose["scale"] = 1 + pose["scale"]
    return pose


def _rotations(pose: dict[str, np.ndarray]) -> np.ndarray:
    """(T, 3, 3) rotation: roll about z, after pitch about x, after yaw about y."""
    cy, sy = np.cos(pose["yaw"]), np.sin(pose["yaw"])
    cp, sp = np.cos(pose["pitch"]), np.sin(pose["pitch"])
    cr, sr = np.cos(pose["roll"]), np.sin(pose["roll"])
    one, zero = np.ones_like(cy), np.zeros_like(cy)
    yaw = _matrix((cy, zero, sy), (zero, one, zero), (-sy, zero, cy))
    pitch = _matrix((one, zero, zero), (zero, cp, -sp), (zero, sp, cp))
    roll = _matrix((cr, -sr, zero), (sr, cr, zero), (zero, zero, one))
    return roll @ pitch @ yaw


def _matrix(*rows: tuple[np.ndarray, ...]) -> np.ndarray:
    """(T, 3, 3) from three rows of three per-frame entries."""
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=-2)


def project(
    points: np.ndarray, pose: dict[str, np.ndarray], unit_px: np.ndarray, centre: np.ndarray
) -> np.ndarray:
    """(T, N, 3) face units -> (T, N, 2) pixels (orthographic camera)."""
    pivot = np.array(HEAD_PIVOT)
    turned = np.einsum("tij,tnj->tni", _rotations(pose), points - pivot) + pivot
    return centre[:, None, :] + unit_px[:, None, None] * turned[..., :2]


def _outline(ident: FaceIdentity, look: FaceLook, n_frames: int) -> dict[str, np.ndarray]:
    """Drawing-only points (face units): top of the head, hair, ears, neck, shoulders."""
    phi = np.linspace(0, np.pi, OUTLINE_POINTS)
    forehead_y = JAW_TOP - ident.forehead * np.sin(phi)
    forehead = _stack(np.cos(phi), forehead_y, JAW_DEPTH * (np.sin(phi) - 1), n_frames)
    arc = np.linspace(-look.hair_wrap, np.pi + look.hair_wrap, OUTLINE_POINTS)
    hair_y = JAW_TOP - ident.forehead * look.hair_height * np.sin(arc)
    return {
        "forehead": forehead,
        "hair": _stack(look.hair_spread * np.cos(arc), hair_y, -JAW_DEPTH, n_frames),
        "ears": _stack(np.array(look.ear_x), look.ear_y, -JAW_DEPTH, n_frames),
        "neck": _stack(np.array(look.neck_x), np.array(look.neck_y), -JAW_DEPTH, n_frames),
        "shoulders": _stack(
            np.array(look.shoulder_x), np.array(look.shoulder_y), -JAW_DEPTH, n_frames
        ),
    }


@dataclass
class FaceTrack:
    landmarks: np.ndarray  # (T, 68, 2) pixels, the ground truth written to the CSV
    outline: dict[str, np.ndarray]  # drawing-only points, (T, M, 2) pixels
    unit_px: np.ndarray  # (T,) pixels per face unit


def face_track(
    ident: FaceIdentity, apex: dict[str, float], articulation: np.ndarray, cfg: FaceSynthConfig,
    fps: float, frame_size: tuple[int, int], rng: np.random.Generator,
) -> FaceTrack:
    """Landmarks of every frame; ``articulation`` (0..1 per frame) opens the lips with speech."""
    width, height = frame_size
    n_frames = articulation.size
    expr = expression_course(apex, n_frames, fps, cfg, rng)
    shape = face_shape(ident, cfg, expr, articulation, blinks(n_frames, fps, cfg, rng))
    pose = head_pose(n_frames, fps, cfg, rng)
    unit_px = ident.size * height * pose["scale"]
    centre = np.stack([width * (0.5 + pose["dx"]), height * (cfg.eye_line + pose["dy"])], axis=-1)
    # Rounded as written to the CSV, so the drawing and the CSV agree exactly.
    landmarks = np.round(project(shape, pose, unit_px, centre), LANDMARK_DECIMALS)
    outline = {
        name: project(points, pose, unit_px, centre)
        for name, points in _outline(ident, cfg.look, n_frames).items()
    }
    return FaceTrack(landmarks=landmarks, outline=outline, unit_px=unit_px)
