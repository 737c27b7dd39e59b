"""Typed configuration of the networks (paper section II).

Every size is a field here; ``configs/model/paper.yaml`` holds the paper's
values (and says which ones the paper leaves open), ``configs/model/tiny.yaml``
a small network for tests and the demo. Load with
``avser.config.load_model_config(path)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avser.errors import ConfigError

# The ablations of the fusion model (paper Table III and the attention study).
# Attention on/off is orthogonal: ``racnn.attention`` and ``agru.attention``.
# "vision" (appearance + geometry, no RACNN) is the vision-only baseline of the
# modality comparison; the paper's ablations are the other four.
VARIANTS = ("speech", "speech_appearance", "speech_geometry", "full", "vision")
# Conv1 of the RACNN: Table I's 3x2x2 patches, or overlapping 3x5x5 kernels
# (padding 2, the same stride and output size) that see across patch edges.
CONV1_KINDS = ("table1", "overlap5")
# The pretraining speech head: mean over the 147 tokens, a Bi-GRU over them, or
# "bands": mean and std over time of each frequency band's tokens (a head that
# knows where in frequency a pattern lies; the mean over all tokens does not),
# or "bands_fine": the same statistics of Conv7's map, before Table I's final
# average pool, which halves the bands (at input 112 it keeps 3 of Conv7's 7
# and drops the 7th).
SPEECH_HEADS = ("mean", "bigru", "bands", "bands_fine")
# A fixed transform of each segment's frequency axis before Conv1: none (Table
# I), "dct": the orthonormal DCT-II over the mel rows in place of them (the
# rows become cepstra: a compact, decorrelated spectral envelope, what the
# reference SVM reads), "dct_append": the cepstra as extra channels beside the
# log-mels (Conv1 reads both).
FREQ_TRANSFORMS = ("none", "dct", "dct_append")


@dataclass
class RACNNConfig:
    """The 3D residual attention CNN of Table I (kernels and strides are fixed
    by the table in ``avser.models.racnn``; sizes are here)."""

    in_channels: int = 3  # log-mel, delta, delta-delta
    depth: int = 9  # D time segments
    input_size: int = 224  # each segment resized to input_size x input_size
    widths: tuple[int, int, int] = (32, 96, 288)  # Conv1+RA1, RA2, RA3
    groups: int = 8  # GroupNorm groups; must divide every width
    attention: bool = True  # CBAM in the RA blocks (off for the ablation)
    reduction: int = 16  # channel attention: hidden = channels // reduction ...
    attention_min_hidden: int = 8  # ... but at least this (see ChannelAttention3d)
    spatial_kernel: int = 7  # spatial attention conv kernel (cubic)
    n_classes: int = 8  # classes of the pretraining speech_head
    dropout: float = 0.3  # before the speech_head's FC
    conv1: str = "table1"  # one of CONV1_KINDS
    block_kernel: int = 1  # RA blocks' unstrided convs: (frequency, time) kernel; Table I: 1
    # Conv1 also reads a channel holding each row's frequency position (CoordConv
    # on the mel axis, avser.models.racnn.FrequencyCoordinate); False: Table I.
    freq_coord: bool = False
    freq_transform: str = "none"  # one of FREQ_TRANSFORMS
    head: str = "mean"  # the pretraining speech_head: one of SPEECH_HEADS
    head_hidden: int = 128  # bigru head: units per direction
    # The input transform trims leading and trailing silence to the frames
    # within trim_db of the clip's loudest (RacnnInputConfig.trim_db); None:
    # the whole clip, as the paper. Part of the model: it must read new clips
    # as it was trained.
    trim_db: float | None = None
    # The input transform subtracts each mel bin's mean over the clip
    # (RacnnInputConfig.bin_mean); False: one mean per channel, as the paper.
    bin_mean: bool = False
    # Speaker-adversarial head (avser.models.adversary): the number of training
    # speakers it tells apart, set from the training split; 0 is none (the paper).
    adversary_speakers: int = 0
    adversary_hidden: int = 128

    def __post_init__(self) -> None:
        for key, value, choices in (("conv1", self.conv1, CONV1_KINDS),
                                    ("head", self.head, SPEECH_HEADS),
                                    ("freq_transform", self.freq_transform, FREQ_TRANSFORMS)):
            if value not in choices:
                raise ConfigError(f"racnn.{key}={value!r}; choose one of {list(choices)}")
        self.widths = tuple(self.widths)
        if len(self.widths) != 3:
            raise ConfigError(f"racnn.widths must hold 3 stage widths, got {self.widths}")
        bad = [w for w in self.widths if w % self.groups]
        if bad:
            raise ConfigError(
                f"racnn.groups={self.groups} must divide every width; {bad} do not "
                "(GroupNorm splits channels into equal groups)"
            )
        if self.adversary_speakers < 0 or self.adversary_hidden < 1:
            raise ConfigError(
                f"racnn.adversary_speakers ({self.adversary_speakers}) must be >= 0 and "
                f".adversary_hidden ({self.adversary_hidden}) >= 1"
            )
        if self.block_kernel < 1 or self.block_kernel % 2 == 0:
            raise ConfigError(
                f"racnn.block_kernel={self.block_kernel} must be odd and >= 1 (1 is Table I; "
                "odd kernels are padded to keep Table I's output sizes)"
            )
        if self.trim_db is not None and self.trim_db <= 0:
            raise ConfigError(f"racnn.trim_db={self.trim_db} must be > 0 dB (or null: no trim)")
        if self.spatial_kernel % 2 == 0:
            raise ConfigError(
                f"racnn.spatial_kernel={self.spatial_kernel} must be odd so the "
                "spatial attention map keeps the feature map's size"
            )


@dataclass
class AppearanceConfig:
    """The static appearance CNN over keyframe face crops (EfficientNet-B0)."""

    model_name: str = "efficientnet_b0"  # any timm model name
    # Expected pooled feature size; None takes the model's. A mismatch is an error.
    feature_dim: int | None = 1280
    # Local weights (timm checkpoint, .pth/.safetensors); None -> random init
    # unless allow_download.
    weights_file: str | None = None
    allow_download: bool = False
    freeze: bool = False
    image_size: int = 224  # face crop side the transform resizes to


@dataclass
class AGRUConfig:
    """Seven region GRUs over the keyframes' landmarks, with region attention."""

    hidden: int = 64  # per region; geometric feature = 7 * hidden
    attention: bool = True
    attention_hidden: int = 32  # size of the region scoring MLP


