"""Speaker-adversarial training: the gradient reversal, its ramp, the
adversary head, and one training epoch with it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from avser.errors import ConfigError
from avser.models.adversary import adversary_scale, reverse_gradient
from avser.models.config import RACNNConfig
from avser.models.racnn import SpeechEmotionNet
from avser.recipe import OptimConfig

from test_augment import speech_rows, tiny_speech_context

TINY = Path(__file__).resolve().parents[1] / "configs/model/tiny.yaml"


def test_reversal_is_the_identity_forward_and_negates_the_gradient() -> None:
    x = torch.randn(4, 3, requires_grad=True)
    y = reverse_gradient(x, 0.5)
    assert torch.equal(y, x)
    weights = torch.randn(4, 3)
    (y * weights).sum().backward()
    assert torch.allclose(x.grad, -0.5 * weights)


def test_the_ramp_rises_from_zero_to_the_weight() -> None:
    ramp = [adversary_scale(2.0, p / 10) for p in range(11)]
    assert ramp[0] == 0.0
    assert all(a < b for a, b in zip(ramp, ramp[1:]))
    assert 0.99 * 2.0 < ramp[-1] <= 2.0
    assert adversary_scale(0.0, 0.7) == 0.0


def adversarial_cfg(n_speakers: int = 3):
    from avser.config import load_model_config

    cfg = load_model_config(TINY)
    return dataclasses.replace(cfg, racnn=dataclasses.replace(
        cfg.racnn, adversary_speakers=n_speakers))


def test_the_adversary_reads_the_embedding_and_sends_back_a_reversed_gradient() -> None:
    cfg = adversarial_cfg(n_speakers=5)
    net = SpeechEmotionNet.from_config(cfg)
    r = cfg.racnn
    speech = torch.randn(2, r.in_channels, r.depth, r.input_size, r.input_size)
    logits, embedding, speaker_logits = net(speech, adversary_scale=1.0)
    assert logits.shape == (2, r.n_classes) and speaker_logits.shape == (2, 5)
    assert embedding.shape == (2, net.speech_head.fc.in_features)

    # The speaker loss alone: the adversary descends it, the RACNN ascends it.
    torch.nn.functional.cross_entropy(speaker_logits, torch.tensor([0, 1])).backward()
    adversary_grads = [p.grad for p in net.speaker_adversary.parameters()]
    assert all(g is not None and g.abs().sum() > 0 for g in adversary_grads)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.racnn.parameters())
    assert all(p.grad is None for p in net.speech_head.fc.parameters())  # emotion FC untouched


def test_without_an_adversary_the_network_is_the_paper_s() -> None:
    from avser.config import load_model_config

    net = SpeechEmotionNet.from_config(load_model_config(TINY))
    assert net.speaker_adversary is None
    assert not any(k.startswith("speaker_adversary") for k in net.state_dict())
    with pytest.raises(ConfigError, match="adversary_speakers"):
        net(torch.zeros(1, 3, 9, 32, 32), adversary_scale=1.0)


@pytest.mark.parametrize("bad", [dict(speaker_adversary=-0.1),
                                 dict(speaker_adversary=0.5, mixup_alpha=0.2)])
def test_bad_adversary_options_are_config_errors(bad) -> None:
    with pytest.raises(ConfigError, match="speaker_adversary"):
        OptimConfig(**bad)
    with pytest.raises(ConfigError, match="adversary_speakers"):
        RACNNConfig(adversary_speakers=-1)


def test_speaker_indices_follow_the_training_order_and_name_strangers() -> None:
    from avser.platform.epochs import speaker_indices

    order = ["Actor_02", "Actor_05", "Actor_09"]
    assert speaker_indices(["Actor_09", "Actor_02"], order).tolist() == [2, 0]
    with pytest.raises(ValueError, match="Actor_13"):
        speaker_indices(["Actor_02", "Actor_13"], order)


def test_with_speaker_adversary_sizes_the_head_from_the_split() -> None:
    from avser import config as configlib
    from avser.config import load_model_config
    from avser.platform.config import TrainConfig
    from avser.platform.experiments import with_speaker_adversary

    model_cfg = load_model_config(TINY)
    off = configlib.load(TrainConfig, None, [])
    on = configlib.load(TrainConfig, None, ["optim.speaker_adversary=0.5"])
    assert with_speaker_adversary(off, model_cfg, 8) is model_cfg
    assert with_speaker_adversary(on, model_cfg, 8).racnn.adversary_speakers == 8
    with pytest.raises(ConfigError, match="2 training speakers"):
        with_speaker_adversary(on, model_cfg, 1)


def test_an_adversarial_epoch_trains_the_adversary() -> None:
    from avser.batches import FrameBatches
    from avser.models.factory import SPEECH, build_network
    from avser.platform.epochs import train_one_epoch

    frame = speech_rows(n=12)
    frame["speaker"] = [f"Actor_0{i % 3 + 1}" for i in range(len(frame))]
    rows = FrameBatches(frame)
    ctx = tiny_speech_context(augment=False)
    ctx.cfg.optim = dataclasses.replace(ctx.cfg.optim, speaker_adversary=1.0, max_epochs=2)
    ctx.train_speakers = ["Actor_01", "Actor_02", "Actor_03"]
    ctx.model_cfg = dataclasses.replace(ctx.model_cfg, racnn=dataclasses.replace(
        ctx.model_cfg.racnn, adversary_speakers=3))
    torch.manual_seed(0)
    model = build_network(SPEECH, ctx.model_cfg)
    before = [p.detach().clone() for p in model.speaker_adversary.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # Epoch 1 of 2: past the ramp's zero, so the reversed gradient is live.
    stats = train_one_epoch(model, optimizer, rows, ctx, torch.device("cpu"), epoch=1)
    assert torch.isfinite(torch.tensor(stats["train_loss"]))
    after = list(model.speaker_adversary.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, after))

    ctx.train_speakers = ["Actor_01", "Actor_02"]  # a clip's speaker is not among them
    with pytest.raises(ValueError, match="Actor_03"):
        train_one_epoch(model, optimizer, rows, ctx, torch.device("cpu"), epoch=1)
