"""How the synthetic face looks: colours and drawing-only shapes. A base
module: the face geometry (:mod:`.face`) and the drawing (:mod:`.drawing`)
both read it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BGR = tuple[int, int, int]


@dataclass
class FaceLook:
    """Colours and drawing-only shapes (face units) of the rendered face."""

    skin_dark_bgr: BGR = (70, 100, 150)
    skin_light_bgr: BGR = (185, 205, 235)
    skin_jitter: float = 10.0
    # black, brown, dark brown, blond, grey, red
    hair_bgr: tuple[BGR, ...] = (
        (25, 25, 30), (30, 50, 90), (20, 35, 60), (90, 160, 200), (140, 140, 145), (30, 60, 150),
    )
    # brown, blue, green, dark
    iris_bgr: tuple[BGR, ...] = ((30, 60, 100), (150, 110, 60), (70, 120, 70), (35, 35, 45))
    lip_bgr: BGR = (90, 80, 180)
    lip_mix: float = 0.45  # lips = skin blended toward lip_bgr
    clothing_range: tuple[int, int] = (30, 220)
    background_range: tuple[int, int] = (60, 200)  # grey level
    background_tint_sd: float = 20.0
    background_gradient: float = 30.0
    background_texture_sd: float = 10.0
    background_texture_smooth_px: float = 3.0
    sensor_noise_sd: float = 4.0
    noise_bank: int = 4  # pre-drawn noise images cycled over the frames
    eye_white_bgr: BGR = (225, 230, 235)
    mouth_bgr: BGR = (40, 30, 80)
    teeth_bgr: BGR = (215, 225, 230)
    teeth_fraction: float = 0.35  # of the lip gap
    min_gap_px: float = 1.0
    iris_ratio: float = 0.6  # of the eye half width
    pupil_ratio: float = 0.45  # of the iris radius
    lid_bgr: BGR = (30, 30, 40)
    brow_shade: float = 0.85  # brows are the hair colour, darker
    brow_taper: tuple[float, ...] = (0.5, 0.85, 1.0, 1.0, 0.9)  # outer -> inner
    contour_shade: float = 0.8
    nose_shade: float = 0.78
    nostril_shade: float = 0.55
    nostril_size: float = 0.035
    neck_shade: float = 0.85
    ear_shade: float = 0.92
    ear_axes: tuple[float, float] = (0.1, 0.2)
    ear_x: tuple[float, float] = (-1.02, 1.02)
    ear_y: float = 0.35
    hair_spread: float = 1.15
    hair_height: float = 1.2
    hair_wrap: float = 0.35  # radians the hair reaches below the horizontal, each side
    neck_x: tuple[float, ...] = (-0.45, 0.45, 0.55, -0.55)
    neck_y: tuple[float, ...] = (1.0, 1.0, 2.6, 2.6)
    shoulder_x: tuple[float, ...] = (-0.7, 0.7, 2.6, 2.6, -2.6, -2.6)
    shoulder_y: tuple[float, ...] = (2.2, 2.2, 2.8, 4.0, 4.0, 2.8)
    lid_thickness_px: int = 2
    line_thickness_px: int = 1

    def sample_palette(self, rng: np.random.Generator) -> dict[str, BGR]:
        tone = rng.uniform()
        skin = (1 - tone) * np.array(self.skin_dark_bgr) + tone * np.array(self.skin_light_bgr)
        skin = np.clip(skin + rng.normal(0, self.skin_jitter, 3), 0, 255)
        hair = np.array(self.hair_bgr[rng.integers(len(self.hair_bgr))])
        lips = (1 - self.lip_mix) * skin + self.lip_mix * np.array(self.lip_bgr)
        colours = {
            "skin": skin, "hair": hair, "brow": hair * self.brow_shade, "lips": lips,
            "iris": np.array(self.iris_bgr[rng.integers(len(self.iris_bgr))]),
            "clothing": rng.integers(*self.clothing_range, size=3),
        }
        return {name: tuple(int(c) for c in colour) for name, colour in colours.items()}
