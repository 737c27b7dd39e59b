"""Speech augmentation inside the RACNN input transform (avser.features.augment)."""

from __future__ import annotations

import pytest
import torch

from avser.errors import ConfigError
from avser.features.augment import (SpeechAugmentConfig, apply_masks, mel_source_rows, mixup,
                                    time_window)
from avser.features.config import RacnnInputConfig
from avser.features.racnn_input import racnn_input

CFG = RacnnInputConfig(size=32)
LENGTHS = [37, 120, 311]


def clips(lengths=LENGTHS, n_mels: int = 40) -> list[torch.Tensor]:
    torch.manual_seed(0)
    return [torch.randn(3, n_mels, t) for t in lengths]


def off(**strengths) -> SpeechAugmentConfig:
    """Augmentation on, every element at zero unless given."""
    zero = dict(time_masks=0, freq_masks=0, tempo=0.0, shift=0.0, mel_warp=0.0)
    return SpeechAugmentConfig(enabled=True, **{**zero, **strengths})


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augmented_input_keeps_the_shape() -> None:
    out = racnn_input(clips(), CFG, augment=SpeechAugmentConfig(enabled=True), generator=seeded(0))
    assert out.shape == (3, 3, CFG.segments, CFG.size, CFG.size)
    assert torch.isfinite(out).all()


def test_zero_strengths_are_the_identity() -> None:
    plain = racnn_input(clips(), CFG)
    assert torch.equal(racnn_input(clips(), CFG, augment=off(), generator=seeded(0)), plain)
    # Disabled: strengths are ignored.
    disabled = SpeechAugmentConfig(enabled=False, tempo=0.5, mel_warp=0.5)
    assert torch.equal(racnn_input(clips(), CFG, augment=disabled, generator=seeded(0)), plain)


def test_a_unit_mel_warp_reads_what_the_plain_resize_reads() -> None:
    frames = torch.tensor(LENGTHS)
    start, span = time_window(frames, off(), seeded(0))
    assert torch.equal(start, torch.zeros(3, dtype=torch.float64))
    assert torch.equal(span, frames.double())
    rows = mel_source_rows(40, 32, 3, off(), seeded(0))
    assert torch.allclose(rows[0], (torch.arange(32) + 0.5).double() * 40 / 32)
    # The grid path (a warp factor of ~1) matches F.interpolate up to float32 rounding.
    near_one = racnn_input(clips(), CFG, augment=off(mel_warp=1e-12), generator=seeded(0))
    assert torch.allclose(near_one, racnn_input(clips(), CFG), atol=1e-4)


def test_same_seed_same_augmentation_other_seed_other() -> None:
    aug = SpeechAugmentConfig(enabled=True)
    first = racnn_input(clips(), CFG, augment=aug, generator=seeded(7))
    again = racnn_input(clips(), CFG, augment=aug, generator=seeded(7))
    other = racnn_input(clips(), CFG, augment=aug, generator=seeded(8))
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)
    assert not torch.allclose(first, racnn_input(clips(), CFG))


def test_masks_stay_inside_their_bounds() -> None:
    frames = torch.tensor([50, 200])
    batch = torch.ones(2, 3, 40, 200)
    batch[0, ..., 50:] = 0.0  # padding of the short clip
    cfg = off(time_masks=1, time_mask_fraction=0.2, freq_masks=1, freq_mask_bins=8)
    for seed in range(20):
        masked = apply_masks(batch, frames, cfg, seeded(seed))
        zero = masked == 0
        assert torch.equal(zero[:, 0], zero[:, 1]) and torch.equal(zero[:, 0], zero[:, 2])
        for clip, length in enumerate(frames.tolist()):
            plane = zero[clip, 0, :, :length]
            masked_frames = plane.all(dim=0).sum()  # time mask: whole columns
            masked_bins = plane.all(dim=1).sum()  # frequency mask: whole rows
            assert masked_frames <= int(0.2 * length)
            assert masked_bins <= 8
            # Nothing but a mask's rows and columns is zeroed.
            only_masks = plane.all(dim=0)[None, :] | plane.all(dim=1)[:, None]
            assert torch.equal(plane, only_masks)


def test_masks_apply_to_training_input_only_through_the_config() -> None:
    masked = racnn_input(clips(), CFG, augment=off(time_masks=3, freq_masks=3), generator=seeded(1))
    assert (masked == 0).float().mean() > (racnn_input(clips(), CFG) == 0).float().mean()


