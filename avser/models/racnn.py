"""RACNN: the 3D residual attention CNN of paper Table I, and its speech head.

Input: the 3D log-mel spectrograms, (B, 3, D, S, S) = (B, 3, 9, 224, 224) at
paper size. Output: (B, N, C) tokens = (B, 147, 288), the 3 x 7 x 7 positions
of the last feature map in (depth, height, width) order, each a 288-channel
vector: the Bi-GRU input of section II-C.

``SpeechEmotionNet`` (RACNN + ``speech_head``) is the speech-only network that
is pretrained and whose RACNN weights move into the fusion model (Table III).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from avser.errors import ConfigError
from avser.models.adversary import SpeakerAdversary
from avser.models.attention import CBAM3d, ConvBlock3d
from avser.models.config import ModelConfig, RACNNConfig

Triple = tuple[int, int, int]


@dataclass(frozen=True)
class LayerSpec:
    """One row of Table I: kernel and stride as (depth, height, width), valid padding."""

    name: str
    kernel: Triple
    stride: Triple = (1, 1, 1)

    def out_size(self, size: Triple) -> Triple:
        return tuple((n - k) // s + 1 for n, k, s in zip(size, self.kernel, self.stride))


# Table I. Conv6's stride is read as 1x2x2: the table prints its output as
# 4x28x28, which contradicts that stride and Conv7's 3x14x14 output.
CONV1 = LayerSpec("Conv1", (3, 2, 2), (1, 2, 2))
# The overlapping alternative (racnn.conv1: overlap5): padding 2 keeps Table I's output size.
CONV1_OVERLAP = LayerSpec("Conv1", (3, 5, 5), (1, 2, 2))
CONV1_OVERLAP_PADDING = (0, 2, 2)
MAX_POOL = LayerSpec("Max pool", (1, 2, 2), (1, 2, 2))
RA_BLOCKS: tuple[tuple[LayerSpec, LayerSpec], ...] = (
    (LayerSpec("Conv2", (2, 1, 1)), LayerSpec("Conv3", (2, 1, 1))),
    (LayerSpec("Conv4", (1, 2, 2), (1, 2, 2)), LayerSpec("Conv5", (2, 1, 1))),
    (LayerSpec("Conv6", (1, 2, 2), (1, 2, 2)), LayerSpec("Conv7", (2, 1, 1))),
)
AVG_POOL = LayerSpec("Avg pool", (1, 2, 2), (1, 2, 2))
TABLE_I: tuple[LayerSpec, ...] = (CONV1, MAX_POOL, *(s for b in RA_BLOCKS for s in b), AVG_POOL)


def _stage_widths(widths: tuple[int, int, int]) -> list[int]:
    """Output channels of each Table I row: Conv1..Conv3 and pools at widths[0],
    RA2 at widths[1], RA3 at widths[2]."""
    per_block = [w for w in widths for _ in range(2)]  # two convs per RA block
    return [widths[0], widths[0], *per_block, widths[2]]


def racnn_layer_shapes(cfg: RACNNConfig) -> dict[str, tuple[int, int, int, int]]:
    """Output (D, H, W, C) of every Table I row for ``cfg``, by valid-padding
    arithmetic; raises ConfigError when the input is too small for the table."""
    size: Triple = (cfg.depth, cfg.input_size, cfg.input_size)
    shapes = {}
    for spec, width in zip(TABLE_I, _stage_widths(cfg.widths)):
        size = spec.out_size(size)
        if min(size) < 1:
            raise ConfigError(
                f"racnn input {cfg.depth}x{cfg.input_size}x{cfg.input_size} is too small "
                f"for Table I: {spec.name} would output {size}; raise racnn.depth "
                "(at least 7 segments) or racnn.input_size"
            )
        shapes[spec.name] = (*size, width)
    return shapes


def racnn_token_shape(cfg: RACNNConfig) -> tuple[int, int]:
    """(number of tokens, channels) of RACNN's output: (147, 288) at paper size."""
    *volume, channels = racnn_layer_shapes(cfg)[AVG_POOL.name]
    return math.prod(volume), channels


def _pool(spec: LayerSpec, kind: type[nn.Module]) -> nn.Module:
    return kind(spec.kernel, spec.stride)


