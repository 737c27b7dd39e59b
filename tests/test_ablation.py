"""jobs/ablate.py's grid: cells x seeds, every pair a training run.

- The config is checked on load (cell names, inits, seeds) and the plan
  before any data is read (a misspelt model key); a pretraining is planned
  once per seed, only when a cell starts from it; run names are stable.
- The table (mean ± std per cell) and its chart come from the runs' metrics.
- On a real local Ray and the smoke corpus: one MLflow parent with a child
  per run, the pretrained cell starts from its seed's pretraining, and a
  re-run with a seed added trains only that seed's pretraining and cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import avser.platform  # noqa: F401  (keeps a local Ray on loopback; before ray is imported)
from avser import config as configlib
from avser.errors import ConfigError
from avser.platform.ablation import (
    PRETRAINED, AblationConfig, plan, plot_results, results_markdown, run_ablation,
    summarize,
)
from avser.platform.config import DataPrepConfig, TrainConfig

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "configs" / "ablation_smoke.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

pytestmark = pytest.mark.timeout(900)


def smoke(**changes) -> AblationConfig:
    cfg = configlib.load(AblationConfig, SMOKE)
    return configlib.from_dict(AblationConfig, {**configlib.to_dict(cfg), **changes})


def base() -> TrainConfig:
    return configlib.load(TrainConfig, REPO / "configs" / "train_smoke.yaml")


@pytest.mark.parametrize("changes, words", [
    ({"cells": []}, "at least one cell"),
    ({"cells": [{"name": "a"}, {"name": "a"}]}, "a name of its own"),
    ({"cells": [{"name": "a b"}]}, "cell name"),
    ({"cells": [{"name": "a", "init": "registry"}]}, "init='registry'"),
    ({"seeds": [1, 1]}, "each once"),
    ({"max_concurrent_cells": 0}, "max_concurrent_cells"),
])
def test_a_bad_config_is_refused_on_load(changes, words) -> None:
    with pytest.raises(ConfigError, match=words):
        smoke(**changes)


def test_a_misspelt_model_key_fails_in_the_plan() -> None:
    acfg = smoke(cells=[{"name": "typo", "params": {"model.racnn.atention": False}}])
    with pytest.raises(ConfigError, match="atention"):
        plan(acfg, base(), n_classes=6)


def test_the_plan_has_a_run_per_cell_and_seed_and_one_pretraining_per_seed() -> None:
    acfg = smoke(seeds=[0, 1, 2])
    pretrains, cells = plan(acfg, base(), n_classes=6)
    assert [(r.cell, r.seed) for r in cells] == [(c.name, s) for s in (0, 1, 2) for c in acfg.cells]
    assert [(r.cfg.stage, r.seed) for r in pretrains] == [("pretrain", s) for s in (0, 1, 2)]
    by_seed = {r.seed: r.run_name for r in pretrains}
    for run in cells:
        assert run.cfg.seed == run.cfg.split.seed == run.seed  # seed_splits: its own split
        wants = acfg.cells[[c.name for c in acfg.cells].index(run.cell)].init == PRETRAINED
        assert run.pretrain_run == (by_seed[run.seed] if wants else None)
    names = [r.run_name for r in pretrains + cells]
    assert len(set(names)) == len(names)
    assert names == [r.run_name for r in sum(plan(acfg, base(), n_classes=6), [])]  # stable
    speech = next(r for r in cells if r.cell == "racnn")
    assert "fusion.variant='speech'" in speech.cfg.model_overrides


def test_no_pretraining_without_a_pretrained_cell() -> None:
    pretrains, cells = plan(smoke(cells=[{"name": "only"}]), base(), n_classes=6)
    assert pretrains == [] and all(r.pretrain_run is None for r in cells)


def test_the_table_is_mean_and_std_over_finished_runs(tmp_path) -> None:
    acfg = smoke(cells=[{"name": "a"}, {"name": "b", "params": {"klda.enabled": False}}])
    frame = pd.DataFrame([
        {"cell": "a", "seed": 0, "finished": True, "test_ua": 0.5, "klda_test_ua": 0.6, "final_val_ua": 0.4},
        {"cell": "a", "seed": 1, "finished": True, "test_ua": 0.7, "klda_test_ua": 0.8, "final_val_ua": 0.6},
        {"cell": "b", "seed": 0, "finished": True, "test_ua": 0.3, "klda_test_ua": np.nan, "final_val_ua": 0.2},
        {"cell": "b", "seed": 1, "finished": False, "test_ua": np.nan, "klda_test_ua": np.nan,
         "final_val_ua": np.nan},
    ])
    table = summarize(frame, acfg)
    a, b = table.iloc[0], table.iloc[1]
    assert (a["runs"], b["runs"]) == (2, 1)
    assert a["test_ua_mean"] == pytest.approx(0.6) and a["test_ua_std"] == pytest.approx(0.1)
    assert np.isnan(b["klda_test_ua_mean"])
    lines = results_markdown(table).splitlines()
    assert lines[2].startswith("| `a` | base recipe | 2 | 60.0 ± 10.0 | 70.0 ± 10.0 | 50.0 ± 10.0 |")
    assert lines[3].endswith("| 30.0 ± 0.0 | - | 20.0 ± 0.0 |")
    chart = plot_results(table, tmp_path / "chart.png", "t")
    assert chart.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory):
    import ray

    from avser.platform.cluster import init_ray

    workdir = tmp_path_factory.mktemp("ablation")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{workdir / 'mlflow.db'}")
    patch.delenv("RAY_ADDRESS", raising=False)
    if ray.is_initialized():
        ray.shutdown()
    init_ray(num_cpus=2)
    yield workdir
    ray.shutdown()
    patch.undo()


def children_of(parent_id: str) -> dict[str, object]:
    from avser.platform import tracking

    client = tracking.client()
    experiment = client.get_run(parent_id).info.experiment_id
    found = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{parent_id}'")
    return {run.data.tags["avser.run_key"]: run for run in found}


def test_the_grid_trains_each_run_once_and_a_new_seed_adds_only_its_runs(ray_local) -> None:
    from avser.platform.dataprep import prepare_store

    root = ray_local
    data = DataPrepConfig(corpus="synthetic", root=str(root / "synthetic"), synth_clips=24,
                          manifest=str(root / "synthetic.parquet"), store=str(root / "store"),
                          preprocess_config=str(REPO / "configs" / "preprocess_synthetic.yaml"))
    store = prepare_store(data, progress=False)
    acfg = smoke(data=configlib.to_dict(data), storage_path=str(root / "ray_results"),
                 train_config=str(REPO / "configs" / "train_smoke.yaml"),
                 cells=[{"name": "racnn_visual_pretrained", "init": "pretrained"}])
    first = run_ablation(acfg, store, root / "first")
    runs = children_of(first.parent_run_id)
    assert first.missing == [] and len(runs) == 2  # the pretraining and the cell
    (cell,) = [r for r in runs.values() if r.data.tags["ablation.cell"] != "pretrain"]
    (pretrain,) = [r for r in runs.values() if r.data.tags["ablation.cell"] == "pretrain"]
    # The cell's RACNN came from its seed's pretraining, whose weights MLflow points to.
    assert cell.data.params["train.init"] == f"checkpoint:{pretrain.data.tags['avser.final_checkpoint']}"
    assert all(r.info.status == "FINISHED" for r in runs.values())

    wider = smoke(**{**configlib.to_dict(acfg), "seeds": [0, 1]})
    second = run_ablation(wider, store, root / "second")
    after = children_of(second.parent_run_id)
    assert second.parent_run_id == first.parent_run_id and second.missing == []
    # Seed 0's pretraining and cell were not trained again; seed 1's are new.
    assert len(after) == 2 + 2
    for key, run in runs.items():
        assert after[key].info.end_time == run.info.end_time
    assert {r.data.tags["ablation.seed"] for k, r in after.items() if k not in runs} == {"1"}
    table = second.table.set_index("cell")
    assert list(table["runs"]) == [2]
    assert 0 <= table["test_ua_mean"].iloc[0] <= 1 and table["test_ua_std"].iloc[0] >= 0
    assert (root / "second" / "ablation.png").read_bytes()[:8] == PNG_MAGIC
    assert "| `racnn_visual_pretrained` | pretrained RACNN | 2 |" in (root / "second" / "ablation.md").read_text()
