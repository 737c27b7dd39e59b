"""Gated promotion on a real registry, evaluated on held-out synthetic speakers."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avser import config as configlib
from avser.data.manifest import write_manifest
from avser.data.synthetic import SynthConfig, generate_corpus
from avser.errors import AvserError
from avser.platform import promotion, registry, tracking
from avser.platform.promotion import PromotionGate, decide, promote_gated
from avser.platform.runs import TRAIN_SPEAKERS_TAG

REPO = Path(__file__).resolve().parents[1]
NAME = "avser-gated"
TRAIN_SPEAKERS = "spk01,spk02,spk03"


def report(ua: float, recalls: dict[str, float]) -> dict:
    return {"ua": ua, "per_class_recall": recalls}


def test_the_rule_on_margins_drops_and_floors() -> None:
    gate = PromotionGate(manifest="m.parquet", min_ua_gain=0.02, max_recall_drop=0.1,
                         min_ua=0.5, min_class_recall=0.2)
    champion = report(0.60, {"a": 0.6, "b": 0.6})
    assert decide(report(0.70, {"a": 0.65, "b": 0.75}), champion, gate)[0]
    refused, why = decide(report(0.61, {"a": 0.6, "b": 0.62}), champion, gate)
    assert not refused and "gain +0.010 is below +0.020" in why
    refused, why = decide(report(0.70, {"a": 0.95, "b": 0.45}), champion, gate)
    assert not refused and "recall of b falls by 0.150" in why
    assert decide(report(0.55, {"a": 0.5, "b": 0.6}), None, gate)[0]
    assert "below the floor" in decide(report(0.45, {"a": 0.5, "b": 0.4}), None, gate)[1]
    assert "recall of a" in decide(report(0.55, {"a": 0.1, "b": 1.0}), None, gate)[1]


@pytest.fixture(scope="module")
def registry_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("promotion")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        yield root


def demo_voice(**overrides) -> SynthConfig:
    return configlib.load(SynthConfig, REPO / "configs/synthetic_demo.yaml",
                          [f"{k}={v}" for k, v in overrides.items()])


@pytest.fixture(scope="module")
def corpora(registry_store):
    """Training clips of spk01-03 and a held-out manifest of new speakers (spk09-10)."""
    train = generate_corpus(registry_store / "train", 36, seed=1, progress=False,
                            cfg=demo_voice(n_speakers=3))
    held_out = generate_corpus(registry_store / "eval", 24, seed=2, progress=False,
                               cfg=demo_voice(first_speaker=9, n_speakers=2))
    manifest = registry_store / "eval.parquet"
    write_manifest(held_out, manifest)
    return train, manifest


def speech_bundle(folder: Path, clips, steps: int) -> Path:
    """The tiny speech network after ``steps`` Adam steps on ``clips`` (0: untrained)."""
    from avser.bundle import ModelBundle, save_bundle
    from avser.config import load_model_config
    from avser.data.synthetic import EMOTIONS
    from avser.features.audio import load_logmel
    from avser.features.config import FeatureConfig
    from avser.features.racnn_input import racnn_input
    from avser.models.factory import build_network, racnn_input_config

    model_cfg = load_model_config(REPO / "configs/model/tiny.yaml",
                                  [f"n_classes={len(EMOTIONS)}", f"racnn.n_classes={len(EMOTIONS)}"])
    torch.manual_seed(0)
    net = build_network("speech", model_cfg)
    features = FeatureConfig()
    input_cfg = racnn_input_config(model_cfg, 0.5)
    speech = racnn_input([torch.from_numpy(load_logmel(c.audio_path, features.audio)) for c in clips],
                         input_cfg)
    labels = torch.tensor([c.label for c in clips])
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(steps):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(net(speech), labels).backward()
        optimizer.step()
    path = folder / f"speech-{steps}.avser.pt"
    return save_bundle(ModelBundle("speech", model_cfg, features, 0.5, list(EMOTIONS),
                                   net.eval().state_dict(), {}), path)


def register(bundle: Path, key: str, speakers: str = TRAIN_SPEAKERS) -> int:
    run_id = tracking.start_run("avser-promotion-test", key, key, tags={TRAIN_SPEAKERS_TAG: speakers})
    return registry.register_version(run_id, NAME, bundle, {})


def test_the_gate_promotes_a_better_candidate_and_refuses_a_worse_one(registry_store, corpora):
    train, manifest = corpora
    gate = PromotionGate(manifest=str(manifest), min_ua_gain=0.01, max_recall_drop=1.0,
                         min_ua=0.0, min_class_recall=0.0)
    untrained, trained = (speech_bundle(registry_store, train, s) for s in (0, 150))

    first = register(untrained, "v-untrained")
    decision = promote_gated(NAME, "candidate", "champion", gate)  # no champion: the floors
    assert decision.promote and "no champion yet" in decision.reason
    assert int(registry.model_version(NAME, "champion").version) == first

    better = register(trained, "v-trained")
    decision = promote_gated(NAME, "candidate", "champion", gate)
    cand, champ = decision.scores["candidate"]["ua"], decision.scores["champion"]["ua"]
    assert cand > champ + gate.min_ua_gain, (cand, champ)
    assert decision.promote and int(registry.model_version(NAME, "champion").version) == better

    worse = register(untrained, "v-untrained-again")
    decision = promote_gated(NAME, "candidate", "champion", gate)
    assert not decision.promote and "below" in decision.reason
    assert int(registry.model_version(NAME, "champion").version) == better  # unchanged

    client = tracking.client()
    assert client.get_model_version(NAME, str(worse)).tags[promotion.VERDICT_TAG] == "refused"
    assert client.get_model_version(NAME, str(better)).tags[promotion.VERDICT_TAG] == "refused"
    run = client.get_run(decision.run_id)
    assert run.data.tags["verdict"] == "refused" and run.data.tags["candidate_version"] == str(worse)
    assert {"candidate_ua", "champion_ua"} <= set(run.data.metrics)
    figures = {a.path for a in client.list_artifacts(decision.run_id, "figures")}
    assert figures == {"figures/confusion_candidate.png", "figures/confusion_champion.png"}


def test_speakers_the_candidate_trained_on_are_refused(registry_store, corpora):
    train, manifest = corpora
    register(speech_bundle(registry_store, train, 0), "v-shared", speakers="spk02,spk09")
    gate = PromotionGate(manifest=str(manifest), min_ua=0.0, min_class_recall=0.0)
    with pytest.raises(AvserError, match=r"shares speakers \['spk09'\]"):
        promote_gated(NAME, "candidate", "champion", gate)
    forced = promote_gated(NAME, "candidate", "champion", gate, force_reason="hotfix")
    assert forced.promote and forced.reason.startswith("forced (hotfix)")