def test_tempo_and_shift_move_the_covered_window_within_bounds() -> None:
    frames = torch.tensor([100] * 200)
    start, span = time_window(frames, off(tempo=0.2, shift=0.1), seeded(3))
    assert span.min() >= 80 - 1e-9 and span.max() <= 120 + 1e-9
    centre = start + span / 2
    assert (centre - 50).abs().max() <= 10 + 1e-9
    assert span.std() > 1  # really random


def test_mel_warp_keeps_both_ends_of_the_axis() -> None:
    rows = mel_source_rows(128, 128, 50, off(mel_warp=0.2), seeded(0))
    assert rows.min() >= 0 and rows.max() <= 128 + 1e-9
    assert torch.all(rows[:, 1:] > rows[:, :-1])  # monotone
    top = (128 - 0.5) * torch.ones(50, dtype=torch.float64)
    assert torch.allclose(rows[:, -1], top, atol=0.5 * 1.25)


def test_mixup_makes_soft_targets_and_zero_alpha_is_identity() -> None:
    inputs, labels = torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2])
    same, onehot = mixup(inputs, labels, 3, 0.0)
    assert torch.equal(same, inputs) and torch.equal(onehot.argmax(1), labels)
    mixed, targets = mixup(inputs, labels, 3, 0.4, seeded(0))
    assert torch.allclose(targets.sum(1), torch.ones(6))
    again, _ = mixup(inputs, labels, 3, 0.4, seeded(0))
    assert torch.equal(mixed, again)


@pytest.mark.parametrize("bad", [dict(tempo=1.0), dict(time_masks=-1), dict(mel_warp_knee=1.0),
                                 dict(time_mask_fraction=-0.1)])
def test_bad_strengths_are_config_errors(bad) -> None:
    with pytest.raises(ConfigError, match="augment"):
        SpeechAugmentConfig(**bad)


def speech_rows(n: int = 6, seed: int = 0):
    """Store-shaped rows of random log-mels (what FrameBatches iterates)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    mels = [rng.normal(size=(3, 40, int(rng.integers(60, 120)))).astype(np.float16) for _ in range(n)]
    return pd.DataFrame({"clip_id": [f"c{i}" for i in range(n)], "label": [i % 3 for i in range(n)],
                         "logmel": [m.tobytes() for m in mels],
                         "logmel_shape": [list(m.shape) for m in mels]})


def tiny_speech_context(augment: bool):
    from pathlib import Path

    from avser import config as configlib
    from avser.config import load_model_config
    from avser.platform.config import TrainConfig
    from avser.platform.epochs import LoopContext
    from avser.platform.runs import TrackingInfo

    repo = Path(__file__).resolve().parents[1]
    model_cfg = load_model_config(repo / "configs/model/tiny.yaml", ["racnn.n_classes=3"])
    cfg = configlib.load(TrainConfig, None, [f"augment.enabled={str(augment).lower()}",
                                             "stage=pretrain", "optim.batch_size=4",
                                             "mixed_precision=fp32"])
    return LoopContext(cfg, model_cfg, ["a", "b", "c"], "aug-test", TrackingInfo("none", "none"))


def test_augmentation_acts_on_training_batches_only() -> None:
    from avser.batches import FrameBatches
    from avser.models.factory import SPEECH, build_network
    from avser.platform.epochs import predict, train_one_epoch

    rows = FrameBatches(speech_rows())
    on, off_ctx = tiny_speech_context(True), tiny_speech_context(False)
    torch.manual_seed(0)
    model = build_network(SPEECH, on.model_cfg)
    scored_on = predict(model, rows, on, torch.device("cpu"))["logits"]
    scored_off = predict(model, rows, off_ctx, torch.device("cpu"))["logits"]
    assert (scored_on == scored_off).all()  # evaluation never augments

    def one_epoch(ctx):
        torch.manual_seed(0)
        net = build_network(SPEECH, ctx.model_cfg)
        optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
        return train_one_epoch(net, optimizer, rows, ctx, torch.device("cpu"), epoch=0)["train_loss"]

    assert one_epoch(on) == one_epoch(on)  # seeded: the same epoch twice
    assert one_epoch(on) != one_epoch(off_ctx)  # and training batches are augmented
