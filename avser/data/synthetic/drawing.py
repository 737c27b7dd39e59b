"""Drawing the synthetic corpus's face: colours, a plain wall, and each frame
drawn from the 68 landmarks and outline points of :mod:`avser.data.synthetic.face`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import cv2
import numpy as np

from avser.data.synthetic.look import BGR, FaceLook

if TYPE_CHECKING:
    from avser.data.synthetic.face import FaceIdentity, FaceTrack


SUBPIXEL_BITS = 4  # OpenCV draws at 1/16 pixel precision


def _px(points: np.ndarray) -> np.ndarray:
    return np.round(np.asarray(points) * (1 << SUBPIXEL_BITS)).astype(np.int32)


def _shade(colour: BGR, factor: float) -> BGR:
    return tuple(int(c * factor) for c in colour)


def _fill(img: np.ndarray, points: np.ndarray, colour: BGR) -> None:
    cv2.fillPoly(img, [_px(points)], colour, cv2.LINE_AA, SUBPIXEL_BITS)


def _line(img: np.ndarray, points: np.ndarray, colour: BGR, thickness: int) -> None:
    cv2.polylines(img, [_px(points)], False, colour, thickness, cv2.LINE_AA, SUBPIXEL_BITS)


def _disc(img: np.ndarray, centre: np.ndarray, radius: float, colour: BGR) -> None:
    scale = 1 << SUBPIXEL_BITS
    cv2.circle(img, tuple(_px(centre)), int(radius * scale), colour, -1, cv2.LINE_AA, SUBPIXEL_BITS)


def _oval(img: np.ndarray, centre: np.ndarray, axes: tuple[float, float], colour: BGR) -> None:
    size = tuple(max(int(a), 1) for a in axes)
    cv2.ellipse(img, tuple(int(v) for v in centre), size, 0, 0, 360, colour, -1, cv2.LINE_AA)


def background(frame_size: tuple[int, int], look: FaceLook, rng: np.random.Generator) -> np.ndarray:
    """A plain wall: one colour, a soft gradient and a faint texture (BGR uint8)."""
    width, height = frame_size
    base = rng.integers(*look.background_range) + rng.normal(0, look.background_tint_sd, 3)
    across = np.linspace(-0.5, 0.5, width)[None, :, None]
    ramp = across * rng.normal(0, look.background_gradient, 3)
    grain = rng.normal(0, look.background_texture_sd, (height, width, 3)).astype(np.float32)
    # Blurring shrinks the grain's spread; the factor restores roughly the asked-for sd.
    smooth = look.background_texture_smooth_px
    texture = cv2.GaussianBlur(grain, (0, 0), smooth) * smooth
    return np.clip(base + ramp + texture, 0, 255).astype(np.uint8)


def _draw_eye(img: np.ndarray, eye: np.ndarray, palette: dict[str, BGR], look: FaceLook) -> None:
    _fill(img, eye, look.eye_white_bgr)
    x0, y0 = np.maximum(np.floor(eye.min(axis=0)).astype(int) - 1, 0)
    x1, y1 = np.ceil(eye.max(axis=0)).astype(int) + 2
    roi = img[y0:y1, x0:x1]
    if roi.size:  # the iris shows only inside the lids
        mask = np.zeros(roi.shape[:2], np.uint8)
        _fill(mask, eye - (x0, y0), 255)
        iris = roi.copy()
        centre = (eye[0] + eye[3]) / 2 - (x0, y0)
        radius = look.iris_ratio * np.linalg.norm(eye[3] - eye[0]) / 2
        _disc(iris, centre, radius, palette["iris"])
        _disc(iris, centre, radius * look.pupil_ratio, look.lid_bgr)
        roi[mask > 0] = iris[mask > 0]
    _line(img, eye[[0, 1, 2, 3]], look.lid_bgr, look.lid_thickness_px)
    lower_lid = _shade(palette["skin"], look.contour_shade)
    _line(img, eye[[3, 4, 5, 0]], lower_lid, look.line_thickness_px)


def _draw_brow(
    img: np.ndarray, brow: np.ndarray, thickness_px: float, taper: np.ndarray, colour: BGR
) -> None:
    half = (thickness_px * taper / 2)[:, None] * (0, 1)
    _fill(img, np.concatenate([brow - half, (brow + half)[::-1]]), colour)


def _draw_mouth(img: np.ndarray, lm: np.ndarray, palette: dict[str, BGR], look: FaceLook) -> None:
    _fill(img, lm[48:60], palette["lips"])
    upper = lm[[60, 61, 62, 63, 64]]
    lower = lm[[60, 67, 66, 65, 64]]
    if np.max(lower[:, 1] - upper[:, 1]) > look.min_gap_px:
        _fill(img, lm[60:68], look.mouth_bgr)
        teeth_edge = upper + look.teeth_fraction * (lower - upper)
        _fill(img, np.concatenate([upper, teeth_edge[::-1]]), look.teeth_bgr)
    lip_line = _shade(palette["lips"], look.contour_shade)
    _line(img, lm[[48, 60, 61, 62, 63, 64, 54]], lip_line, look.line_thickness_px)


def draw_face(
    img: np.ndarray, lm: np.ndarray, outline: dict[str, np.ndarray], unit_px: float,
    ident: FaceIdentity, look: FaceLook,
) -> None:
    """Draw one frame's face (in place) from its 68 landmarks and outline points."""
    pal = ident.palette
    _fill(img, outline["shoulders"], pal["clothing"])
    _fill(img, outline["neck"], _shade(pal["skin"], look.neck_shade))
    _fill(img, outline["hair"], pal["hair"])
    for ear in outline["ears"]:
        _oval(img, ear, np.array(look.ear_axes) * unit_px, _shade(pal["skin"], look.ear_shade))
    _fill(img, np.concatenate([lm[0:17], outline["forehead"]]), pal["skin"])
    _line(img, lm[0:17], _shade(pal["skin"], look.contour_shade), look.line_thickness_px)
    taper = np.array(look.brow_taper)
    _draw_brow(img, lm[17:22], ident.brow_thickness * unit_px, taper, pal["brow"])
    _draw_brow(img, lm[22:27], ident.brow_thickness * unit_px, taper[::-1], pal["brow"])
    _line(img, lm[28:31], _shade(pal["skin"], look.nose_shade), look.line_thickness_px)
    _line(img, lm[31:36], _shade(pal["skin"], look.nose_shade), look.line_thickness_px)
    nostril = look.nostril_size * unit_px
    for centre in lm[[32, 34]]:
        _oval(img, centre, (nostril, nostril / 2 + 1), _shade(pal["skin"], look.nostril_shade))
    _draw_eye(img, lm[36:42], pal, look)
    _draw_eye(img, lm[42:48], pal, look)
    _draw_mouth(img, lm, pal, look)


def render_frames(
    track: FaceTrack, ident: FaceIdentity, look: FaceLook, frame_size: tuple[int, int],
    rng: np.random.Generator,
) -> Iterator[np.ndarray]:
    """Yield the clip's frames (BGR uint8): background, face, sensor noise."""
    width, height = frame_size
    wall = background(frame_size, look, rng)
    # Fresh noise per frame costs more than the drawing; a few pre-drawn images look the same.
    noise_shape = (look.noise_bank, height, width, 3)
    noise = rng.normal(0, look.sensor_noise_sd, noise_shape).astype(np.int16)
    for t in range(track.landmarks.shape[0]):
        img = wall.copy()
        outline = {name: points[t] for name, points in track.outline.items()}
        draw_face(img, track.landmarks[t], outline, float(track.unit_px[t]), ident, look)
        noisy = img.astype(np.int16) + noise[rng.integers(look.noise_bank)]
        yield np.clip(noisy, 0, 255).astype(np.uint8)
