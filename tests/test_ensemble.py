"""Ensembles of speech networks (avser.models.ensemble) and their bundles."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from avser import cli
from avser.bundle import ModelBundle, load_bundle, save_bundle
from avser.errors import AvserError, ConfigError
from avser.models.ensemble import SpeechEnsemble, ensemble_state_dict, member_state_dicts
from avser.models.factory import build_network
from avser.speaker_adapt import SpeakerReadoutConfig, fit_speaker_readout

from test_predict import LABELS, _write_manifest, ravdess_files, tiny_bundle


def members(n: int = 3) -> tuple[ModelBundle, list[torch.nn.Module]]:
    bundle = tiny_bundle()
    nets = []
    for seed in range(n):
        torch.manual_seed(seed)
        nets.append(build_network("speech", bundle.model_cfg).eval())
    return bundle, nets


def speech_batch(bundle: ModelBundle, n: int = 4) -> torch.Tensor:
    r = bundle.model_cfg.racnn
    return torch.randn(n, r.in_channels, r.depth, r.input_size, r.input_size,
                       generator=torch.Generator().manual_seed(1))


def test_the_ensemble_averages_its_members_probabilities() -> None:
    bundle, nets = members(3)
    ensemble, speech = SpeechEnsemble(nets).eval(), speech_batch(bundle)
    with torch.no_grad():
        logits, embedding = ensemble(speech, with_embedding=True)
        outputs = [net(speech, with_embedding=True) for net in nets]
    mean = torch.stack([out[0].softmax(-1) for out in outputs]).mean(0)
    torch.testing.assert_close(logits.softmax(-1), mean)
    torch.testing.assert_close(embedding, torch.cat([out[1] for out in outputs], dim=-1))
    with pytest.raises(ConfigError, match="at least 2"):
        SpeechEnsemble(nets[:1])


def ensemble_bundle(n: int = 3) -> tuple[ModelBundle, SpeechEnsemble]:
    bundle, nets = members(n)
    bundle.state_dict = ensemble_state_dict([net.state_dict() for net in nets])
    bundle.members = n
    return bundle, SpeechEnsemble(nets).eval()


def test_an_ensemble_bundle_round_trips(tmp_path) -> None:
    bundle, ensemble = ensemble_bundle(3)
    loaded = load_bundle(save_bundle(bundle, tmp_path / "ensemble.pt"))
    assert loaded.members == 3
    speech = speech_batch(bundle)
    with torch.no_grad():
        torch.testing.assert_close(loaded.network()(speech), ensemble(speech))
    single = load_bundle(save_bundle(tiny_bundle(), tmp_path / "one.pt"))
    assert single.members == 1 and not isinstance(single.network(), SpeechEnsemble)


def test_an_ensembles_members_come_apart_and_join_a_new_one() -> None:
    bundle, ensemble = ensemble_bundle(2)
    parts = member_state_dicts(bundle.state_dict, bundle.members)
    _, nets = members(3)  # seeds 0, 1 are the ensemble's members; seed 2 joins them
    for part, net in zip(parts, nets):
        assert part.keys() == net.state_dict().keys()
        assert all(torch.equal(part[k], v) for k, v in net.state_dict().items())
    joined = SpeechEnsemble([build_network("speech", bundle.model_cfg) for _ in range(3)]).eval()
    joined.load_state_dict(ensemble_state_dict([*parts, nets[2].state_dict()]))
    speech = speech_batch(bundle)
    with torch.no_grad():
        torch.testing.assert_close(joined(speech), SpeechEnsemble(nets).eval()(speech))
    assert member_state_dicts(nets[0].state_dict(), 1)[0].keys() == nets[0].state_dict().keys()
    with pytest.raises(ConfigError, match="members"):
        member_state_dicts({**bundle.state_dict, "stray.weight": torch.zeros(1)}, 2)


def test_a_bad_member_count_is_refused(tmp_path) -> None:
    bundle, _ = ensemble_bundle(2)
    path = save_bundle(bundle, tmp_path / "ensemble.pt")
    raw = torch.load(path, weights_only=True)
    raw["members"] = 0
    torch.save(raw, path)
    with pytest.raises(AvserError, match="members=0"):
        load_bundle(path)


def test_predict_and_evaluate_real_files_with_an_ensemble(shared_data, tmp_path, capsys) -> None:
    bundle, _ = ensemble_bundle(2)
    # A speaker-adaptive readout over the joint embedding, as the export fits it.
    r = bundle.model_cfg.racnn
    width = 2 * bundle.network().members[0].speech_head.fc.in_features
    rng = np.random.default_rng(0)
    speakers = np.repeat(["a", "b"], 8)
    bundle.speaker_readout = fit_speaker_readout(
        rng.normal(size=(16, width)).astype(np.float32), np.arange(16) % r.n_classes, speakers,
        r.n_classes, SpeakerReadoutConfig(min_clips=2))
    path = save_bundle(bundle, tmp_path / "ensemble.pt")

    clips = [str(p) for p in ravdess_files(shared_data, n=3)]
    assert cli.main(["predict", "--weights", str(path), "--json", *clips]) == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["label"] in LABELS for r in results] == [True] * 3
    assert all(sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-4) for r in results)
    assert cli.main(["predict", "--weights", str(path), "--one-speaker", *clips]) == 0
    assert "speaker-adaptive" in capsys.readouterr().out

    manifest = tmp_path / "a16.parquet"
    _write_manifest(shared_data, manifest)
    assert cli.main(["evaluate", "--weights", str(path), "--manifest", str(manifest)]) == 0
    printed = capsys.readouterr().out
    assert "10 clips" in printed and "UA" in printed