@dataclass
class FusionConfig:
    """Deep Bi-GRU fusion and the hybrid-feature head (section II-C)."""

    variant: str = "full"  # one of VARIANTS
    hidden: int = 128  # per direction; speech-appearance feature = 2 * hidden
    layers: int = 2
    dropout: float = 0.3  # between GRU layers and before the FC
    # Width of the Bi-GRU input tokens; None -> the RACNN's last width (288).
    token_dim: int | None = None
    w: float = 0.5  # hybrid = w * speech_appearance + (1 - w) * geometric

    def __post_init__(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"fusion.variant={self.variant!r}; choose one of {VARIANTS}")
        if not 0.0 <= self.w <= 1.0:
            raise ConfigError(f"fusion.w={self.w} must lie in [0, 1]")

    @property
    def uses_speech(self) -> bool:
        return self.variant != "vision"

    @property
    def uses_appearance(self) -> bool:
        return self.variant in ("speech_appearance", "full", "vision")

    @property
    def uses_geometry(self) -> bool:
        return self.variant in ("speech_geometry", "full", "vision")


@dataclass
class ModelConfig:
    n_classes: int = 8  # emotions of the fusion head
    keyframes: int = 9  # K face crops / landmark frames per clip
    racnn: RACNNConfig = field(default_factory=RACNNConfig)
    appearance: AppearanceConfig = field(default_factory=AppearanceConfig)
    agru: AGRUConfig = field(default_factory=AGRUConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
