"""Ray Data: manifest -> feature store.

The per-clip feature functions run in ``map_batches`` on a fixed pool of CPU
actors; each actor loads its landmark model once. Rows stream back to the
driver, which writes them as part files every ``rows_per_part`` rows, so a
crash loses at most one part's worth of work and a re-run computes only the
clips whose ``source_key`` is not yet finished in the store. One run at a
time writes a store (``avser.data.store.writing``); a second is refused.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from avser import config as configlib
from avser.data import store as feature_store
from avser.data.manifest import Clip, read_manifest
from avser.errors import AvserError
from avser.features.clip import extract_clip
from avser.features.config import FeatureConfig

if TYPE_CHECKING:
    # Annotations only: every actor imports this module, and avser.platform.config
    # pulls in the training stack (scikit-learn), which featurizing never uses.
    from avser.platform.config import PreprocessConfig

# A progress bar redraws in place on a terminal; in a log file (``ray job
# logs``, CI) every redraw is a new line, so there it redraws this rarely.
LOG_PROGRESS_INTERVAL_S = 30.0
TTY_PROGRESS_INTERVAL_S = 0.1  # tqdm's own default


@dataclass
class PreprocessReport:
    total: int
    computed: int
    skipped: int
    failed: int
    seconds: float
    summary: str
    # Failed clips of the manifest per error reason, e.g. {"no_face": 2}.
    failures: dict[str, int]
    # Seconds until the first computed rows came back: the fixed cost of a run
    # (actor start-up, landmark model, one batch); None when nothing was computed.
    first_rows_s: float | None = None


def featurize_clip(clip: Clip, key: str, cfg: FeatureConfig, landmarker) -> dict[str, Any]:
    """One store row; never raises for a bad clip (the row says what went wrong)."""
    try:
        features = extract_clip(clip, cfg, landmarker)
        return feature_store.ok_row(clip, key, features)
    except AvserError as exc:
        reason = getattr(exc, "reason", "error")
        return feature_store.error_row(clip, key, reason, f"clip {clip.clip_id}: {exc}")
    except Exception as exc:  # noqa: BLE001 - one broken clip must not stop the job
        message = (f"clip {clip.clip_id}: unexpected {type(exc).__name__}: {exc} "
                   "(a bug in avser or a library; please report it with this clip; "
                   "the next run tries this clip again)")
        return feature_store.error_row(clip, key, feature_store.REASON_INTERNAL, message)


def _make_landmarker(cfg: FeatureConfig):
    from avser.features.landmarks import make_landmark_backend

    return make_landmark_backend(cfg.landmarks)


class ClipFeaturizer:
    """Ray Data actor: holds one landmark backend for all the clips it sees."""

    def __init__(self, feature_cfg: dict[str, Any]) -> None:
        self.cfg = configlib.from_dict(FeatureConfig, feature_cfg)
        self.landmarker = _make_landmarker(self.cfg)

    def __call__(self, batch: pd.DataFrame) -> pa.Table:
        rows = [
            featurize_clip(Clip.from_row(r), r["source_key"], self.cfg, self.landmarker)
            for r in batch.to_dict("records")
        ]
        return pa.Table.from_pylist(rows, schema=feature_store.SCHEMA)


def plan(manifest: pd.DataFrame, store: str | Path, cfg: FeatureConfig) -> pd.DataFrame:
    """Manifest rows still to compute, with their ``source_key`` column."""
    chash = configlib.config_hash(cfg)
    keys = [feature_store.source_key(c, chash) for c in feature_store.manifest_clips(manifest)]
    keyed = manifest.assign(source_key=keys)
    return keyed[~keyed["source_key"].isin(feature_store.finished_keys(store))]


def _actor_count(cfg: PreprocessConfig, n_clips: int) -> int:
    import ray

    if cfg.num_actors:
        return max(1, min(cfg.num_actors, n_clips))
    cpus = ray.cluster_resources().get("CPU", 1.0)
    return max(1, min(int(cpus // cfg.cpus_per_actor), n_clips))


def _feature_dataset(todo: pd.DataFrame, cfg: PreprocessConfig):
    import ray

    # Ray Data's own bars would print per operator; the driver keeps one bar.
    ray.data.DataContext.get_current().enable_progress_bars = False
    chunks = [todo.iloc[i : i + cfg.clips_per_batch]
              for i in range(0, len(todo), cfg.clips_per_batch)]
    return ray.data.from_pandas(chunks).map_batches(
        ClipFeaturizer,
        fn_constructor_args=(configlib.to_dict(cfg.features),),
        batch_size=cfg.clips_per_batch,
        batch_format="pandas",
        compute=ray.data.ActorPoolStrategy(size=_actor_count(cfg, len(todo))),
        num_cpus=cfg.cpus_per_actor,
        # One row out per clip in: lets Ray Data plan without counting rows.
        udf_modifying_row_count=False,
    )


def _progress_interval(stream) -> float:
    isatty = getattr(stream, "isatty", None)
    return TTY_PROGRESS_INTERVAL_S if isatty and isatty() else LOG_PROGRESS_INTERVAL_S


def _progress_bar(total: int, enabled: bool):
    from tqdm import tqdm

    stream = sys.stderr  # where tqdm writes
    return tqdm(total=total, unit="clip", desc="features", disable=not enabled, file=stream,
                mininterval=_progress_interval(stream))


def _stream_to_store(
    todo: pd.DataFrame, store: Path, cfg: PreprocessConfig, progress: bool
) -> float:
    """Compute ``todo`` into new part files; returns when (perf_counter) the first rows came."""
    buffered: list[dict[str, Any]] = []
    failed = 0
    first_rows_at = None
    batches = _feature_dataset(todo, cfg).iter_batches(batch_size=None, batch_format="pyarrow")
    # closing(): if writing a part fails, stop the actors now, not at garbage collection.
    with _progress_bar(len(todo), progress) as bar, closing(iter(batches)) as stream:
        for batch in stream:
            first_rows_at = first_rows_at or time.perf_counter()
            rows = batch.to_pylist()
            buffered.extend(rows)
            failed += sum(r["status"] != feature_store.STATUS_OK for r in rows)
            # refresh=False: a forced redraw per batch would defeat mininterval.
            bar.set_postfix(failed=failed, refresh=False)
            bar.update(len(rows))
            if len(buffered) >= cfg.rows_per_part:
                feature_store.write_part(buffered, store)
                buffered = []
        if buffered:
            feature_store.write_part(buffered, store)
    return first_rows_at


def _check_manifest(manifest: pd.DataFrame, path: str | Path) -> None:
    if manifest.empty:
        raise AvserError(f"manifest {path} lists no clips; check the corpus root it was made from")
    repeated = manifest["clip_id"][manifest["clip_id"].duplicated()].unique()
    if len(repeated):
        raise AvserError(
            f"manifest {path} lists clip id(s) {list(repeated[:5])} more than once; "
            "every clip must appear once: re-create the manifest with `avser manifest`"
        )


def run_preprocess(
    manifest_path: str | Path, store: str | Path, cfg: PreprocessConfig, progress: bool = True
) -> PreprocessReport:
    """Compute every manifest clip not yet finished in ``store``; report failures by reason.

    The run holds the store's writer lock throughout, and records the
    manifest's clips first: from then on readers see only those clips.
    """
    start = time.perf_counter()
    store = Path(store)
    manifest = read_manifest(manifest_path)
    _check_manifest(manifest, manifest_path)
    with feature_store.writing(store):
        feature_store.record_clips(store, manifest["clip_id"], manifest_path)
        # A run that stopped between its last part and the compaction left
        # superseded rows; readers skip them, and this removes them.
        feature_store.drop_superseded(store)
        todo = plan(manifest, store, cfg.features)
        feature_store.save_feature_config(store, cfg.features)
        first_rows_s = None
        if len(todo):
            first_rows_s = _stream_to_store(todo, store, cfg, progress) - start
            feature_store.drop_superseded(store)
        rows = feature_store.read_store(store, ["status", "error", "error_reason"])
    failed = rows[rows["status"] != feature_store.STATUS_OK]
    return PreprocessReport(
        total=len(manifest),
        computed=len(todo),
        skipped=len(manifest) - len(todo),
        failed=len(failed),
        seconds=time.perf_counter() - start,
        summary=feature_store.failure_summary(rows),
        failures=dict(sorted(Counter(failed["error_reason"]).items())),
        first_rows_s=first_rows_s,
    )
