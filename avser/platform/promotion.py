"""Gated promotion: a candidate takes the champion alias only when it scores
better on a pinned evaluation set of speakers it never trained on.

The decision is an MLflow run (both models' metrics and confusion matrices,
the verdict and why) and tags on both versions, so the registry says why
each champion is champion.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from avser.data.manifest import read_manifest
from avser.errors import AvserError, ConfigError
from avser.metrics import plot_confusion
from avser.platform import registry, tracking
from avser.platform.runs import SPEAKER_SEPARATOR, TRAIN_SPEAKERS_TAG
from avser.predict import evaluate_manifest

VERDICT_TAG = "promotion.verdict"
REASON_TAG = "promotion.reason"
RUN_TAG = "promotion.run_id"


@dataclass
class PromotionGate:
    """What a candidate must show on ``manifest`` (configs/promotion.yaml)."""

    manifest: str = ""  # the pinned evaluation manifest; its speakers must be new to the candidate
    min_ua_gain: float = 0.01  # UA above the champion's, absolute
    max_recall_drop: float = 0.05  # no class's recall may fall by more than this
    # With no champion yet: absolute floors.
    min_ua: float = 0.5
    min_class_recall: float = 0.2
    experiment: str = "avser-promotion"

    def __post_init__(self) -> None:
        if not self.manifest:
            raise ConfigError("promotion gate: set manifest to the pinned evaluation manifest")
        for name in ("min_ua_gain", "max_recall_drop", "min_ua", "min_class_recall"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"promotion gate: {name}={getattr(self, name)} must lie in [-1, 1]")


@dataclass
class Decision:
    promote: bool
    reason: str
    scores: dict[str, dict] = field(default_factory=dict)  # "candidate"/"champion" -> report
    run_id: str | None = None


def check_speakers_disjoint(version, manifest_speakers: set[str], what: str) -> None:
    """The evaluation speakers must be none of the version's training speakers."""
    tags = tracking.client().get_run(version.run_id).data.tags
    trained = tags.get(TRAIN_SPEAKERS_TAG) or version.tags.get(TRAIN_SPEAKERS_TAG)
    if trained is None:
        raise AvserError(f"{what} (version {version.version}) records no training speakers "
                         f"({TRAIN_SPEAKERS_TAG}); re-register it with this avser, or use --force")
    shared = manifest_speakers & set(trained.split(SPEAKER_SEPARATOR))
    if shared:
        raise AvserError(f"the evaluation manifest shares speakers {sorted(shared)} with the "
                         f"training data of {what} (version {version.version}); pin a manifest "
                         "of held-out speakers in the gate config")


def decide(candidate: dict, champion: dict | None, gate: PromotionGate) -> tuple[bool, str]:
    """The gate's rule on two classification reports (champion None: floors)."""
    recalls = {k: v for k, v in candidate["per_class_recall"].items() if v is not None}
    if champion is None:
        worst = min(recalls, key=recalls.get)
        if candidate["ua"] < gate.min_ua:
            return False, f"UA {candidate['ua']:.3f} is below the floor {gate.min_ua:.3f}"
        if recalls[worst] < gate.min_class_recall:
            return False, (f"recall of {worst} {recalls[worst]:.3f} is below the floor "
                           f"{gate.min_class_recall:.3f}")
        return True, f"no champion yet; UA {candidate['ua']:.3f} and every recall pass the floors"
    gain = candidate["ua"] - champion["ua"]
    if gain < gate.min_ua_gain:
        return False, (f"UA {candidate['ua']:.3f} against the champion's {champion['ua']:.3f}: "
                       f"gain {gain:+.3f} is below {gate.min_ua_gain:+.3f}")
    drops = {k: champion["per_class_recall"][k] - v for k, v in recalls.items()
             if champion["per_class_recall"].get(k) is not None}
    worst = max(drops, key=drops.get)
    if drops[worst] > gate.max_recall_drop:
        return False, (f"recall of {worst} falls by {drops[worst]:.3f} "
                       f"(more than {gate.max_recall_drop:.3f})")
    return True, f"UA gain {gain:+.3f} and no class's recall falls by more than {gate.max_recall_drop:.3f}"


def promote_gated(name: str, source: str, target: str, gate: PromotionGate,
                  force_reason: str | None = None) -> Decision:
    """Evaluate ``name@source`` (and ``name@target`` if there is one) on the
    gate's manifest, promote when the gate passes (or ``force_reason`` is
    given), and record the decision either way."""
    candidate = registry.model_version(name, source)
    champion = _current(name, target)
    if champion is not None and champion.version == candidate.version:
        raise AvserError(f"{name}@{source} is already {name}@{target} (version {candidate.version})")
    speakers = set(map(str, read_manifest(gate.manifest)["speaker"].unique()))
    if force_reason is None:
        check_speakers_disjoint(candidate, speakers, f"{name}@{source}")
    scores = {"candidate": _score(name, candidate, gate.manifest)}
    if champion is not None:
        scores["champion"] = _score(name, champion, gate.manifest)
    passed, reason = decide(scores["candidate"], scores.get("champion"), gate)
    promote = passed or force_reason is not None
    if force_reason is not None:
        reason = f"forced ({force_reason}); the gate said: {reason}"
    decision = Decision(promote, reason, scores)
    decision.run_id = _record(name, candidate, champion, gate, decision)
    if promote:
        registry.set_alias(name, target, candidate.version)
    return decision


def _current(name: str, alias: str):
    try:
        return registry.model_version(name, alias)
    except AvserError:
        return None


def _score(name: str, version, manifest: str) -> dict:
    loaded = registry.load_avser_model(registry.registered_model_uri(name, version.version))
    report = evaluate_manifest(loaded.bundle, manifest)
    report["version"] = int(version.version)
    return report


def _record(name, candidate, champion, gate: PromotionGate, decision: Decision) -> str:
    verdict = "promoted" if decision.promote else "refused"
    run_id = tracking.start_run(gate.experiment, run_key=f"promotion/{name}/{uuid.uuid4().hex}",
                                run_name=f"{name}-v{candidate.version}-{verdict}",
                                tags={"candidate_version": candidate.version,
                                      "champion_version": champion.version if champion else "none",
                                      "verdict": verdict, "reason": decision.reason})
    tracking.log_params(run_id, {"gate": gate})
    metrics = {}
    with tempfile.TemporaryDirectory() as tmp:
        for who, report in decision.scores.items():
            metrics.update({f"{who}_ua": report["ua"], f"{who}_wa": report["wa"],
                            f"{who}_macro_f1": report["macro_f1"]})
            metrics.update({f"{who}_recall_{k}": v for k, v in report["per_class_recall"].items()
                            if v is not None})
            png = plot_confusion(np.asarray(report["confusion"]), report["label_names"],
                                 Path(tmp, f"confusion_{who}.png"),
                                 title=f"{who} (version {report['version']}): UA {report['ua']:.1%}")
            tracking.log_figure_file(run_id, png, "figures")
        Path(tmp, "decision.json").write_text(json.dumps(
            {"verdict": verdict, "reason": decision.reason, "scores": decision.scores}, indent=1))
        tracking.client().log_artifact(run_id, str(Path(tmp, "decision.json")))
    tracking.log_metrics(run_id, metrics, step=0)
    tracking.finish_run(run_id)
    for version in (candidate, champion):
        if version is not None:
            for key, value in ((VERDICT_TAG, verdict), (REASON_TAG, decision.reason), (RUN_TAG, run_id)):
                tracking.client().set_model_version_tag(name, version.version, key, value)
    return run_id
