"""The ``avser`` command: corpus tools, per-clip features, model summaries.

Heavy imports happen inside each sub-command so ``avser --help`` is instant.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from avser.errors import EXIT_BAD_INPUT, AvserError, error_line

VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".flv", ".webm"}


def _cmd_synth(args: argparse.Namespace) -> int:
    from avser import config
    from avser.data.synthetic import SynthConfig, generate_corpus

    cfg = config.load(SynthConfig, args.config, args.set)
    clips = generate_corpus(args.out, args.clips, seed=args.seed, cfg=cfg, progress=not args.quiet)
    print(f"wrote {len(clips)} clips to {args.out}")
    return 0


def _parse_options(items: list[str]) -> dict[str, object]:
    """``--option KEY=VALUE`` items as scanner options (VALUE read as YAML)."""
    import yaml

    options = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise AvserError(f"--option {item!r} is not KEY=VALUE; write e.g. "
                             "--option include_song=true")
        try:
            options[key] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            reason = str(exc).splitlines()[0]
            raise AvserError(f"--option {item!r}: the value {raw!r} is not valid YAML ({reason}); "
                             "quote it or write e.g. modalities=[audio_only]") from exc
    return options


def _print_problems(problems: list, per_kind: int) -> None:
    from avser.data.manifest import summarize_problems

    if problems:
        print(f"{len(problems)} file(s) not in the manifest, by kind:")
        print(summarize_problems(problems, per_kind=per_kind))


def _cmd_manifest(args: argparse.Namespace) -> int:
    from avser.data.corpora import require_clips, scan_corpus
    from avser.data.manifest import summarize, write_manifest

    result = scan_corpus(args.corpus, args.root, **_parse_options(args.option))
    if not result.clips:
        _print_problems(result.problems, args.show_problems)  # what the scan saw instead
        require_clips(args.corpus, args.root, result)  # raises: no empty manifest is written
    frame = result.to_frame()
    write_manifest(frame, args.out)
    print(summarize(frame))
    _print_problems(result.problems, args.show_problems)
    print(f"manifest written to {args.out}")
    return 0


def _clip_for_file(path: Path, csv_path: str | None):
    from avser.data.manifest import Clip

    is_video = path.suffix.lower() in VIDEO_SUFFIXES
    return Clip(
        clip_id=path.stem,
        corpus="file",
        speaker="unknown",
        label=-1,
        label_name="unknown",
        audio_path=str(path),
        video_path=str(path) if is_video else None,
        landmarks_path=csv_path,
    )


def _cmd_features(args: argparse.Namespace) -> int:
    from avser import config
    from avser.features.clip import extract_audio, extract_visual
    from avser.features.config import FeatureConfig
    from avser.features.landmarks import make_landmark_backend

    cfg = config.load(FeatureConfig, args.config, [f"landmarks.backend={args.landmarks}"])
    clip = _clip_for_file(Path(args.clip), args.csv)
    timings: dict[str, float] = {}
    failures = 0
    try:
        mel = extract_audio(clip, cfg, timings)
        print(f"logmel      {tuple(mel.shape)} {mel.dtype}")
    except AvserError as exc:
        failures += 1
        print(f"audio error: {exc}")
    if clip.video_path:
        try:
            backend = make_landmark_backend(cfg.landmarks)
            video, track, keyframes = extract_visual(
                clip.video_path, cfg, backend, timings, csv_path=args.csv
            )
            print(f"frames      {len(video)} at {video.fps:.2f} fps, {video.frames.shape[1:3]} px")
            print(f"landmarks   {tuple(track.points.shape)}; face found in "
                  f"{track.success.mean():.1%} of frames ({cfg.landmarks.backend})")
            print(f"keyframes   {tuple(keyframes.shape)} -> frames {keyframes.tolist()}")
        except AvserError as exc:
            failures += 1
            print(f"video error: {exc}")
    for name, seconds in timings.items():
        print(f"  {name:<12} {seconds:.3f}")
    return 1 if failures else 0


def _cmd_models_summary(args: argparse.Namespace) -> int:
    from avser.config import load_model_config
    from avser.models.summary import format_summary, summarize

    print(format_summary(summarize(load_model_config(args.config))))
    return 0


def _cmd_promote(args: argparse.Namespace) -> int:
    from avser import config
    from avser.platform import tracking
    from avser.platform.promotion import PromotionGate, promote_gated

    if args.force and not args.reason:
        raise AvserError("--force needs --reason TEXT: the registry records why the gate was skipped")
    if not Path(args.gate).is_file():
        raise AvserError(f"no promotion gate at {args.gate}; give --gate FILE (see "
                         "configs/promotion.yaml)")
    gate = config.load(PromotionGate, args.gate)
    decision = promote_gated(args.name, args.source, args.target, gate,
                             force_reason=args.reason if args.force else None)
    for who, report in decision.scores.items():
        print(f"{who} (version {report['version']}): UA {report['ua']:.1%}, WA {report['wa']:.1%} "
              f"on {report['n']} clips of {gate.manifest}")
    verdict = "promoted" if decision.promote else "refused"
    print(f"{verdict}: {decision.reason}")
    print(f"decision recorded: MLflow run {decision.run_id} ({tracking.tracking_uri()})")
    return 0 if decision.promote else 1


def _cmd_predict(args: argparse.Namespace) -> int:
    import json

    from avser.predict import predict_files, resolve_bundle

    bundle = resolve_bundle(args.weights, args.model)
    results = predict_files(args.clips, bundle, one_speaker=args.one_speaker)
    if args.json:
        print(json.dumps([r.__dict__ for r in results], indent=1))
        return 0
    names = bundle.label_names
    print("| file | label | " + " | ".join(names) + " |")
    print("| --- | --- | " + " | ".join("---:" for _ in names) + " |")
    for r in results:
        probs = " | ".join(f"{r.probabilities[n]:.2f}" for n in names)
        print(f"| {r.path} | **{r.label}** | {probs} |")
    for r in results:
        if r.note:
            print(f"note: {r.path}: {r.note}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from avser.predict import evaluate_manifest, resolve_bundle

    if not (args.weights or args.model):
        raise AvserError("avser evaluate needs --weights FILE or --model NAME@ALIAS")
    bundle = resolve_bundle(args.weights, args.model)
    report = evaluate_manifest(bundle, args.manifest, args.out, args.speaker_adaptive)
    print(f"{report['n']} clips of {args.manifest} ({report['protocol']}): WA {report['wa']:.2%}, "
          f"UA {report['ua']:.2%}, macro-F1 {report['macro_f1']:.2%}")
    print("| class | recall | clips |\n| --- | ---: | ---: |")
    for name, recall in report["per_class_recall"].items():
        shown = "-" if recall is None else f"{recall:.2%}"
        print(f"| {name} | {shown} | {report['support'][name]} |")
    if args.out:
        print(f"wrote {args.out}/confusion.png and {args.out}/predictions.csv")
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from avser.platform import nodes

    folder = nodes.state_dir(args.state_dir)
    if args.cluster_command in ("up", "join"):
        request = nodes.StartRequest(
            role=nodes.HEAD if args.cluster_command == "up" else nodes.WORKER,
            address=args.node_address, head=getattr(args, "address", None), num_cpus=args.num_cpus,
            ports={"gcs": getattr(args, "port", 0), "dashboard": getattr(args, "dashboard_port", 0)},
            worker_ports=args.worker_ports, temp_dir=args.temp_dir, token_file=args.token_file,
            mlflow_uri=_cluster_mlflow_uri(args) if args.cluster_command == "up" else "",
            storage_root=_storage_root(args))
        state = nodes.start_node(folder, request)
        print(f"Ray {state.role} up on {state.address}: cluster {state.head}; state in {folder}\n"
              f"talk to it: eval \"$(avser cluster env --state-dir {folder})\"")
        if state.dashboard_url:
            print(f"dashboard and job server: {state.dashboard_url}\nsubmit a job:\n"
                  f"  RAY_ADDRESS={state.dashboard_url} RAY_AUTH_MODE=token "
                  f"RAY_AUTH_TOKEN_PATH={state.token_file} \\\n"
                  "  ray job submit --working-dir . -- python jobs/tune_fusion.py "
                  "--config configs/tune_fusion.yaml")
        return 0
    if args.cluster_command == "down":
        nodes.stop_node(folder)
        return 0
    if args.cluster_command == "status":
        from avser.platform.node_status import node_status

        return node_status(folder)
    state = nodes.read_state(folder)
    if state is None or not nodes.is_running(state):
        raise AvserError(f"no running node in {folder}: start one with `avser cluster up`")
    print("\n".join(nodes.env_lines(state)))
    return 0


def _storage_root(args: argparse.Namespace) -> str:
    """Absolute: the jobs run elsewhere (a copy of the working dir, other nodes)."""
    from avser.platform.storage import is_uri

    root = getattr(args, "storage_root", None) or ""
    return root if not root or is_uri(root) else str(Path(root).resolve())


def _cluster_mlflow_uri(args: argparse.Namespace) -> str:
    """Where the cluster's jobs log: given, inherited, or this checkout's store.
    Jobs run in a copy of the working dir: a relative URI would land in that copy."""
    import os
    from pathlib import Path

    return (args.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{Path.cwd() / 'mlruns' / 'mlflow.db'}")


def _add_cluster(sub) -> None:
    cluster = sub.add_parser("cluster", help="start, join, inspect and stop this machine's Ray node")
    commands = cluster.add_subparsers(dest="cluster_command", required=True)
    up = commands.add_parser("up", help="start a head node")
    join = commands.add_parser("join", help="start a worker node of the head at --address")
    join.add_argument("--address", required=True, help="the head's GCS address, HOST:PORT")
    for start in (up, join):
        start.add_argument("--node-address", default="127.0.0.1",
                           help="this node's cluster address: every Ray port binds to it")
        start.add_argument("--num-cpus", type=int, default=None)
        start.add_argument("--worker-ports", type=int, default=128,
                           help="size of the port range for Ray's worker processes")
        start.add_argument("--temp-dir", default=None,
                           help="Ray's temp dir (made mode 700; default under /tmp/avser-ray-UID)")
        start.add_argument("--token-file", default=None,
                           help="the cluster token's file (or $AVSER_CLUSTER_TOKEN_FILE); "
                                "a head makes one in its state folder")
    up.add_argument("--port", type=int, default=0, help="GCS port (default: a free one)")
    up.add_argument("--dashboard-port", type=int, default=0, help="dashboard/job server port")
    up.add_argument("--mlflow-uri", default=None,
                    help="MLflow tracking URI the jobs of this cluster log to (default: $MLFLOW_TRACKING_URI, "
                         "else ./mlruns/mlflow.db; `avser cluster env` exports it)")
    up.add_argument("--storage-root", default=None,
                    help="folder or URI (shared by every node: NFS, s3://...) that the jobs' relative "
                         "storage_path values resolve against; without it a submitted job must give "
                         "an absolute storage_path")
    for name, text in (("down", "stop this node's processes (never `ray stop`)"),
                       ("status", "ray status, the job server's token check, listening sockets"),
                       ("env", "export lines: eval \"$(avser cluster env)\"")):
        commands.add_parser(name, help=text)
    for command in commands.choices.values():
        command.add_argument("--state-dir", default=None,
                             help="the node's state folder (default $AVSER_CLUSTER_DIR or ./.ray-local)")
    cluster.set_defaults(func=_cmd_cluster)


def _cmd_mlflow(args: argparse.Namespace) -> int:
    from avser.platform import mlflow_server, nodes

    folder = nodes.state_dir(args.state_dir)
    if args.mlflow_command == "up":
        state = mlflow_server.start_server(folder, args.host, args.port, args.backend_store_uri,
                                           args.artifacts_destination)
        auth = (f"; basic auth: user {mlflow_server.ADMIN}, password in "
                f"{folder / mlflow_server.PASSWORD_FILE}" if state.auth else "")
        print(f"MLflow server up at {state.uri}{auth}\n"
              f"start the cluster with it: eval \"$(avser mlflow env --state-dir {folder})\" && "
              f"avser cluster up --mlflow-uri {state.uri}")
        return 0
    if args.mlflow_command == "down":
        mlflow_server.stop_server(folder)
        return 0
    if args.mlflow_command == "env":
        state = mlflow_server.read_state(folder)
        if state is None:
            raise AvserError(f"no MLflow server in {folder}: start one with `avser mlflow up`")
        print("\n".join(f"export {k}={v}" for k, v in mlflow_server.client_env(folder, state).items()))
        return 0
    return mlflow_server.server_status(folder)


def _add_mlflow(sub) -> None:
    server = sub.add_parser("mlflow", help="the MLflow tracking server a cluster logs to")
    commands = server.add_subparsers(dest="mlflow_command", required=True)
    up = commands.add_parser("up", help="start `mlflow server` (basic auth when not on loopback)")
    up.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback)")
    up.add_argument("--port", type=int, default=0, help="default: a free one")
    up.add_argument("--backend-store-uri", default=None,
                    help="default sqlite:///<state>/mlflow.db; postgresql://... for many writers")
    up.add_argument("--artifacts-destination", default=None,
                    help="artifact root the server proxies (default <state>/artifacts; s3://... or NFS)")
    commands.add_parser("down", help="stop the server")
    commands.add_parser("status", help="is it up, where is its store")
    commands.add_parser("env", help="export lines for its clients (URI and, with auth, the "
                                    "credentials): eval \"$(avser mlflow env)\"")
    for command in commands.choices.values():
        command.add_argument("--state-dir", default=None,
                             help="the state folder (default $AVSER_CLUSTER_DIR or ./.ray-local)")
    server.set_defaults(func=_cmd_mlflow)


def _add_model_source(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", default=None,
                        help="a model bundle file (default for predict: the shipped speech model)")
    parser.add_argument("--model", default=None, metavar="NAME@ALIAS",
                        help="a registered model version, e.g. avser-racnn@champion")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avser", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    synth = sub.add_parser("synth", help="write the synthetic audio-visual corpus")
    synth.add_argument("--out", required=True)
    synth.add_argument("--clips", type=int, default=48)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--config", default=None,
                       help="a SynthConfig YAML, e.g. configs/synthetic_demo.yaml")
    synth.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="generator override, e.g. first_speaker=9 (new speakers)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(func=_cmd_synth)

    manifest = sub.add_parser("manifest", help="scan a corpus into a Parquet manifest")
    manifest.add_argument("--corpus", required=True,
                          help="ravdess | enterface | iemocap | cremad | synthetic")
    manifest.add_argument("--root", required=True)
    manifest.add_argument("--out", required=True)
    manifest.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                          help="scanner option, e.g. merge_excited=false")
    manifest.add_argument("--show-problems", type=int, default=3, help="examples per problem kind")
    manifest.set_defaults(func=_cmd_manifest)

    features = sub.add_parser("features", help="run feature extraction on one file")
    features.add_argument("clip")
    features.add_argument("--landmarks", default="dlib", help="dlib | openface-csv | openface")
    features.add_argument("--csv", default=None, help="OpenFace CSV for --landmarks openface-csv")
    features.add_argument("--config", default=None, help="feature config YAML")
    features.set_defaults(func=_cmd_features)

    models = sub.add_parser("models", help="model tools")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    summary = models_sub.add_parser("summary", help="parameters and GFLOPs per module")
    summary.add_argument("--config", required=True)
    summary.set_defaults(func=_cmd_models_summary)

    promote = sub.add_parser("promote", help="move an alias (e.g. candidate -> champion) "
                                            "when the candidate passes the promotion gate")
    promote.add_argument("--name", default="avser", help="registered model: avser | avser-racnn")
    promote.add_argument("--from", dest="source", default="candidate",
                         help="alias (or version number) of the candidate")
    promote.add_argument("--to", dest="target", default="champion", help="alias to give it")
    promote.add_argument("--gate", default="configs/promotion.yaml",
                         help="the gate: evaluation manifest, margins, floors")
    promote.add_argument("--force", action="store_true", help="promote whatever the gate says")
    promote.add_argument("--reason", default=None, help="why --force (recorded)")
    promote.set_defaults(func=_cmd_promote)

    predict = sub.add_parser("predict", help="emotion probabilities of audio or video files")
    predict.add_argument("clips", nargs="+", help="wav/flac/mp3/mp4/avi/mov files")
    _add_model_source(predict)
    predict.add_argument("--json", action="store_true", help="JSON instead of a table")
    predict.add_argument("--one-speaker", action="store_true",
                         help="the files are all one speaker's (8 or more): score them together "
                              "through the model's speaker-adaptive readout")
    predict.set_defaults(func=_cmd_predict)

    evaluate = sub.add_parser("evaluate", help="score a model on every clip of a manifest")
    _add_model_source(evaluate)
    evaluate.add_argument("--manifest", required=True, help="a manifest (avser manifest ...)")
    evaluate.add_argument("--out", default=None, help="folder for confusion.png and predictions.csv")
    evaluate.add_argument("--speaker-adaptive", action="store_true",
                          help="standardise each speaker's clips together (the manifest's speaker "
                               "column) through the model's speaker-adaptive readout; reported as "
                               "its own protocol")
    evaluate.set_defaults(func=_cmd_evaluate)
    _add_cluster(sub)
    _add_mlflow(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except AvserError as exc:
        print(error_line(exc), file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