def _centre_crop(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Crop (D, H, W) of ``x`` to ``size`` around the centre; the valid
    convolutions of the main branch shrink what the shortcut keeps."""
    for axis, n in zip((2, 3, 4), size):
        x = x.narrow(axis, (x.shape[axis] - n) // 2, n)
    return x


class ResidualShortcut(nn.Module):
    """1x1x1 conv + GroupNorm with the block's total stride, or identity when
    channels and stride already agree (as in ResNet)."""

    def __init__(self, in_channels: int, out_channels: int, stride: Triple, groups: int) -> None:
        super().__init__()
        self.proj = None
        if in_channels != out_channels or any(s != 1 for s in stride):
            self.proj = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride, bias=False),
                nn.GroupNorm(groups, out_channels),
            )

    def forward(self, x: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return _centre_crop(x if self.proj is None else self.proj(x), size)


class ResidualAttentionBlock(nn.Module):
    """RA block: two conv blocks, CBAM (channel, then spatial), plus shortcut."""

    def __init__(
        self,
        convs: OrderedDict[str, ConvBlock3d],
        attention: nn.Module,
        shortcut: ResidualShortcut,
    ) -> None:
        super().__init__()
        self.convs = nn.Sequential(convs)
        self.attention = attention
        self.shortcut = shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(self.convs(x))
        return y + self.shortcut(x, y.shape[2:])


def _local_kernel(spec: LayerSpec, block_kernel: int) -> tuple[Triple, Triple]:
    """Kernel and padding of an RA-block conv: Table I's where it strides or
    ``block_kernel`` is 1; else its depth kernel with a ``block_kernel`` square
    in (frequency, time), padded to keep Table I's output size."""
    if block_kernel == 1 or spec.stride != (1, 1, 1) or spec.kernel[1:] != (1, 1):
        return spec.kernel, (0, 0, 0)
    return (spec.kernel[0], block_kernel, block_kernel), (0, block_kernel // 2, block_kernel // 2)


def ra_block(
    specs: tuple[LayerSpec, LayerSpec],
    in_channels: int,
    width: int,
    groups: int,
    attention: nn.Module,
    block_kernel: int = 1,
) -> ResidualAttentionBlock:
    """An RA block from its two Table I rows (``block_kernel``: see ``_local_kernel``)."""
    convs, channels = OrderedDict(), in_channels
    for spec in specs:
        kernel, padding = _local_kernel(spec, block_kernel)
        convs[spec.name.lower()] = ConvBlock3d(
            channels, width, kernel, spec.stride, groups, padding=padding
        )
        channels = width
    stride = tuple(math.prod(s) for s in zip(*(spec.stride for spec in specs)))
    shortcut = ResidualShortcut(in_channels, width, stride, groups)
    return ResidualAttentionBlock(convs, attention, shortcut)


class FrequencyCoordinate(nn.Module):
    """Appends one channel holding each row's position on the frequency (height)
    axis, from -1 (the lowest mel bin) to 1, the same at every time position.

    Table I's convolutions are shift-equivariant with valid padding and its RA
    blocks are 1x1 in (frequency, time), so no layer knows where in frequency a
    pattern lies: the same shape at 150 Hz (pitch) and at 2 kHz (a formant)
    gives the same feature. CoordConv (Liu et al. 2018) gives the first layer
    that position; the bands head gives it only at the end.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, depth, height, width = x.shape
        rows = torch.linspace(-1.0, 1.0, height, device=x.device, dtype=x.dtype)
        coordinate = rows.view(1, 1, 1, height, 1).expand(batch, 1, depth, height, width)
        return torch.cat([x, coordinate], dim=1)


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II as an ``(n, n)`` matrix: row k is the k-th cosine."""
    position = torch.arange(n, dtype=torch.float64) + 0.5
    order = torch.arange(n, dtype=torch.float64)[:, None]
    basis = torch.cos(math.pi * order * position / n) * math.sqrt(2.0 / n)
    basis[0] /= math.sqrt(2.0)
    return basis.float()


class FrequencyDCT(nn.Module):
    """The orthonormal DCT-II over the frequency (height) axis of
    ``(B, C, D, H, W)``: each segment's log-mel rows become cepstra, in place
    of them or, with ``append``, as C more channels beside them.

    The reference SVM's lead over the network is in its description: 40
    cepstra's statistics score 73 on ``random`` where 768 mel-bin statistics
    of the same log-mels score 62-64 (``bench/input_level_svm.py``). Table
    I's 2x2 patches and 1x1 RA convs only ever see two neighbouring bins at
    once, so the network cannot form the whole-spectrum envelope a cepstrum
    is; this hands it over. Fixed, so it adds no weights to the state dict.
    """

    def __init__(self, size: int, append: bool) -> None:
        super().__init__()
        self.append = append
        self.register_buffer("basis", dct_matrix(size), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cepstra = torch.einsum("kh,bcdhw->bcdkw", self.basis.to(x.dtype), x)
        return torch.cat([x, cepstra], dim=1) if self.append else cepstra


class RACNN(nn.Module):
    """Table I: Conv1, max pool, RA1-RA3, avg pool; ``forward`` -> (B, N, C) tokens.

    ``attn_layer(channels)`` builds each RA block's attention (CBAM3d);
    None turns attention off (the ablation). ``block_kernel`` 3 gives the RA
    blocks' unstrided convs a 3x3 (frequency, time) kernel: Table I's are
    1x1 there, so no conv but the strided ones ever mixes neighbouring bins.
    ``freq_coord`` gives Conv1 a frequency-position channel (FrequencyCoordinate);
    ``freq_transform`` (with the input's ``input_size``) turns or adds the mel
    rows into cepstra first (FrequencyDCT).
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: tuple[int, int, int] = (32, 96, 288),
        groups: int = 8,
        attn_layer: Callable[[int], nn.Module] | None = CBAM3d,
        conv1: str = "table1",
        block_kernel: int = 1,
        freq_coord: bool = False,
        freq_transform: str = "none",
        input_size: int | None = None,
    ) -> None:
        super().__init__()
        self.out_channels = widths[-1]
        self.freq_dct, append = None, freq_transform == "dct_append"
        if freq_transform != "none":
            if input_size is None:
                raise ConfigError(f"racnn.freq_transform={freq_transform!r} needs the input "
                                  "size (racnn.input_size): the DCT is over its rows")
            self.freq_dct = FrequencyDCT(input_size, append)
        self.freq_coord = FrequencyCoordinate() if freq_coord else None
        spec, padding = (CONV1_OVERLAP, CONV1_OVERLAP_PADDING) if conv1 == "overlap5" else (CONV1, 0)
        conv1_in = in_channels * (1 + int(append)) + int(freq_coord)
        self.conv1 = ConvBlock3d(conv1_in, widths[0], spec.kernel, spec.stride, groups,
                                 padding=padding)
        self.maxpool = _pool(MAX_POOL, nn.MaxPool3d)
        blocks, channels = [], widths[0]
        for specs, width in zip(RA_BLOCKS, widths):
            attention = attn_layer(width) if attn_layer else nn.Identity()
            blocks.append(ra_block(specs, channels, width, groups, attention, block_kernel))
            channels = width
        self.ra1, self.ra2, self.ra3 = blocks
        self.avgpool = _pool(AVG_POOL, nn.AvgPool3d)

    @classmethod
    def from_config(cls, cfg: RACNNConfig) -> RACNN:
        racnn_layer_shapes(cfg)  # fail early, with a clear message, on a too-small input
        attn_layer = None
        if cfg.attention:
            attn_layer = partial(
                CBAM3d,
                reduction=cfg.reduction,
                spatial_kernel=cfg.spatial_kernel,
                min_hidden=cfg.attention_min_hidden,
            )
        return cls(cfg.in_channels, cfg.widths, cfg.groups, attn_layer, cfg.conv1, cfg.block_kernel,
                   cfg.freq_coord, cfg.freq_transform, cfg.input_size)

    def table_i_layers(self) -> dict[str, nn.Module]:
        """Table I row name -> the module producing that row's output."""
        layers = {CONV1.name: self.conv1, MAX_POOL.name: self.maxpool}
        for block, specs in zip((self.ra1, self.ra2, self.ra3), RA_BLOCKS):
            layers.update({s.name: getattr(block.convs, s.name.lower()) for s in specs})
        layers[AVG_POOL.name] = self.avgpool
        return layers

    def forward_features(self, x: torch.Tensor, final_pool: bool = True) -> torch.Tensor:
        """(B, 3, D, S, S) -> last feature map (B, C, D', H', W'); without
        ``final_pool``, Conv7's map, before Table I's average pool."""
        if self.freq_dct is not None:
            x = self.freq_dct(x)
        if self.freq_coord is not None:
            x = self.freq_coord(x)
        x = self.ra3(self.ra2(self.ra1(self.maxpool(self.conv1(x)))))
        return self.avgpool(x) if final_pool else x

    def forward(self, x: torch.Tensor, final_pool: bool = True) -> torch.Tensor:
        """(B, 3, D, S, S) -> (B, D'*H'*W', C) tokens in (depth, height, width) order."""
        return self.forward_features(x, final_pool).flatten(2).transpose(1, 2)


class PooledHead(nn.Module):
    """A speech head: ``embed`` pools the (B, T, C) tokens to one (B, E) vector
    per clip, then dropout and an FC give the logits. The embedding is what
    a readout other than the FC (``avser.speaker_adapt``) reads. A head with
    ``final_pool`` False reads Conv7's tokens, before Table I's average pool."""

    final_pool = True

    def __init__(self, embed_dim: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, n_classes)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.fc(self.drop(self.embed(tokens)))


class MeanTokenHead(PooledHead):
    """The first pretraining head: the mean over all tokens."""

    def __init__(self, channels: int, n_classes: int, dropout: float = 0.0) -> None:
        super().__init__(channels, n_classes, dropout)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.mean(dim=1)


class BiGRUSpeechHead(PooledHead):
    """The paper's reading of the tokens (section II-C, speech alone): a
    bidirectional GRU over the token sequence, the mean of its outputs."""

    def __init__(self, channels: int, n_classes: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__(2 * hidden, n_classes, dropout)
        self.gru = nn.GRU(channels, hidden, batch_first=True, bidirectional=True)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.gru(tokens)
        return states.mean(dim=1)


class BandStatisticsHead(PooledHead):
    """Statistics pooling per frequency band: the mean and std over the time
    positions (depth and width) of each of the H' bands, concatenated, FC.

    The RACNN's convolutions are shift-equivariant with valid padding, so a
    token does not know its band; a mean over all tokens then discards where
    in frequency energy lies, which per-mel-bin statistics show to carry
    emotion (an SVM on them: ``bench/speech_baseline.py``).
    """

    def __init__(self, grid: Triple, channels: int, n_classes: int, dropout: float = 0.0,
                 final_pool: bool = True) -> None:
        super().__init__(2 * grid[1] * channels, n_classes, dropout)
        self.grid = grid
        self.final_pool = final_pool

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        depth, bands, width = self.grid
        # (B, D'*H'*W', C) in (depth, height, width) order -> (B, H', D'*W', C)
        grid = tokens.unflatten(1, (depth, bands, width)).transpose(1, 2).flatten(2, 3)
        std, mean = torch.std_mean(grid, dim=2, correction=0)
        return torch.cat([mean, std], dim=-1).flatten(1)


def speech_head(cfg: RACNNConfig) -> PooledHead:
    if cfg.head in ("bands", "bands_fine"):
        final_pool = cfg.head == "bands"
        last_conv = RA_BLOCKS[-1][-1]  # Conv7, the map Table I's average pool reads
        *grid, channels = racnn_layer_shapes(cfg)[(AVG_POOL if final_pool else last_conv).name]
        return BandStatisticsHead(tuple(grid), channels, cfg.n_classes, cfg.dropout, final_pool)
    if cfg.head == "bigru":
        return BiGRUSpeechHead(cfg.widths[-1], cfg.n_classes, cfg.head_hidden, cfg.dropout)
    return MeanTokenHead(cfg.widths[-1], cfg.n_classes, cfg.dropout)


class SpeechEmotionNet(nn.Module):
    """RACNN + speech_head, trained on speech alone; ``forward`` -> (B, n_classes)
    logits, and with ``with_embedding`` also the (B, E) embedding the head's FC
    reads (through ``forward``, so that DDP sees the call).

    With a ``speaker_adversary`` (training only), ``forward(...,
    adversary_scale=s)`` also returns its speaker logits, read through a
    gradient reversal of strength ``s``."""

    def __init__(self, racnn: RACNN, speech_head: PooledHead,
                 speaker_adversary: SpeakerAdversary | None = None) -> None:
        super().__init__()
        self.racnn = racnn
        self.speech_head = speech_head
        self.speaker_adversary = speaker_adversary

    @classmethod
    def from_config(cls, cfg: RACNNConfig | ModelConfig) -> SpeechEmotionNet:
        cfg = cfg.racnn if isinstance(cfg, ModelConfig) else cfg
        head = speech_head(cfg)
        adversary = None
        if cfg.adversary_speakers:
            adversary = SpeakerAdversary(head.fc.in_features, cfg.adversary_speakers,
                                         cfg.adversary_hidden)
        return cls(RACNN.from_config(cfg), head, adversary)

    def forward(self, speech: torch.Tensor, with_embedding: bool = False,
                adversary_scale: float | None = None):
        embedding = self.embed(speech)
        logits = self.speech_head.fc(self.speech_head.drop(embedding))
        if adversary_scale is not None:
            if self.speaker_adversary is None:
                raise ConfigError("adversary_scale given to a network without a speaker "
                                  "adversary; set racnn.adversary_speakers")
            return logits, embedding, self.speaker_adversary(embedding, adversary_scale)
        return (logits, embedding) if with_embedding else logits

    def embed(self, speech: torch.Tensor) -> torch.Tensor:
        """(B, E): what the head's FC reads."""
        return self.speech_head.embed(self.racnn(speech, self.speech_head.final_pool))


def racnn_state(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The RACNN part of a state dict: a bare RACNN's as is, or the ``racnn.*``
    entries of a SpeechEmotionNet / AudioVisualSER checkpoint (heads dropped)."""
    prefix = "racnn."
    if not any(key.startswith(prefix) for key in state_dict):
        return dict(state_dict)
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
