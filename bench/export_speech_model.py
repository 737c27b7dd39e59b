"""Package a speech run of ``bench/speech_recipe.py --ship`` as the shipped
model: ``avser/pretrained/NAME.pt`` (a plain-data bundle) and ``NAME.md``
(its model card).

    .venv/bin/python bench/export_speech_model.py --run out/recipe/ship-112 \
        --estimate out/recipe/p112-mid-overlap5 [--speaker-readout] \
        [--out avser/pretrained/racnn-ravdess-a01-16.pt]

``--run`` trained on every speaker but its validation ones; ``--estimate``
is the same recipe's run with held-out test speakers: its test UA is the
card's estimate of accuracy on new speakers. ``--speaker-readout`` also fits
the speaker-adaptive readout (:mod:`avser.speaker_adapt`) on the run's
training clips and puts it in the bundle; the card then gives that
readout's estimate too, fitted and scored the same way on ``--estimate``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from avser.bundle import DEFAULT_WEIGHTS, load_bundle, save_bundle

LICENCE = ("CC BY-NC-SA 4.0: trained on RAVDESS (Livingstone & Russo 2018, "
           "https://zenodo.org/record/1188976), whose licence is CC BY-NC-SA 4.0; these "
           "weights are for non-commercial use, with attribution, shared alike")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="the --ship run folder")
    parser.add_argument("--estimate", required=True, help="the held-out-speaker run folder")
    parser.add_argument("--speaker-readout", action="store_true",
                        help="fit and ship the speaker-adaptive readout")
    parser.add_argument("--out", default=str(DEFAULT_WEIGHTS))
    return parser.parse_args()


def read_run(folder: Path) -> dict:
    return {"result": json.loads((folder / "result.json").read_text()),
            "train": yaml.safe_load((folder / "train.yaml").read_text()),
            "model": yaml.safe_load((folder / "model.yaml").read_text()),
            "command": (folder / "command.txt").read_text().strip()}


HEADS = {"mean": "mean-pool", "bigru": "Bi-GRU", "bands": "per-frequency-band statistics"}


def card_of(ship: dict, estimate: dict) -> dict:
    est = estimate["result"]
    head = HEADS[ship["model"]["racnn"].get("head", "mean")]
    return {
        "model": f"RACNN (paper Table I layers) + {head} speech head, speech only",
        "racnn": ship["model"]["racnn"],
        "training_data": ("RAVDESS speech, actors 1-16 (16 kHz); training speakers "
                          f"{ship['result']['speakers']['train']}, validation (early stopping) "
                          f"{ship['result']['speakers']['val']}"),
        "recipe": {"optim": ship["train"]["optim"], "augment": ship["train"]["augment"],
                   "mixed_precision": ship["train"]["mixed_precision"]},
        "validation_ua": ship["result"]["val_ua"],
        "speaker_disjoint_estimate": {
            "test_ua": est["test_ua"], "test_wa": est["test_wa"],
            "protocol": "speaker: trained on " + ", ".join(est["speakers"]["train"]) +
                        "; validated on " + ", ".join(est["speakers"]["val"]) +
                        "; tested once on " + ", ".join(est["speakers"]["test"]),
            "command": estimate["command"]},
        "command": ship["command"],
        "licence": LICENCE,
    }


def card_markdown(name: str, card: dict) -> str:
    est = card["speaker_disjoint_estimate"]
    return f"""# {name}: speech emotion model (RAVDESS actors 1-16)

- **What**: {card['model']}; input {card['racnn']['depth']} x {card['racnn']['input_size']} x
  {card['racnn']['input_size']} 3D log-mels (log-mel, delta, delta-delta), Conv1 `{card['racnn']['conv1']}`.
  Classes: the eight RAVDESS emotions.
- **Training data**: {card['training_data']}.
- **Recipe**: `{json.dumps(card['recipe']['optim'])}`; augmentation `{json.dumps(card['recipe']['augment'])}`;
  precision `{card['recipe']['mixed_precision']}`.
- **Estimate on new speakers**: test UA **{est['test_ua']:.1%}** (WA {est['test_wa']:.1%}) with the same
  recipe under the `{est['protocol']}`. Made by `{est['command']}`.
{_adaptive_line(card)}- **Validation UA** of this model (its early-stopping speakers): {card['validation_ua']:.1%}.
- **Made by**: `{card['command']}`, then `{card['exported_by']}`.
- **Licence**: {card['licence']}.
- **Use**: `avser predict FILE.wav` (this is the default model) or
  `avser evaluate --weights avser/pretrained/{name}.pt --manifest M.parquet`{_adaptive_use(card)}.
  Loaded with `torch.load(weights_only=True)`: the file holds tensors and plain values only.
"""


def _adaptive_line(card: dict) -> str:
    if "speaker_adaptive_estimate" not in card:
        return ""
    est = card["speaker_adaptive_estimate"]
    return (f"- **Speaker-adaptive estimate** (`avser evaluate --speaker-adaptive`, or `avser predict "
            f"--one-speaker`: each speaker's clips standardised together): test UA "
            f"**{est['test_ua']:.1%}** on the same test speakers, its readout fitted on the same "
            "training speakers.\n")


def _adaptive_use(card: dict) -> str:
    if "speaker_adaptive_estimate" not in card:
        return ""
    return ("; several clips of one speaker: `avser predict --one-speaker CLIPS...` or "
            "`avser evaluate ... --speaker-adaptive`")


def fit_readouts(run: Path, estimate: Path, card: dict):
    """The speaker-adaptive readout fitted on ``run``'s training clips; the
    card gains the same fit's test UA on ``estimate``'s split."""
    bench = Path(__file__).resolve().parent
    sys.path.insert(0, str(bench))
    os.chdir(bench.parent)  # the runs' commands name the store relative to the repository
    from speech_readout import fit_readout, run_embeddings, ua

    from avser.speaker_adapt import PROTOCOL, speaker_readout_logits

    embedded, labels, speakers, _, names = run_embeddings(estimate)
    readout = fit_readout(embedded, labels, speakers, len(names))
    predicted = speaker_readout_logits(readout, embedded["test"], speakers["test"], "test").argmax(1)
    card["speaker_adaptive_estimate"] = {"protocol": PROTOCOL,
                                         "test_ua": ua(labels["test"], predicted, names)}
    embedded, labels, speakers, _, names = run_embeddings(run)
    return fit_readout(embedded, labels, speakers, len(names))


def main() -> None:
    args = parse_args()
    out = Path(args.out).resolve()
    ship, estimate = read_run(Path(args.run)), read_run(Path(args.estimate))
    bundle = load_bundle(Path(args.run) / "model.avser.pt")
    bundle.card = card_of(ship, estimate)
    bundle.card["exported_by"] = " ".join(["python", "bench/export_speech_model.py", *sys.argv[1:]])
    if args.speaker_readout:
        bundle.speaker_readout = fit_readouts(Path(args.run).resolve(), Path(args.estimate).resolve(),
                                              bundle.card)
    out = save_bundle(bundle, out)
    out.with_suffix(".md").write_text(card_markdown(out.stem, bundle.card))
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB) and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
