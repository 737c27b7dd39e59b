"""AGRUs: facial geometric features from the 68 landmarks of the K keyframes.

Seven GRU subnetworks, one per landmark region, each reading its region's
normalised (x, y) points across the keyframes; an attention over regions
weighs what each region contributes; the weighted region states are
concatenated into the holistic geometric feature (paper section II-B-3).
"""

from __future__ import annotations

import torch
from torch import nn

# N_LANDMARKS is re-exported: the AGRUs' input is (B, K, N_LANDMARKS, 2).
from avser.landmark_regions import N_LANDMARKS, REGIONS  # noqa: F401
from avser.models.config import AGRUConfig

# The shared layout's regions as index ranges, which the region GRUs are sized by.
LANDMARK_REGIONS: dict[str, range] = {
    name: range(part.start, part.stop) for name, part in REGIONS.items()
}


class RegionAttention(nn.Module):
    """Softmax over regions of a score MLP applied to each region's state."""

    def __init__(self, hidden: int, attention_hidden: int) -> None:
        super().__init__()
        # No bias on the last layer: softmax ignores a shift shared by all regions.
        self.score = nn.Sequential(
            nn.Linear(hidden, attention_hidden),
            nn.Tanh(),
            nn.Linear(attention_hidden, 1, bias=False),
        )

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """(B, R, hidden) -> (B, R) weights summing to 1."""
        return self.score(states).squeeze(-1).softmax(dim=-1)


class AGRUs(nn.Module):
    """(B, K, 68, 2) landmarks -> ((B, 7 * hidden) geometric feature, (B, 7) region weights).

    Each region's state is scaled by ``n_regions * weight``: uniform weights
    (attention off) then leave the concatenation unchanged, so the attention
    ablation compares features of the same scale.
    """

    def __init__(
        self,
        hidden: int = 64,
        attention: bool = True,
        attention_hidden: int = 32,
        regions: dict[str, range] = LANDMARK_REGIONS,
        coords: int = 2,
    ) -> None:
        super().__init__()
        self.regions = dict(regions)
        self.grus = nn.ModuleDict(
            {
                name: nn.GRU(len(idx) * coords, hidden, batch_first=True)
                for name, idx in regions.items()
            }
        )
        self.attention = RegionAttention(hidden, attention_hidden) if attention else None
        self.out_features = len(regions) * hidden

    @classmethod
    def from_config(cls, cfg: AGRUConfig) -> AGRUs:
        return cls(cfg.hidden, cfg.attention, cfg.attention_hidden)

    def region_states(self, landmarks: torch.Tensor) -> torch.Tensor:
        """(B, K, 68, 2) -> (B, R, hidden): each region GRU's last hidden state."""
        states = []
        for name, gru in self.grus.items():
            points = landmarks[:, :, self.regions[name]].flatten(2)  # (B, K, n_points * 2)
            states.append(gru(points)[1][-1])
        return torch.stack(states, dim=1)

    def forward(self, landmarks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        states = self.region_states(landmarks)
        batch, n_regions = states.shape[:2]
        if self.attention is None:
            weights = states.new_full((batch, n_regions), 1.0 / n_regions)
        else:
            weights = self.attention(states)
        features = states * (n_regions * weights).unsqueeze(-1)
        return features.flatten(1), weights
