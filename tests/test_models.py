"""The networks of paper section II: shapes (Table I), gradients, masks, ablations."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from avser.config import load_model_config, save
from avser.errors import ConfigError
from avser.models.agru import AGRUs, LANDMARK_REGIONS, N_LANDMARKS
from avser.models.appearance import AppearanceCNN
from avser.models.attention import CBAM3d
from avser.models.compat import import_timm
from avser.models.config import VARIANTS, FusionConfig, ModelConfig, RACNNConfig
from avser.models.fusion import AudioVisualSER
from avser.models.racnn import (
    AVG_POOL,
    RACNN,
    FrequencyCoordinate,
    FrequencyDCT,
    SpeechEmotionNet,
    dct_matrix,
    racnn_layer_shapes,
    racnn_token_shape,
)
from avser.models.summary import format_summary, summarize

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
PAPER, TINY = CONFIGS / "paper.yaml", CONFIGS / "tiny.yaml"

# Table I as printed, (D, H, W, C) outputs, with Conv6 corrected to 4x14x14
# (the table's 4x28x28 contradicts its own 1x2x2 stride and Conv7's output).
TABLE_I = {
    "Conv1": (7, 112, 112, 32),
    "Max pool": (7, 56, 56, 32),
    "Conv2": (6, 56, 56, 32),
    "Conv3": (5, 56, 56, 32),
    "Conv4": (5, 28, 28, 96),
    "Conv5": (4, 28, 28, 96),
    "Conv6": (4, 14, 14, 288),
    "Conv7": (3, 14, 14, 288),
    "Avg pool": (3, 7, 7, 288),
}
# (kernel volume, input channels) of Table I's convolutions, for the MAC count.
TABLE_I_KERNELS = {
    "Conv1": (3 * 2 * 2, 3),
    "Conv2": (2, 32),
    "Conv3": (2, 32),
    "Conv4": (4, 32),
    "Conv5": (2, 96),
    "Conv6": (4, 96),
    "Conv7": (2, 288),
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny networks gain nothing from intra-op threads, and on a shared box
    two spinning threads per process run several times slower than one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_cfg() -> ModelConfig:
    return load_model_config(TINY)


def with_fusion(cfg: ModelConfig, **changes) -> ModelConfig:
    return dataclasses.replace(cfg, fusion=dataclasses.replace(cfg.fusion, **changes))


def make_batch(cfg: ModelConfig, batch: int, mask=None, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    r, a, k = cfg.racnn, cfg.appearance, cfg.keyframes
    speech = torch.randn(batch, r.in_channels, r.depth, r.input_size, r.input_size, generator=gen)
    faces = torch.rand(batch, k, 3, a.image_size, a.image_size, generator=gen)
    landmarks = torch.rand(batch, k, N_LANDMARKS, 2, generator=gen)
    labels = torch.randint(0, cfg.n_classes, (batch,), generator=gen)
    if mask is None:
        mask = torch.arange(batch) % 2 == 0  # a mixed batch: every other clip has no face
    return speech, faces, landmarks, mask, labels


# --- RACNN -------------------------------------------------------------------


def test_racnn_paper_size_follows_table_i():
    cfg = load_model_config(PAPER).racnn
    racnn = RACNN.from_config(cfg).eval()
    seen = {}
    for name, layer in racnn.table_i_layers().items():
        layer.register_forward_hook(lambda m, i, o, name=name: seen.__setitem__(name, o.shape))
    with torch.no_grad():
        tokens = racnn(torch.randn(1, 3, 9, 224, 224))
    assert tokens.shape == (1, 147, 288)
    got = {name: (d, h, w, c) for name, (_, c, d, h, w) in seen.items()}
    assert got == TABLE_I
    assert racnn_layer_shapes(cfg) == TABLE_I
    assert racnn_token_shape(cfg) == (147, 288)


def test_racnn_tokens_are_the_last_map_in_depth_height_width_order(tiny_cfg):
    racnn = RACNN.from_config(tiny_cfg.racnn).eval()
    x = torch.randn(2, 3, tiny_cfg.racnn.depth, 64, 64)
    with torch.no_grad():
        fmap, tokens = racnn.forward_features(x), racnn(x)
    n, c = racnn_token_shape(tiny_cfg.racnn)
    assert tokens.shape == (2, n, c)
    assert torch.equal(tokens[:, 1], fmap[:, :, 0, 0, 1])  # second token = next column


def test_racnn_rejects_input_too_small_for_table_i():
    with pytest.raises(ConfigError, match="racnn.depth"):
        RACNN.from_config(RACNNConfig(depth=6))


def test_racnn_attention_off_has_no_cbam():
    racnn = RACNN.from_config(RACNNConfig(attention=False))
    assert not any(isinstance(m, CBAM3d) for m in racnn.modules())


def test_local_block_kernel_keeps_table_i_shapes_and_mixes_neighbours(tiny_cfg):
    table_i = RACNN.from_config(tiny_cfg.racnn).eval()
    local = RACNN.from_config(dataclasses.replace(tiny_cfg.racnn, block_kernel=3)).eval()
    assert local.ra1.convs.conv2.conv.kernel_size == (2, 3, 3)
    assert local.ra2.convs.conv4.conv.kernel_size == (1, 2, 2)  # strided rows stay Table I's
    x = torch.randn(1, 3, tiny_cfg.racnn.depth, 64, 64)
    with torch.no_grad():
        assert local(x).shape == table_i(x).shape
        # An impulse through Conv2 alone (GroupNorm and attention are global): Table I's
        # 1x1 kernel keeps it in place, the local kernel reaches the 3x3 neighbourhood.
        channels = tiny_cfg.racnn.widths[0]
        impulse = torch.zeros(1, channels, 2, 5, 5)
        impulse[..., 2, 2] = 1.0
        reach = [net.ra1.convs.conv2.conv(impulse).abs().amax(dim=(0, 1, 2)) > 0
                 for net in (table_i, local)]
    assert reach[0].sum() == 1 and reach[1].sum() == 9
    with pytest.raises(ConfigError, match="block_kernel"):
        RACNNConfig(block_kernel=2)


def test_frequency_coordinate_channel_spans_the_mel_axis_only():
    x = torch.zeros(2, 3, 4, 6, 5)
    out = FrequencyCoordinate()(x)
    assert out.shape == (2, 4, 4, 6, 5)
    assert torch.equal(out[:, :3], x)
    coord = out[:, 3]
    assert coord[0, 0, :, 0].tolist() == pytest.approx(torch.linspace(-1, 1, 6).tolist())
    assert torch.equal(coord, coord[:, :1, :, :1].expand_as(coord))  # constant over depth, time


def test_freq_coord_racnn_keeps_shapes_and_tells_heights_apart(tiny_cfg):
    torch.manual_seed(0)
    coord = RACNN.from_config(dataclasses.replace(tiny_cfg.racnn, freq_coord=True)).eval()
    table_i = RACNN.from_config(tiny_cfg.racnn).eval()
    assert coord.conv1.conv.in_channels == tiny_cfg.racnn.in_channels + 1
    x = torch.zeros(1, 3, tiny_cfg.racnn.depth, 64, 64)
    with torch.no_grad():
        assert coord(x).shape == table_i(x).shape
        # Conv1 alone: one 2x2 patch of ones, low and then high on the frequency axis.
        # Table I's Conv1 gives the two the same response; with the coordinate they differ.
        low, high = torch.zeros(2, 3, 3, 8, 8)
        low[:, :, 0:2, 0:2], high[:, :, 6:8, 0:2] = 1.0, 1.0
        plain = [table_i.conv1.conv(p[None])[0, :, 0] for p in (low, high)]
        placed = [coord.conv1.conv(coord.freq_coord(p[None]))[0, :, 0] for p in (low, high)]
    assert torch.allclose(plain[0][:, 0, 0], plain[1][:, 3, 0])
    assert not torch.allclose(placed[0][:, 0, 0], placed[1][:, 3, 0])


def test_dct_matrix_is_orthonormal_and_a_constant_spectrum_is_all_c0():
    basis = dct_matrix(16)
    assert torch.allclose(basis @ basis.T, torch.eye(16), atol=1e-6)
    flat = torch.ones(1, 1, 1, 16, 1)
    cepstra = FrequencyDCT(16, append=False)(flat)[0, 0, 0, :, 0]
    assert cepstra[0] == pytest.approx(4.0)  # sqrt(16)
    assert torch.allclose(cepstra[1:], torch.zeros(15), atol=1e-6)


@pytest.mark.parametrize("transform, conv1_in", [("dct", 3), ("dct_append", 6)])
def test_freq_transform_racnn_keeps_shapes_and_no_new_weights(tiny_cfg, transform, conv1_in):
    cfg = dataclasses.replace(tiny_cfg.racnn, freq_transform=transform)
    net = RACNN.from_config(cfg).eval()
    assert net.conv1.conv.in_channels == conv1_in
    assert "freq_dct.basis" not in net.state_dict()  # fixed: checkpoints stay Table I's keys
    x = torch.randn(2, 3, cfg.depth, cfg.input_size, cfg.input_size)
    with torch.no_grad():
        assert net(x).shape == RACNN.from_config(tiny_cfg.racnn)(x).shape
        seen = net.freq_dct(x)
    if transform == "dct_append":
        assert torch.equal(seen[:, :3], x)
    # Orthonormal: the cepstra keep each column's energy.
    cepstra = seen[:, -3:]
    assert torch.allclose(cepstra.square().sum(3), x.square().sum(3), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="freq_transform"):
        RACNNConfig(freq_transform="mfcc")


def test_fine_band_head_reads_conv7_before_the_final_pool(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg.racnn, head="bands_fine", dropout=0.0)
    net = SpeechEmotionNet.from_config(cfg).eval()
    shapes = racnn_layer_shapes(cfg)
    _, fine_bands, _, channels = shapes["Conv7"]  # the Table I row before the average pool
    assert fine_bands > shapes[AVG_POOL.name][1]
    assert net.speech_head.fc.in_features == 2 * fine_bands * channels
    speech = make_batch(tiny_cfg, 3)[0]
    with torch.no_grad():
        expected = net.speech_head.embed(net.racnn(speech, final_pool=False))
        assert torch.allclose(net.embed(speech), expected)
    assert net(speech).shape == (3, cfg.n_classes)
    # The RACNN itself is unchanged: its weights load into a bands-head network.
    coarse = SpeechEmotionNet.from_config(dataclasses.replace(cfg, head="bands"))
    coarse.racnn.load_state_dict(net.racnn.state_dict())


def test_speech_emotion_net_logits(tiny_cfg):
    net = SpeechEmotionNet.from_config(tiny_cfg)
    speech = make_batch(tiny_cfg, 3)[0]
    assert net(speech).shape == (3, tiny_cfg.racnn.n_classes)


def test_band_statistics_head_pools_time_and_keeps_bands(tiny_cfg):
    cfg = dataclasses.replace(tiny_cfg.racnn, head="bands", dropout=0.0)
    net = SpeechEmotionNet.from_config(cfg).eval()
    depth, bands, width, channels = racnn_layer_shapes(cfg)[AVG_POOL.name]
    assert net.speech_head.fc.in_features == 2 * bands * channels
    grid = torch.randn(2, channels, depth, bands, width)
    tokens = grid.flatten(2).transpose(1, 2)
    with torch.no_grad():
        logits = net.speech_head(tokens)
        # Permuting time positions within a band changes nothing; swapping bands does.
        time_perm = grid.flip(2).roll(1, dims=4)
        band_swap = grid.flip(3)
        same = net.speech_head(time_perm.flatten(2).transpose(1, 2))
        other = net.speech_head(band_swap.flatten(2).transpose(1, 2))
    assert logits.shape == (2, cfg.n_classes)
    assert torch.allclose(logits, same, atol=1e-5)
    assert not torch.allclose(logits, other, atol=1e-3)
    speech = make_batch(tiny_cfg, 3)[0]
    assert net(speech).shape == (3, cfg.n_classes)


# --- configs -----------------------------------------------------------------


@pytest.mark.parametrize("path", [PAPER, TINY], ids=["paper", "tiny"])
def test_yaml_builds_the_model(path):
    cfg = load_model_config(path)
    assert isinstance(cfg, ModelConfig) and isinstance(cfg.racnn.widths, tuple)
    model = AudioVisualSER.from_config(cfg)
    assert model.appearance.weights_source == "random"
    assert model.appearance.out_features == cfg.appearance.feature_dim


def test_paper_yaml_holds_the_paper_sizes():
    cfg = load_model_config(PAPER)
    r = cfg.racnn
    assert (r.depth, r.input_size, r.widths) == (9, 224, (32, 96, 288))
    assert cfg.appearance.model_name == "efficientnet_b0"
    assert (cfg.fusion.layers, cfg.keyframes) == (2, 9)


def test_config_round_trips_through_yaml(tmp_path):
    cfg = load_model_config(PAPER)
    save(cfg, tmp_path / "model.yaml")
    assert load_model_config(tmp_path / "model.yaml") == cfg


def test_overrides_and_bad_values(tiny_cfg):
    cfg = load_model_config(TINY, ["fusion.variant=speech", "fusion.w=0.8"])
    assert (cfg.fusion.variant, cfg.fusion.w) == ("speech", 0.8)
    with pytest.raises(ConfigError, match="variant"):
        FusionConfig(variant="audio")
    with pytest.raises(ConfigError, match="groups"):
        RACNNConfig(widths=(30, 96, 288), groups=8)
    with pytest.raises(ConfigError, match="feature_dim"):
        AppearanceCNN("test_efficientnet", feature_dim=1280)


# --- full model --------------------------------------------------------------


def test_tiny_forward_backward_shapes(tiny_cfg):
    model = AudioVisualSER.from_config(tiny_cfg)
    speech, faces, landmarks, mask, labels = make_batch(tiny_cfg, 4)
    logits, hybrid = model(speech, faces, landmarks, mask)
    assert logits.shape == (4, tiny_cfg.n_classes)
    assert hybrid.shape == (4, 2 * tiny_cfg.fusion.hidden)
    nn.functional.cross_entropy(logits, labels).backward()
    feats = model.forward_features(speech, faces, landmarks, mask)
    assert feats.region_weights.shape == (4, 7)
    assert torch.allclose(feats.region_weights[mask].sum(-1), torch.ones(int(mask.sum())))
    assert not feats.region_weights[~mask].any()


@pytest.mark.parametrize("freeze", [False, True], ids=["trainable", "frozen-cnn"])
def test_gradients_reach_exactly_the_trainable_parameters(tiny_cfg, freeze):
    appearance = dataclasses.replace(tiny_cfg.appearance, freeze=freeze)
    torch.manual_seed(0)
    model = AudioVisualSER.from_config(dataclasses.replace(tiny_cfg, appearance=appearance)).train()
    speech, faces, landmarks, mask, labels = make_batch(tiny_cfg, 4)
    stats = model.appearance.backbone.bn1.running_mean.clone()
    logits, _ = model(speech, faces, landmarks, mask)
    nn.functional.cross_entropy(logits, labels).backward()
    for name, p in model.named_parameters():
        frozen = freeze and name.startswith("appearance.backbone.")
        assert p.requires_grad != frozen, name
        if frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert p.grad.abs().sum() > 0, name
    # A frozen CNN stays in eval mode: its BatchNorm statistics must not move.
    assert torch.equal(model.appearance.backbone.bn1.running_mean, stats) == freeze


def test_audio_only_rows_ignore_their_visual_inputs(tiny_cfg):
    model = AudioVisualSER.from_config(tiny_cfg).eval()
    speech, faces, landmarks, mask, _ = make_batch(tiny_cfg, 4)
    with torch.no_grad():
        logits, hybrid = model(speech, faces, landmarks, mask)
        noisy_faces, noisy_landmarks = faces.clone(), landmarks.clone()
        noisy_faces[~mask] = torch.rand_like(faces[~mask])
        noisy_landmarks[~mask] = 5.0
        same, _ = model(speech, noisy_faces, noisy_landmarks, mask)
        # A clip without a face is the speech-only path, whatever else is in the batch.
        no_face = torch.zeros(int((~mask).sum()), dtype=torch.bool)
        alone, _ = model(speech[~mask], visual_mask=no_face)
        faces[mask] = torch.rand_like(faces[mask])
        moved, _ = model(speech, faces, landmarks, mask)
    assert torch.equal(logits, same)
    assert torch.allclose(logits[~mask], alone, atol=1e-5)
    assert torch.equal(moved[~mask], logits[~mask])
    assert not torch.allclose(moved[mask], logits[mask])


def test_audio_only_batches_and_missing_inputs(tiny_cfg):
    model = AudioVisualSER.from_config(tiny_cfg).eval()
    speech, faces, _, mask, _ = make_batch(tiny_cfg, 2)
    with torch.no_grad():
        logits, _ = model(speech)  # no visual inputs at all: every clip audio-only
        assert logits.shape == (2, tiny_cfg.n_classes)
        with pytest.raises(ValueError, match="landmarks"):
            model(speech, faces, None, mask)


@pytest.mark.parametrize("attention", [True, False], ids=["attention", "no-attention"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_every_ablation_variant_trains(tiny_cfg, variant, attention):
    racnn = dataclasses.replace(tiny_cfg.racnn, attention=attention)
    agru = dataclasses.replace(tiny_cfg.agru, attention=attention)
    cfg = with_fusion(dataclasses.replace(tiny_cfg, racnn=racnn, agru=agru), variant=variant)
    model = AudioVisualSER.from_config(cfg)
    assert (model.racnn is not None) == cfg.fusion.uses_speech
    assert (model.appearance is not None) == cfg.fusion.uses_appearance
    assert (model.agrus is not None) == cfg.fusion.uses_geometry
    speech, faces, landmarks, mask, labels = make_batch(cfg, 3)
    logits, _ = model(speech, faces, landmarks, mask)
    nn.functional.cross_entropy(logits, labels).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_vision_only_variant_ignores_speech(tiny_cfg):
    model = AudioVisualSER.from_config(with_fusion(tiny_cfg, variant="vision")).eval()
    speech, faces, landmarks, mask, _ = make_batch(tiny_cfg, 3)
    with torch.no_grad():
        with_speech, _ = model(speech, faces, landmarks, mask)
        without, _ = model(None, faces, landmarks, mask)
        other_speech, _ = model(torch.randn_like(speech), faces, landmarks, mask)
    torch.testing.assert_close(with_speech, without)
    torch.testing.assert_close(with_speech, other_speech)
    with pytest.raises(ValueError, match="vision-only model needs"):
        model(None, faces, None, mask)
    with pytest.raises(ConfigError, match="no RACNN"):
        model.load_racnn_state({})


def train_steps(
    cfg: ModelConfig,
    steps: int,
    seed: int = 0,
    batch: int = 16,
    lr: float = 1e-2,
    until: float | None = None,
):
    """Train a fresh model on one fixed batch for ``steps`` steps or until the
    training accuracy reaches ``until``; per-step losses and accuracies."""
    torch.manual_seed(seed)
    model = AudioVisualSER.from_config(cfg).train()
    speech, faces, landmarks, mask, labels = make_batch(cfg, batch, seed=seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses, accuracies = [], []
    for _ in range(steps):
        optimizer.zero_grad()
        logits, _ = model(speech, faces, landmarks, mask)
        loss = nn.functional.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        accuracies.append((logits.argmax(-1) == labels).float().mean().item())
        if until is not None and accuracies[-1] >= until:
            break
    return losses, accuracies


def test_tiny_model_overfits_a_batch(tiny_cfg):
    losses, accuracies = train_steps(tiny_cfg, steps=40, until=1.0)
    assert accuracies[-1] == 1.0, (losses[-5:], accuracies[-5:])
    assert losses[-1] < losses[0] / 2


def test_seeded_runs_repeat_exactly(tiny_cfg):
    assert train_steps(tiny_cfg, steps=3)[0] == train_steps(tiny_cfg, steps=3)[0]


def test_pretrained_racnn_transfers(tiny_cfg):
    pretrained = SpeechEmotionNet.from_config(tiny_cfg)
    model = AudioVisualSER.from_config(tiny_cfg)
    model.load_racnn_state(pretrained.state_dict())
    expected = pretrained.racnn.state_dict()
    for name, value in model.racnn.state_dict().items():
        assert torch.equal(value, expected[name]), name
    model.load_racnn_state(pretrained.racnn.state_dict())  # a bare RACNN state dict too
    wider = dataclasses.replace(tiny_cfg.racnn, widths=(8, 16, 64))
    with pytest.raises(ConfigError, match="racnn"):
        model.load_racnn_state(SpeechEmotionNet.from_config(wider).state_dict())


# --- visual branches ---------------------------------------------------------


def test_landmark_regions_cover_the_68_points_once():
    points = sorted(i for region in LANDMARK_REGIONS.values() for i in region)
    assert points == list(range(N_LANDMARKS)) and len(LANDMARK_REGIONS) == 7


@pytest.mark.parametrize("attention", [True, False])
def test_agrus_shapes_and_weights(attention):
    agrus = AGRUs(hidden=5, attention=attention, attention_hidden=4)
    features, weights = agrus(torch.rand(3, 4, N_LANDMARKS, 2))
    assert features.shape == (3, 7 * 5) and weights.shape == (3, 7)
    assert torch.allclose(weights.sum(-1), torch.ones(3))
    if not attention:
        assert torch.allclose(weights, torch.full((3, 7), 1 / 7))


def test_appearance_weights_from_a_local_file(tmp_path):
    timm = import_timm()
    torch.manual_seed(1)
    source = timm.create_model("test_efficientnet", pretrained=False)  # with its classifier
    path = tmp_path / "test_efficientnet.pth"
    torch.save(source.state_dict(), path)
    cnn = AppearanceCNN("test_efficientnet", weights_file=str(path))
    assert cnn.weights_source == f"file:{path}"
    assert torch.equal(cnn.backbone.conv_stem.weight, source.conv_stem.weight)
    features = cnn(torch.rand(2, 3, 3, 32, 32))
    assert features.shape == (2, 3, cnn.out_features)
    with pytest.raises(ConfigError, match="does not exist"):
        AppearanceCNN("test_efficientnet", weights_file=str(tmp_path / "missing.pth"))


# --- summary -----------------------------------------------------------------


def test_summary_counts_table_i_flops():
    cfg = with_fusion(load_model_config(PAPER), variant="speech")  # skip EfficientNet: fast
    rows = {row.module: row for row in summarize(cfg)}
    macs = sum(
        math.prod(TABLE_I[name]) * volume * cin for name, (volume, cin) in TABLE_I_KERNELS.items()
    )
    assert macs == pytest.approx(0.46e9, rel=0.01)
    assert rows["racnn: Table I convs (Conv1-Conv7)"].gflops == pytest.approx(2 * macs / 1e9)
    assert rows["racnn"].gflops > rows["racnn: Table I convs (Conv1-Conv7)"].gflops
    model = AudioVisualSER.from_config(cfg)
    assert rows["total"].params == sum(p.numel() for p in model.parameters())


def test_summary_table_of_the_tiny_model(tiny_cfg):
    rows = summarize(tiny_cfg)
    names = [row.module for row in rows]
    for part in ("racnn", "appearance", "agrus", "fusion", "hybrid", "head", "total"):
        assert part in names
    text = format_summary(rows)
    assert text.count("\n") == len(rows) + 1 and "GFLOPs/clip" in text
