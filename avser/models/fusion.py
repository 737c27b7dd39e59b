"""The fusion model of section II-C and the full audio-visual network.

Speech tokens (RACNN) and projected appearance tokens (AppearanceCNN) run
through one deep Bi-GRU -> speech-appearance feature; the AGRUs' geometric
feature, projected to the same size, is mixed in by a weighted sum -> hybrid
feature; an FC layer gives the logits (softmax lives in the loss / predictor).
The hybrid feature is what KernelLDA is fitted on.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from avser.errors import ConfigError
from avser.models.agru import AGRUs
from avser.models.appearance import AppearanceCNN
from avser.models.config import ModelConfig
from avser.models.racnn import RACNN, racnn_state, racnn_token_shape

SPEECH, APPEARANCE = 0, 1  # rows of the modality embedding


class BiGRUFusion(nn.Module):
    """Deep Bi-GRU over [speech tokens ; appearance tokens] -> (B, 2 * hidden).

    Each token gets a learned modality embedding. Appearance tokens follow the
    speech tokens, so a clip without a face is simply a shorter sequence: the
    Bi-GRU runs on packed sequences and the feature is the mean of the top
    layer's outputs over each clip's own steps; no padding step leaks in.
    Without speech (``speech_dim=None``, the vision-only variant) the sequence
    is the K appearance tokens of every clip (zeros where there is no face).
    """

    def __init__(
        self,
        speech_dim: int | None,
        appearance_dim: int | None,
        token_dim: int,
        hidden: int,
        layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if speech_dim is None and appearance_dim is None:
            raise ValueError("BiGRUFusion needs speech or appearance tokens")
        self.speech_proj = None
        if speech_dim is not None:
            same = speech_dim == token_dim
            self.speech_proj = nn.Identity() if same else nn.Linear(speech_dim, token_dim)
        self.appearance_proj = nn.Linear(appearance_dim, token_dim) if appearance_dim else None
        self.modality = nn.Embedding(2 if appearance_dim else 1, token_dim)
        self.bigru = nn.GRU(
            token_dim,
            hidden,
            layers,
            batch_first=True,
            bidirectional=True,
            dropout=dropout if layers > 1 else 0.0,  # torch applies it between layers only
        )
        self.out_features = 2 * hidden

    def tokens(
        self, speech: torch.Tensor | None, appearance: torch.Tensor | None, visual_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The Bi-GRU input (B, N [+ K], token_dim) and each clip's length (B,)."""
        if self.speech_proj is None:
            visual = self.appearance_proj(appearance) + self.modality.weight[APPEARANCE]
            lengths = torch.full((visual.shape[0],), visual.shape[1], dtype=torch.long)
            return visual, lengths
        tokens = self.speech_proj(speech) + self.modality.weight[SPEECH]
        lengths = torch.full((speech.shape[0],), speech.shape[1], dtype=torch.long)
        if self.appearance_proj is not None and appearance is not None:
            visual = self.appearance_proj(appearance) + self.modality.weight[APPEARANCE]
            tokens = torch.cat([tokens, visual], dim=1)
            lengths = lengths + appearance.shape[1] * visual_mask.long().cpu()
        return tokens, lengths

    def forward(
        self,
        speech: torch.Tensor | None,
        appearance: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """speech (B, N, C) or None, appearance (B, K, F) or None, visual_mask (B,) bool."""
        if visual_mask is None:
            like = speech if speech is not None else appearance
            visual_mask = torch.ones(like.shape[0], dtype=torch.bool, device=like.device)
        tokens, lengths = self.tokens(speech, appearance, visual_mask)
        packed = pack_padded_sequence(tokens, lengths, batch_first=True, enforce_sorted=False)
        outputs, _ = pad_packed_sequence(self.bigru(packed)[0], batch_first=True)
        return outputs.sum(dim=1) / lengths.to(outputs)[:, None]


class HybridFeature(nn.Module):
    """hybrid = w * speech_appearance + (1 - w) * proj(geometric); clips without
    a face keep the speech(-appearance) feature alone."""

    def __init__(self, geometric_dim: int, dim: int, w: float = 0.5) -> None:
        super().__init__()
        self.geometric_proj = nn.Linear(geometric_dim, dim)
        self.w = w

    def forward(
        self, speech_appearance: torch.Tensor, geometric: torch.Tensor, visual_mask: torch.Tensor
    ) -> torch.Tensor:
        mixed = self.w * speech_appearance + (1 - self.w) * self.geometric_proj(geometric)
        return torch.where(visual_mask[:, None], mixed, speech_appearance)


class AVFeatures(NamedTuple):
    tokens: torch.Tensor | None  # (B, N, C) RACNN speech tokens; None without speech
    speech_appearance: torch.Tensor  # (B, 2 * fusion.hidden)
    geometric: torch.Tensor | None  # (B, 7 * agru.hidden), zeros for clips without a face
    region_weights: torch.Tensor | None  # (B, 7), zeros for clips without a face
    hybrid: torch.Tensor  # (B, 2 * fusion.hidden)
    visual_mask: torch.Tensor  # (B,) bool, as used


class AudioVisualSER(nn.Module):
    """Speech emotion recognition fusing visual information (paper Fig. 1(b)).

    ``forward(speech, faces=None, landmarks=None, visual_mask=None) -> (logits, hybrid)``

    - speech: (B, 3, D, S, S) 3D log-mel spectrograms.
    - faces: (B, K, 3, s, s) keyframe face crops, ImageNet-normalised floats.
    - landmarks: (B, K, 68, 2) normalised landmarks of the same keyframes.
    - visual_mask: (B,) bool, True where the clip has a face. When None it is
      all True if the visual inputs the variant needs are given, else all False.

    Audio-only inference: a masked clip (no face) contributes no appearance
    tokens (its Bi-GRU sequence is the N speech tokens alone, pooled over those
    steps) and its hybrid feature is the speech feature alone, skipping the
    geometric term. Its faces/landmarks are never read, so any placeholder
    (zeros) will do, and a whole batch may be audio-only.

    Returns logits (B, n_classes) and the hybrid feature (B, 2 * fusion.hidden).
    The ``fusion.variant`` config picks the ablation: speech, speech_appearance,
    speech_geometry, full, or vision (no RACNN: ``speech`` is ignored and may
    be None); networks a variant does not use are not built.
    """

    def __init__(
        self,
        racnn: RACNN | None,
        fusion: BiGRUFusion,
        head: nn.Module,
        appearance: AppearanceCNN | None = None,
        agrus: AGRUs | None = None,
        hybrid: HybridFeature | None = None,
    ) -> None:
        super().__init__()
        if (agrus is None) != (hybrid is None):
            raise ValueError("AGRUs and HybridFeature come together")
        if racnn is None and appearance is None:
            raise ValueError("a model without RACNN needs the appearance network")
        self.racnn = racnn
        self.appearance = appearance
        self.agrus = agrus
        self.fusion = fusion
        self.hybrid = hybrid
        self.head = head

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> AudioVisualSER:
        fc = cfg.fusion
        speech_dim = racnn_token_shape(cfg.racnn)[1] if fc.uses_speech else None
        appearance = AppearanceCNN.from_config(cfg.appearance) if fc.uses_appearance else None
        fusion = BiGRUFusion(
            speech_dim,
            appearance.out_features if appearance else None,
            # Without speech the tokens keep the width they would have beside it.
            fc.token_dim or cfg.racnn.widths[-1],
            fc.hidden,
            fc.layers,
            fc.dropout,
        )
        agrus = AGRUs.from_config(cfg.agru) if fc.uses_geometry else None
        hybrid = HybridFeature(agrus.out_features, fusion.out_features, fc.w) if agrus else None
        head = nn.Sequential(nn.Dropout(fc.dropout), nn.Linear(fusion.out_features, cfg.n_classes))
        racnn = RACNN.from_config(cfg.racnn) if fc.uses_speech else None
        return cls(racnn, fusion, head, appearance, agrus, hybrid)

    @property
    def uses_speech(self) -> bool:
        """False for the vision-only variant: ``speech`` is never read."""
        return self.racnn is not None

    def load_racnn_state(self, state_dict) -> None:
        """Transfer pretrained RACNN weights (paper Table III) from a RACNN,
        SpeechEmotionNet or AudioVisualSER state dict; other heads are ignored."""
        if not self.uses_speech:
            raise ConfigError("fusion.variant=vision has no RACNN to initialise; use init=scratch")
        try:
            self.racnn.load_state_dict(racnn_state(state_dict))
        except RuntimeError as exc:
            raise ConfigError(
                f"pretrained RACNN weights do not fit this model's RACNN: {exc}; "
                "the racnn section of the model config must match the pretraining one"
            ) from exc

    def _visual_mask(self, speech, faces, landmarks, visual_mask) -> torch.Tensor:
        needed = {"faces": (self.appearance, faces), "landmarks": (self.agrus, landmarks)}
        missing = [name for name, (net, x) in needed.items() if net is not None and x is None]
        if not self.uses_speech and missing:
            raise ValueError(f"the vision-only model needs {missing}")
        like = speech if self.uses_speech else faces
        if visual_mask is None:
            fill = not missing and (self.appearance is not None or self.agrus is not None)
            return torch.full((like.shape[0],), fill, dtype=torch.bool, device=like.device)
        if missing and visual_mask.any():
            raise ValueError(f"visual_mask marks clips with a face but {missing} were not given")
        return visual_mask.to(device=like.device, dtype=torch.bool)

    def _appearance(self, faces, mask) -> torch.Tensor | None:
        if self.appearance is None or faces is None:
            return None
        out = faces.new_zeros(*faces.shape[:2], self.appearance.out_features)
        if mask.any():
            # Under autocast the CNN answers in bf16; the zeros stay in the input's dtype.
            out[mask] = self.appearance(faces[mask]).to(out.dtype)
        return out

    def _geometry(self, landmarks, mask, like) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if self.agrus is None:
            return None, None
        geometric = like.new_zeros(mask.shape[0], self.agrus.out_features)
        weights = like.new_zeros(mask.shape[0], len(self.agrus.regions))
        if mask.any():
            found, found_weights = self.agrus(landmarks[mask])
            geometric[mask], weights[mask] = found.to(geometric.dtype), found_weights.to(weights.dtype)
        return geometric, weights

    def forward_features(
        self,
        speech: torch.Tensor | None,
        faces: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
    ) -> AVFeatures:
        """Every intermediate feature (for KLDA, attention plots, tests)."""
        mask = self._visual_mask(speech, faces, landmarks, visual_mask)
        tokens = self.racnn(speech) if self.uses_speech else None
        speech_appearance = self.fusion(tokens, self._appearance(faces, mask), mask)
        geometric, weights = self._geometry(landmarks, mask, speech_appearance)
        hybrid = speech_appearance
        if self.hybrid is not None:
            hybrid = self.hybrid(speech_appearance, geometric, mask)
        return AVFeatures(tokens, speech_appearance, geometric, weights, hybrid, mask)

    def forward(
        self,
        speech: torch.Tensor | None,
        faces: torch.Tensor | None = None,
        landmarks: torch.Tensor | None = None,
        visual_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hybrid = self.forward_features(speech, faces, landmarks, visual_mask).hybrid
        return self.head(hybrid), hybrid
