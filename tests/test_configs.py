"""Every YAML under configs/ loads into its typed dataclass; values are
converted and checked on load and on ``--set``."""

from __future__ import annotations

from pathlib import Path

import pytest

from avser import config as configlib
from avser.data import synthetic
from avser.data.synthetic import SynthConfig
from avser.errors import AvserError, ConfigError
from avser.features.augment import SpeechAugmentConfig
from avser.models.config import ModelConfig
from avser.platform.ablation import AblationConfig
from avser.platform.config import PreprocessConfig, TrainConfig
from avser.platform.promotion import PromotionGate
from avser.platform.tune import TuneConfig

REPO = Path(__file__).resolve().parents[1]
KIND_BY_PREFIX = {"model/": ModelConfig, "preprocess_": PreprocessConfig, "tune_": TuneConfig,
                  "train_": TrainConfig, "pretrain_": TrainConfig, "ablation_": TrainConfig,
                  "synthetic_": SynthConfig, "promotion": PromotionGate}
CONFIGS = sorted(p.relative_to(REPO / "configs").as_posix() for p in (REPO / "configs").rglob("*.yaml"))


def kind_of(name: str):
    kinds = [cls for prefix, cls in KIND_BY_PREFIX.items() if name.startswith(prefix)]
    assert kinds, f"configs/{name}: no dataclass known for this file name; add it to KIND_BY_PREFIX"
    if kinds[0] is TrainConfig and name.startswith("ablation_"):
        # ablation_*.yaml: a whole ablation for jobs/ablate.py (it has cells), or
        # the one recipe a single-run ablation trains (jobs/train_fusion.py --variant).
        import yaml

        if "cells" in yaml.safe_load((REPO / "configs" / name).read_text()):
            return AblationConfig
    return kinds[0]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_and_validates(name: str) -> None:
    cfg = configlib.load(kind_of(name), REPO / "configs" / name)
    again = configlib.from_dict(type(cfg), configlib.to_dict(cfg))
    assert again == cfg  # saved and reloaded, nothing changes type


def test_the_demo_corpus_needs_both_modalities() -> None:
    """Each modality's paired emotions are near twins; no pair is shared, so
    voice and face together tell every emotion apart."""
    from avser.data.synthetic.face import EXPRESSION_KEYS
    from avser.data.synthetic.voice import PROSODY_KEYS

    cfg = configlib.load(SynthConfig, REPO / "configs" / "synthetic_demo.yaml")
    synthetic.validate(cfg)

    def twins(table, keys):
        rows = {e: [table[e][k] for k in keys] for e in cfg.emotions}
        nearest = {}
        for e, row in rows.items():
            gaps = {o: sum(abs(a - b) for a, b in zip(row, other)) for o, other in rows.items() if o != e}
            nearest[e] = min(gaps, key=gaps.get)
        return {frozenset((e, o)) for e, o in nearest.items()}

    voice = twins(cfg.voice.prosody, PROSODY_KEYS)
    face = twins(cfg.face.expressions, EXPRESSION_KEYS)
    assert len(voice) == len(face) == len(cfg.emotions) // 2  # a partition into pairs
    assert not voice & face


def test_numbers_from_the_command_line_are_numbers() -> None:
    # YAML reads 3e-4 (no dot) as a string; the field says float.
    cfg = configlib.load(TrainConfig, None, ["optim.lr=3e-4", "optim.max_epochs=5.0", "seed=7"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.max_epochs == 5 and isinstance(cfg.optim.max_epochs, int)


@pytest.mark.parametrize("override, named", [
    ("optim.lr=fast", "optim.lr"),
    ("optim.max_epochs=2.5", "optim.max_epochs"),
    ("materialize=maybe", "materialize"),
    ("optim=3", "optim"),
    ("model_overrides=5", "model_overrides"),
    ("mixed_precision=fp16", "mixed_precision"),
    ("stage=null", "stage"),
])
def test_bad_values_name_their_key(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        configlib.load(TrainConfig, None, [override])


def test_nested_sections_and_tuples_convert() -> None:
    cfg = configlib.from_dict(ModelConfig, {"racnn": {"widths": [8, 16, 32], "groups": 8}})
    assert cfg.racnn.widths == (8, 16, 32)
    with pytest.raises(ConfigError, match=r"racnn\.widths"):
        configlib.from_dict(ModelConfig, {"racnn": {"widths": [8, 16]}})
    aug = configlib.from_dict(SpeechAugmentConfig, {"tempo": "0.2", "time_masks": 1})
    assert aug.tempo == 0.2


@pytest.mark.parametrize("cls, override, named", [
    (TuneConfig, "num_samples=-1", "num_samples"),
    (TuneConfig, "search_space={lr: {type: normal}}", "search space type"),
    (PreprocessConfig, "rows_per_part=0", "rows_per_part"),
    (PreprocessConfig, "features.landmarks.backend=bogus", "landmarks.backend"),
    (TrainConfig, "stage=fusoin", "stage"),
    (TrainConfig, "init=registry", "init"),
    (TrainConfig, "num_workers=0", "num_workers"),
])
def test_out_of_range_and_unknown_choices_are_refused_on_load(cls, override, named) -> None:
    with pytest.raises(AvserError, match=named):  # a ConfigError, or the backend's own error
        configlib.load(cls, None, [override])


def test_tune_samples_reach_the_config_as_typed_values() -> None:
    from avser.platform.tune import apply_params

    # 1e-05 printed and read back as YAML would be the string '1e-05'.
    cfg = apply_params(TrainConfig(), {"optim.lr": 1e-05, "optim.batch_size": 16,
                                       "model.fusion.w": 0.25})
    assert cfg.optim.lr == 1e-05 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.batch_size == 16
    assert cfg.model_overrides[-1] == "fusion.w=0.25"
