"""An ensemble of speech networks of one architecture, read as one network.

Seeds of one recipe disagree on new speakers by several points of UA
(BENCHMARKS.md, "Seeds and ensembles"); the mean of their probabilities is
steadier and better than a typical member. The ensemble keeps a speech
network's interface, so a bundle, ``avser predict``/``evaluate`` and the
speaker-adaptive readout use it unchanged:

- logits: ``log`` of the members' mean softmax probabilities (so a softmax
  of them is exactly that mean);
- embedding: the members' embeddings side by side, (B, members x E).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from avser.errors import ConfigError
from avser.models.racnn import SpeechEmotionNet


class SpeechEnsemble(nn.Module):
    def __init__(self, members: list[SpeechEmotionNet]) -> None:
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)

    def forward(self, speech: torch.Tensor, with_embedding: bool = False):
        outputs = [member(speech, with_embedding=True) for member in self.members]
        log_probs = torch.stack([logits.float().log_softmax(-1) for logits, _ in outputs])
        logits = torch.logsumexp(log_probs, dim=0) - math.log(len(outputs))
        if not with_embedding:
            return logits
        return logits, torch.cat([embedding for _, embedding in outputs], dim=-1)


def ensemble_state_dict(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Members' state dicts as one ``SpeechEnsemble`` state dict (``members.<i>.*``)."""
    return {f"members.{i}.{key}": value for i, state in enumerate(states)
            for key, value in state.items()}


def member_state_dicts(state: dict[str, torch.Tensor],
                       members: int) -> list[dict[str, torch.Tensor]]:
    """The inverse of :func:`ensemble_state_dict`: each member's own state dict (one
    network's ``state`` as is when ``members`` is 1), so that members of an exported
    ensemble can join another."""
    if members == 1:
        return [dict(state)]
    parts = [{key.split(".", 2)[2]: value for key, value in state.items()
              if key.startswith(f"members.{i}.")} for i in range(members)]
    if sum(map(len, parts)) != len(state) or not all(parts):
        raise ConfigError(f"a state dict of {members} ensemble members holds keys outside "
                          f"members.0 .. members.{members - 1}, or a member without any")
    return parts
