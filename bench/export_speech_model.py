"""Package a speech run of ``bench/speech_recipe.py --ship`` as the shipped
model: ``avser/pretrained/NAME.pt`` (a plain-data bundle) and ``NAME.md``
(its model card).

    .venv/bin/python bench/export_speech_model.py --run out/recipe/ship-112 \
        --estimate out/recipe/p112-mid-overlap5 [--speaker-readout] \
        [--float16] [--out avser/pretrained/racnn-ravdess-a01-16.pt]

``--run`` trained on every speaker but its validation ones; ``--estimate``
is the same recipe's run with held-out test speakers: its test UA is the
card's estimate of accuracy on new speakers. ``--speaker-readout`` also fits
the speaker-adaptive readout (:mod:`avser.speaker_adapt`) on the run's
training clips and puts it in the bundle; the card then gives that
readout's estimate too, fitted and scored the same way on ``--estimate``.

Several ``--run`` folders (seeds of one recipe and split) make an ensemble
bundle (:mod:`avser.models.ensemble`); then ``--estimate`` names as many
runs, seeds of the held-out-speaker run, and the card's estimate is their
ensemble's test UA (the mean of their probabilities), scored the same way.

A ``--run`` entry may also be an exported bundle (``.pt``, e.g. the shipped
ensemble): its members join the new runs' (the same recipe and split, checked
on the card), and its card gives their commands and validation UAs; at least
one ``--run`` must be a run folder, whose split the readout is fitted on.
``--estimate-report FILE.json`` stands in for ``--estimate`` where the
estimate runs did not survive: the ensemble's measured test UA/WA, split and
commands, as ``bench/speech_ensemble.py`` printed them (no speaker-adaptive
estimate is then measured; the report may quote one, with what it was of).

``--float16`` stores the network weights as float16, half the file: they
are loaded back into float32, and the training and evaluation runs compute
in bf16 autocast, whose 8-bit mantissa is coarser than float16's 11.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import yaml

from avser.bundle import DEFAULT_WEIGHTS, float16_state, load_bundle, save_bundle
from avser.metrics import classification_report
from avser.models.ensemble import ensemble_state_dict, member_state_dicts

LICENCE = ("CC BY-NC-SA 4.0: trained on RAVDESS (Livingstone & Russo 2018, "
           "https://zenodo.org/record/1188976), whose licence is CC BY-NC-SA 4.0; these "
           "weights are for non-commercial use, with attribution, shared alike")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, nargs="+", type=Path,
                        help="the --ship run folder(s) or exported bundles: several members "
                             "make an ensemble")
    estimate = parser.add_mutually_exclusive_group(required=True)
    estimate.add_argument("--estimate", nargs="+", type=Path,
                          help="the held-out-speaker run folder(s), one per member")
    estimate.add_argument("--estimate-report", type=Path,
                          help="JSON of the ensemble's measured estimate (when its runs are gone)")
    parser.add_argument("--speaker-readout", action="store_true",
                        help="fit and ship the speaker-adaptive readout")
    parser.add_argument("--float16", action="store_true",
                        help="store the network weights as float16 (half the file)")
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    return parser.parse_args()


def read_run(folder: Path) -> dict:
    if folder.is_file():  # an exported bundle: its card tells how its members were made
        card = load_bundle(folder).card
        return {"bundle": card, "path": folder, "command": card["command"],
                "result": {"val_ua": card["validation_ua"]}}
    return {"result": json.loads((folder / "result.json").read_text()),
            "train": yaml.safe_load((folder / "train.yaml").read_text()),
            "model": yaml.safe_load((folder / "model.yaml").read_text()),
            "command": (folder / "command.txt").read_text().strip()}


HEADS = {"mean": "mean-pool", "bigru": "Bi-GRU", "bands": "per-frequency-band statistics",
         "bands_fine": "per-frequency-band statistics (before the final pool)"}


def card_of(ships: list[dict], members: int, estimate: dict) -> dict:
    """The model card of one network or an ensemble of ``members`` (``ships``: a run
    or a bundle each; the first run folder gives the recipe and split, which every
    bundle's card must share); ``estimate``: see :func:`estimate_of`."""
    ship = next(run for run in ships if "bundle" not in run)
    head = HEADS[ship["model"]["racnn"].get("head", "mean")]
    training_data = ("RAVDESS speech, actors 1-16 (16 kHz); training speakers "
                     f"{ship['result']['speakers']['train']}, validation (early stopping) "
                     f"{ship['result']['speakers']['val']}")
    recipe = {"optim": ship["train"]["optim"], "augment": ship["train"]["augment"],
              "mixed_precision": ship["train"]["mixed_precision"]}
    for run in ships:
        if "bundle" in run and (run["bundle"]["training_data"], run["bundle"]["recipe"]) != (
                training_data, recipe):
            raise SystemExit(f"{run['path']}: trained on other speakers or with another recipe "
                             "than the --run folders; an ensemble's members share both")
    speakers = estimate["speakers"]
    return {
        "model": (f"an ensemble of {members} seeds of " if members > 1 else "") +
                 f"RACNN (paper Table I layers) + {head} speech head, speech only",
        "racnn": ship["model"]["racnn"],
        "training_data": training_data,
        "recipe": recipe,
        "validation_ua": [ua for run in ships for ua in _as_list(run["result"]["val_ua"])],
        "speaker_disjoint_estimate": {
            "test_ua": estimate["test_ua"], "test_wa": estimate["test_wa"],
            "protocol": "speaker: trained on " + ", ".join(speakers["train"]) +
                        "; validated on " + ", ".join(speakers["val"]) +
                        "; tested once on " + ", ".join(speakers["test"]),
            "command": estimate["command"]},
        "command": " ; ".join(run["command"] for run in ships),
        "licence": LICENCE,
    }


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def estimate_of(estimates: list[dict], measured: dict | None) -> dict:
    """{test_ua, test_wa, speakers, command} of the estimate runs: one run's own test
    scores, or ``measured``, their ensemble's (the keys an ``--estimate-report`` holds)."""
    scores = measured or estimates[0]["result"]
    return {"test_ua": scores["test_ua"], "test_wa": scores["test_wa"],
            "speakers": estimates[0]["result"]["speakers"],
            "command": " ; ".join(run["command"] for run in estimates)}


def read_estimate_report(path: Path) -> dict:
    report = json.loads(path.read_text())
    missing = {"test_ua", "test_wa", "speakers", "command"} - set(report)
    if missing:
        raise SystemExit(f"{path}: an estimate report needs {sorted(missing)} too "
                         "(see bench/export_speech_model.py's docstring)")
    return report


def card_markdown(name: str, card: dict) -> str:
    est = card["speaker_disjoint_estimate"]
    return f"""# {name}: speech emotion model (RAVDESS actors 1-16)

- **What**: {card['model']}; input {card['racnn']['depth']} x {card['racnn']['input_size']} x
  {card['racnn']['input_size']} 3D log-mels (log-mel, delta, delta-delta), Conv1 `{card['racnn']['conv1']}`.
  Classes: the eight RAVDESS emotions. Weights stored as {card.get('weights_dtype', 'float32')}.
- **Training data**: {card['training_data']}.
- **Recipe**: `{json.dumps(card['recipe']['optim'])}`; augmentation `{json.dumps(card['recipe']['augment'])}`;
  precision `{card['recipe']['mixed_precision']}`.
- **Estimate on new speakers**: test UA **{est['test_ua']:.1%}** (WA {est['test_wa']:.1%}) with the same
  recipe under the `{est['protocol']}`. Made by `{est['command']}`.
{_adaptive_line(card)}- **Validation UA** of this model (its early-stopping speakers; per member): {_percents(card['validation_ua'])}.
- **Made by**: `{card['command']}`, then `{card['exported_by']}`.
- **Licence**: {card['licence']}.
- **Use**: `avser predict FILE.wav` (this is the default model) or
  `avser evaluate --weights avser/pretrained/{name}.pt --manifest M.parquet`{_adaptive_use(card)}.
  Loaded with `torch.load(weights_only=True)`: the file holds tensors and plain values only.
"""


def _percents(values) -> str:
    return ", ".join(f"{v:.1%}" for v in _as_list(values))


def _adaptive_line(card: dict) -> str:
    if "speaker_adaptive_estimate" not in card:
        return ""
    est = card["speaker_adaptive_estimate"]
    of = (f" (measured for {est['of']}; not for this model)" if est.get("of") else
          ", its readout fitted on the same training speakers")
    return (f"- **Speaker-adaptive estimate** (`avser evaluate --speaker-adaptive`, or `avser predict "
            f"--one-speaker`: each speaker's clips standardised together): test UA "
            f"**{est['test_ua']:.1%}** on the same test speakers{of}.\n")


def _adaptive_use(card: dict) -> str:
    if "speaker_adaptive_estimate" not in card:
        return ""
    return ("; several clips of one speaker: `avser predict --one-speaker CLIPS...` or "
            "`avser evaluate ... --speaker-adaptive`")


def bench_modules():
    """bench/speech_readout.py and bench/speech_ensemble.py, run from the repository root
    (the runs' commands name the store relative to it)."""
    bench = Path(__file__).resolve().parent
    sys.path.insert(0, str(bench))
    os.chdir(bench.parent)
    import speech_ensemble
    import speech_readout

    return speech_readout, speech_ensemble


def joint_embeddings(runs: list[Path], split: Path | None = None):
    """The ``runs``' embeddings side by side (the ensemble's), labels, speakers, label
    names, each run folder on its own split; a bundle among the ``runs`` is read on
    ``split``'s (a run folder of the same split)."""
    speech_readout, _ = bench_modules()
    outputs = [speech_readout.run_embeddings(split, run) if run.is_file()
               else speech_readout.run_embeddings(run) for run in runs]
    embedded = {part: np.concatenate([out[0][part] for out in outputs], axis=1)
                for part in outputs[0][0]}
    _, labels, speakers, _, names = outputs[0]
    return embedded, labels, speakers, names


def ensemble_estimate(estimates: list[Path]) -> dict:
    """Test UA and WA of the mean of the estimate runs' probabilities."""
    _, speech_ensemble = bench_modules()
    speech_ensemble.check_same_split(estimates)
    runs = [speech_ensemble.probabilities(run) for run in estimates]
    mean = sum(probs["test"] for probs, _, _ in runs) / len(runs)
    _, labels, names = runs[0]
    report = classification_report(labels["test"], mean.argmax(1), names)
    return {"test_ua": report["ua"], "test_wa": report["wa"]}


def fit_readouts(runs: list[Path], estimates: list[Path] | None, card: dict, quoted: dict | None):
    """The speaker-adaptive readout fitted on the ``runs``' training clips; the card
    gains the same fit's test UA on the ``estimates``' split (or ``quoted``, a
    report's, when there are no estimate runs)."""
    speech_readout, _ = bench_modules()
    from avser.speaker_adapt import PROTOCOL, speaker_readout_logits

    if estimates:
        embedded, labels, speakers, names = joint_embeddings(estimates)
        readout = speech_readout.fit_readout(embedded, labels, speakers, len(names))
        predicted = speaker_readout_logits(readout, embedded["test"], speakers["test"],
                                           "test").argmax(1)
        card["speaker_adaptive_estimate"] = {
            "protocol": PROTOCOL, "test_ua": speech_readout.ua(labels["test"], predicted, names)}
    elif quoted:
        card["speaker_adaptive_estimate"] = {"protocol": PROTOCOL, **quoted}
    split = next(run for run in runs if run.is_dir())
    embedded, labels, speakers, names = joint_embeddings(runs, split)
    return speech_readout.fit_readout(embedded, labels, speakers, len(names))


def ship_bundle(runs: list[Path]):
    """The bundle of one network, or the ensemble bundle of several of one architecture
    (each ``runs`` entry a run folder or an exported bundle, whose members join)."""
    bundles = [load_bundle(run if run.is_file() else run / "model.avser.pt") for run in runs]
    first = bundles[0]
    for run, other in zip(runs[1:], bundles[1:]):
        if other.model_cfg != first.model_cfg or other.label_names != first.label_names:
            raise SystemExit(f"{run}: another network or label set than {runs[0]}; "
                             "an ensemble's members share both")
    states = [{k: v.float() if v.is_floating_point() else v for k, v in state.items()}
              for bundle in bundles for state in member_state_dicts(bundle.state_dict, bundle.members)]
    if len(states) > 1:
        first.state_dict = ensemble_state_dict(states)
        first.members = len(states)
    else:
        first.state_dict = states[0]
    first.speaker_readout = None
    return first


def main() -> None:
    args = parse_args()
    runs = [r.resolve() for r in args.run]
    if not any(run.is_dir() for run in runs):
        raise SystemExit("give at least one --run run folder: its split and recipe are the card's")
    out = Path(args.out).resolve()
    bundle = ship_bundle(runs)
    estimates, quoted = None, None
    if args.estimate_report:
        report = read_estimate_report(args.estimate_report)
        estimate, quoted = report, report.get("speaker_adaptive")
    else:
        estimates = [e.resolve() for e in args.estimate]
        if len(estimates) != bundle.members:
            raise SystemExit(f"{bundle.members} members but {len(estimates)} --estimate folders: "
                             "the estimate is of the same ensemble, seed for seed")
        measured = ensemble_estimate(estimates) if len(estimates) > 1 else None
        estimate = estimate_of([read_run(e) for e in estimates], measured)
    bundle.card = card_of([read_run(r) for r in runs], bundle.members, estimate)
    bundle.card["exported_by"] = " ".join(["python", "bench/export_speech_model.py", *sys.argv[1:]])
    if args.speaker_readout:
        bundle.speaker_readout = fit_readouts(runs, estimates, bundle.card, quoted)
    if args.float16:
        bundle.state_dict = float16_state(bundle.state_dict)
        bundle.card["weights_dtype"] = "float16"
    out = save_bundle(bundle, out)
    out.with_suffix(".md").write_text(card_markdown(out.stem, bundle.card))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
