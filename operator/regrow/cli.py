"""The ``regrow`` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import yaml

from regrow import GROUP
from regrow.api import InvalidSpec, validate_object
from regrow.api.crd import crd_files
from regrow.contracts import ServingEnv


def _crds(args: argparse.Namespace) -> int:
    out: Path = args.output_dir
    files = crd_files()
    if args.check:
        stale = [name for name, text in files.items() if _read(out / name) != text]
        extra = sorted(p.name for p in out.glob("*.yaml") if p.name not in files) if out.is_dir() else []
        for name in stale + extra:
            print(f"{out / name} is stale: run `regrow crds`", file=sys.stderr)
        return 1 if stale or extra else 0
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (out / name).write_text(text)
        print(f"Wrote {out / name}")
    return 0


def _read(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def _validate(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.files:
        for doc in yaml.safe_load_all(Path(path).read_text()):
            if not doc:
                continue
            name = f"{path}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
            if not str(doc.get("apiVersion", "")).startswith(f"{GROUP}/"):  # a Secret beside them, say
                print(f"{name}: skipped: not a {GROUP} resource")
                continue
            try:
                validate_object(doc)
            except InvalidSpec as error:
                failed += 1
                print(f"{name}: invalid: {error}", file=sys.stderr)
            else:
                print(f"{name}: valid")
    return 1 if failed else 0


def _train(args: argparse.Namespace) -> int:
    from regrow.training.entrypoint import default_termination_log, run  # noqa: PLC0415 - needs [training]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec_text = Path(args.spec_file).read_text() if args.spec_file else os.environ.get("REGROW_TRAINING_SPEC")
    if not spec_text:
        print("regrow train: give --spec-file or set REGROW_TRAINING_SPEC", file=sys.stderr)
        return 2
    run_info = {k: os.environ.get(f"REGROW_RUN_{k.upper()}", "") for k in ("namespace", "name", "uid")}
    log_path = args.termination_log if args.termination_log else default_termination_log()
    return run(spec_text, {k: v for k, v in run_info.items() if v}, log_path)


def _operator(args: argparse.Namespace) -> int:
    import asyncio  # noqa: PLC0415

    import kopf  # noqa: PLC0415 - needs [operator]

    import regrow.controller.handlers  # noqa: F401, PLC0415 - registers the handlers
    from regrow.controller.lease import new_identity  # noqa: PLC0415

    kopf.configure(log_format=kopf.LogFormat.JSON if args.log_format == "json" else kopf.LogFormat.FULL)
    logging.getLogger().setLevel(args.log_level)
    if args.log_level != "DEBUG":  # kopf's line per watch event (the control loop logs what it does)
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    lease_namespace = None
    if not args.standalone:
        lease_namespace = args.leader_election_namespace or (args.namespace or ["default"])[0]
    identity = new_identity()  # kopf's default needs a passwd entry
    asyncio.run(
        kopf.operator(
            clusterwide=not args.namespace,
            namespaces=args.namespace,
            standalone=True,  # kopf's peering is not used: replicas elect a leader with a Lease
            identity=cast(Any, identity),  # kopf's Identity, a NewType of str it does not export
            liveness_endpoint=args.liveness,
            memo=kopf.Memo(
                identity=identity,
                lease_namespace=lease_namespace,
                metrics_port=args.metrics_port,
                watch_namespaces=args.namespace,
            ),
        )
    )
    return 0


def _object(args: argparse.Namespace, kind: Any, name: str) -> tuple[Any, str, dict[str, Any] | None, str]:
    """A Kube client from the kubeconfig, the object's path, the object (None: not found), and the user the
    kubeconfig context names (what a decision records as its actor, self-reported)."""
    from kubernetes import config  # noqa: PLC0415 - needs [operator]

    from regrow import API_VERSION  # noqa: PLC0415
    from regrow.controller.kube import Kube, path  # noqa: PLC0415

    api_client = config.new_client_from_config(args.kubeconfig, args.context)  # type: ignore[no-untyped-call]
    contexts, active = config.list_kube_config_contexts(args.kubeconfig)  # type: ignore[no-untyped-call]
    context = next((c for c in contexts if c["name"] == args.context), active) if args.context else active
    namespace = args.namespace or context["context"].get("namespace", "default")
    where = path(API_VERSION, kind.plural, namespace, name)
    kube = Kube(api_client)
    return kube, where, kube.get(where), str(context["context"].get("user") or "unknown")


def _approve(args: argparse.Namespace) -> int:
    from regrow.api import DRIFT_POLICY  # noqa: PLC0415
    from regrow.controller.driftpolicy import APPROVE_ANNOTATION  # noqa: PLC0415

    kube, where, policy, _ = _object(args, DRIFT_POLICY, args.policy)
    if policy is None:
        print(f"regrow approve: DriftPolicy {args.policy} not found", file=sys.stderr)
        return 1
    pending = (policy.get("status") or {}).get("pendingApproval")
    if not pending:
        print(f"regrow approve: DriftPolicy {args.policy} has no retrain waiting for approval", file=sys.stderr)
        return 1
    kube.patch(where, {"metadata": {"annotations": {APPROVE_ANNOTATION: pending}}})
    print(f"Approved retrain {pending} of DriftPolicy {args.policy}")
    return 0


def _decide(args: argparse.Namespace) -> int:
    """`regrow promote` and `regrow rollback`: a person's decision on the running canary, as an annotation
    the operator acts on (it never writes a spec), with who they say they are and why."""
    from regrow.api import MODEL_DEPLOYMENT  # noqa: PLC0415
    from regrow.clock import now  # noqa: PLC0415
    from regrow.controller.canary import DECISION_ANNOTATION, Decision  # noqa: PLC0415

    kube, where, md, user = _object(args, MODEL_DEPLOYMENT, args.deployment)
    if md is None:
        print(f"regrow {args.command}: ModelDeployment {args.deployment} not found", file=sys.stderr)
        return 1
    if getattr(args, "version", None):
        return _retry(args, kube, where, md, user)
    rollout = (md.get("status") or {}).get("rollout") or {}
    if not rollout or rollout.get("outcome"):
        print(f"regrow {args.command}: ModelDeployment {args.deployment} has no canary running", file=sys.stderr)
        return 1
    action = "Promote" if args.command == "promote" else "Rollback"
    try:
        decision = Decision(action=action, candidate=rollout["candidate"], started=rollout["started"],
                            actor=args.actor or user, reason=args.reason or None, time=now())  # fmt: skip
    except ValueError as error:  # pydantic's ValidationError: an empty actor, a reason over 1,024 characters
        print(f"regrow {args.command}: {error}", file=sys.stderr)
        return 2
    kube.patch(where, {"metadata": {"annotations": {DECISION_ANNOTATION: decision.model_dump_json(by_alias=True)}}})
    verb = "Promoting" if action == "Promote" else "Rolling back"
    print(f"{verb} version {rollout['candidate']} of ModelDeployment {args.deployment}")
    return 0


def _rotate_key(args: argparse.Namespace) -> int:
    """Ask for a new key for a ModelDeployment: the operator makes the next Secret, and the pods roll to it
    (ids the key before signed still verify)."""
    from regrow.api import MODEL_DEPLOYMENT  # noqa: PLC0415
    from regrow.clock import now  # noqa: PLC0415
    from regrow.controller.keys import ROTATE_ANNOTATION  # noqa: PLC0415

    kube, where, md, _ = _object(args, MODEL_DEPLOYMENT, args.deployment)
    if md is None:
        print(f"regrow rotate-key: ModelDeployment {args.deployment} not found", file=sys.stderr)
        return 1
    key = (md.get("status") or {}).get("feedbackKey") or {}
    if not key:
        print(f"regrow rotate-key: ModelDeployment {args.deployment} has no key of regrow's to rotate", file=sys.stderr)
        return 1
    kube.patch(where, {"metadata": {"annotations": {ROTATE_ANNOTATION: now()}}})
    print(f"Asked for a new key for ModelDeployment {args.deployment} (now {key.get('secretName')}, fingerprint "
          f"{key.get('fingerprint')}): watch status.feedbackKey")  # fmt: skip
    return 0


def _status(args: argparse.Namespace) -> int:
    """What a ModelDeployment serves and how it got there."""
    from regrow import API_VERSION  # noqa: PLC0415
    from regrow.api import MODEL_DEPLOYMENT, TRAINING_JOB  # noqa: PLC0415
    from regrow.controller.kube import path  # noqa: PLC0415
    from regrow.controller.lineage import lineage  # noqa: PLC0415

    kube, _, md, _ = _object(args, MODEL_DEPLOYMENT, args.deployment)
    if md is None:
        print(f"regrow status: ModelDeployment {args.deployment} not found", file=sys.stderr)
        return 1
    trainingjobs = kube.list(path(API_VERSION, TRAINING_JOB.plural, md["metadata"]["namespace"]))
    print("\n".join(lineage(md, trainingjobs)))
    return 0


def _retry(args: argparse.Namespace, kube: Any, where: str, md: dict[str, Any], user: str) -> int:
    """`regrow promote <md> --version <v>`: try a version that a canary rolled back again."""
    from regrow.api.modeldeployment import RetryRequest  # noqa: PLC0415
    from regrow.clock import now  # noqa: PLC0415
    from regrow.controller.canary import RETRY_ANNOTATION  # noqa: PLC0415

    if args.version not in ((md.get("status") or {}).get("rejectedVersions") or []):
        print(f"regrow promote: version {args.version} of {args.deployment} was not rolled back", file=sys.stderr)
        return 1
    try:
        request = RetryRequest(version=args.version, actor=args.actor or user, reason=args.reason or None,
                               time=now())  # fmt: skip
    except ValueError as error:  # pydantic's ValidationError
        print(f"regrow promote: {error}", file=sys.stderr)
        return 2
    kube.patch(where, {"metadata": {"annotations": {RETRY_ANNOTATION: request.model_dump_json(by_alias=True)}}})
    print(f"Trying version {args.version} of ModelDeployment {args.deployment} again")
    return 0


def _move_alias(args: argparse.Namespace) -> int:
    """Move an alias from one version to another, only if it still points at the first (the Job a canary's
    rollback or a person's retry runs: the operator holds no store credentials)."""
    from regrow.storage import open_store  # noqa: PLC0415
    from regrow.storage.registry import AliasMoved, Registry  # noqa: PLC0415

    registry = Registry(open_store(args.registry, endpoint_url=args.endpoint_url, region=args.region))
    try:
        registry.promote(args.model, args.alias, args.to, over=args.from_version)
    except AliasMoved:
        print(f"Left {args.alias} of {args.model} alone: it no longer points at {args.from_version}")
        return 0
    print(f"Moved {args.alias} of {args.model} from {args.from_version} to {args.to}")
    return 0


def _sample_data(args: argparse.Namespace) -> int:
    from regrow.training.sample_data import sample_csv  # noqa: PLC0415 - needs [training]

    data = sample_csv(args.name)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_bytes(data)
    else:
        sys.stdout.buffer.write(data)
    return 0


def _serve(args: argparse.Namespace) -> int:
    from regrow.serving.server import ServeConfig, run  # noqa: PLC0415 - needs [serving]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # the environment, read by this command alone: a variable another program set breaks no other one
        env = ServingEnv.from_environ(os.environ)
    except ValueError as error:
        print(f"regrow serve: {error}", file=sys.stderr)
        return 2
    given = {
        field: value for field, value in vars(args).items() if field in ServingEnv.model_fields and value is not None
    }
    settings = env.model_copy(update=given)
    if not (settings.registry and settings.model_name and (settings.model_alias or settings.model_version)):
        print("regrow serve: give --registry, --model, and --alias or --version", file=sys.stderr)
        return 2
    run(
        ServeConfig(
            registry=settings.registry, model=settings.model_name, alias=settings.model_alias,
            version=settings.model_version, await_version=settings.await_version, host=settings.host,
            port=settings.port,
            metrics_port=settings.metrics_port, threads=settings.threads, refresh_seconds=settings.refresh_seconds,
            drain_seconds=settings.drain_seconds, idle_timeout=settings.idle_timeout_seconds,
            max_connections=settings.max_connections, max_rows=settings.max_rows,
            shed_after=settings.shed_after_ms / 1000, max_body=settings.max_body_bytes,
            feature_bins=not args.no_feature_bins, log_percent=settings.prediction_log_percent,
            log_max_queue=settings.prediction_log_max_queue,
            log_retention_seconds=settings.prediction_log_retention_seconds, endpoint_url=settings.storage_endpoint,
            label_horizon_seconds=settings.label_horizon_seconds,
            labellers_dir=settings.labellers_dir,
            region=args.region, feedback_key=settings.feedback_key,
            feedback_previous_key=settings.feedback_previous_key, shadow_url=settings.shadow_url,
            shadow_percent=settings.shadow_percent,
        )
    )  # fmt: skip
    return 0


def _drift(args: argparse.Namespace) -> int:
    import json  # noqa: PLC0415

    from regrow.api.driftpolicy import DriftPolicySpec  # noqa: PLC0415
    from regrow.drift.backtest import BacktestError, feature_matrix, load_registry_profile, windows  # noqa: PLC0415
    from regrow.drift.profile import Profile  # noqa: PLC0415
    from regrow.drift.report import Compared, report  # noqa: PLC0415

    try:
        spec = (
            _policy_spec(args.policy)
            if args.policy
            else DriftPolicySpec.model_validate({"targetRef": {"name": "backtest"}})
        )
        if "://" in args.profile:
            profile = load_registry_profile(args.profile, endpoint_url=args.endpoint_url, region=args.region)
        else:
            profile = Profile.from_json(Path(args.profile).read_bytes())
        data = Path(args.data)
        x = feature_matrix(data.read_bytes(), data.suffix in (".parquet", ".pq"), profile)
        checked = []
        for window in windows(profile, x, spec, args.window_rows):
            checked.append(window)
            print(json.dumps(window.record(profile)), flush=True)
        if args.report:
            whole = checked[0] if len(checked) == 1 else next(windows(profile, x, spec, None))
            policy = f"the policy in {Path(args.policy).name}" if args.policy else "the default tests, calibrated"
            compared = Compared(args.profile, data.name, policy, spec)
            Path(args.report).write_text(report(profile, whole, checked, compared), encoding="utf-8")
    except (BacktestError, InvalidSpec, OSError, ValueError) as error:
        print(f"regrow drift: {error}", file=sys.stderr)
        return 2
    return 1 if args.fail_on_breach and any(w.result.breached for w in checked) else 0


def _policy_spec(path: str) -> Any:
    from regrow.api import parse_spec  # noqa: PLC0415
    from regrow.api.driftpolicy import DriftPolicySpec  # noqa: PLC0415

    docs = [doc for doc in yaml.safe_load_all(Path(path).read_text()) if isinstance(doc, dict)]
    policy = next((doc for doc in docs if doc.get("kind") == "DriftPolicy"), None)
    if policy is None:
        raise InvalidSpec(f"{path} holds no DriftPolicy")
    return parse_spec(DriftPolicySpec, policy.get("spec"))


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name) or default


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of rows")
    return value


def _percent(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"{text} is not a percent (0 to 100)")
    return value


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="serve a registry model over the Open Inference Protocol",
        description="Each option's default is its environment variable ($REGROW_<OPTION>, named in its help), "
        "as a serving pod's manifest sets them, else the value in brackets.",
    )  # fmt: skip
    defaults = ServingEnv()

    def option(flag: str, field: str, kind: Callable[[str], Any] = str, what: str = "") -> None:
        shown = getattr(defaults, field)
        help_ = f"{what}{'; ' if what else ''}${ServingEnv.variable(field)}" + ("" if shown is None else f" [{shown}]")
        serve.add_argument(flag, dest=field, type=kind, help=help_, metavar=flag[2:].upper().replace("-", "_"))

    option("--registry", "registry")
    option("--model", "model_name")
    option("--alias", "model_alias")
    option("--version", "model_version", what="a version (wins over --alias)")
    option("--host", "host", what="address to listen on")
    option("--port", "port", int)
    option(
        "--metrics-port",
        "metrics_port",
        int,
        "answer /metrics and the reference profile on this port alone (0: on --port)",
    )
    option("--threads", "threads", int, "onnxruntime threads")
    option("--refresh-seconds", "refresh_seconds", float)
    option("--drain-seconds", "drain_seconds", float)
    option("--idle-timeout-seconds", "idle_timeout_seconds", float,
           "close connections silent this long (above a pooling proxy's idle timeout); "
           "408 for a request not whole this long after its first byte")  # fmt: skip
    option("--max-body-bytes", "max_body_bytes", int)
    option("--max-connections", "max_connections", int, "open connections at most; past it a new one gets 503")
    option("--max-rows", "max_rows", int, "rows in one inference request at most; past it 413")
    option("--shed-after-ms", "shed_after_ms", int,
           "an inference request that waited longer than this behind others gets 429")  # fmt: skip
    option("--log-percent", "prediction_log_percent", _percent, "share of requests written to the prediction log")
    option("--log-max-queue", "prediction_log_max_queue", int)
    option("--labellers-dir", "labellers_dir", what="a folder per named labeller, each file in it a token; with "
           "one, feedback needs the regrow-labeller-token header")  # fmt: skip
    option("--log-retention-seconds", "prediction_log_retention_seconds", int,
           "delete the log's files (every version's) older than this, about once an hour")  # fmt: skip
    option("--label-horizon-seconds", "label_horizon_seconds", int,
           "take a label for a prediction until it is this old (default 30 days)")  # fmt: skip
    option("--shadow-url", "shadow_url", what="mirror requests to the shadow pods behind this http:// URL, as they ask")
    option("--shadow-percent", "shadow_percent", _percent,
           "serve as a shadow: answer with predictions alone, log and bin nothing, and ask the stable pods for "
           "this percent of their requests (0: not a shadow)")  # fmt: skip
    option("--endpoint-url", "storage_endpoint", what="S3-compatible endpoint")
    serve.add_argument("--no-feature-bins", action="store_true", help="do not count inputs into drift bins")
    serve.add_argument("--region", default=_env("AWS_DEFAULT_REGION"))
    serve.set_defaults(func=_serve)


def _add_drift(commands: Any) -> None:
    drift = commands.add_parser(
        "drift",
        help="backtest a DriftPolicy on recorded data: one JSON line per window",
        description="Score recorded traffic against a reference profile with a DriftPolicy's tests (psi, calibrated, "
        "when no policy is given) and print one JSON object per window, with the verdict the policy would reach.",
    )
    drift.add_argument("--profile", required=True,
                       help="a profile.json, or <registry-uri>/<model>@<alias or version>")  # fmt: skip
    drift.add_argument(
        "--data", required=True, help="CSV or Parquet (.parquet) rows; columns not in the profile are ignored"
    )
    drift.add_argument(
        "--policy", help="a DriftPolicy YAML file: its tests, driftShare, minSamples, consecutiveBreaches"
    )
    drift.add_argument("--window-rows", type=_positive, help="rows per window; default: the whole file is one window")
    drift.add_argument("--fail-on-breach", action="store_true", help="exit 1 if any window breached")
    drift.add_argument("--report", help="also write an HTML page (self-contained) with the histograms and scores")
    drift.add_argument("--endpoint-url", default=_env("REGROW_STORAGE_ENDPOINT"), help="S3-compatible endpoint")
    drift.add_argument("--region", default=_env("AWS_DEFAULT_REGION"))
    drift.set_defaults(func=_drift)


def _add_kubeconfig(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--namespace", help="default: the kubeconfig context's namespace")
    parser.add_argument("--kubeconfig", default=_env("KUBECONFIG"), help="$KUBECONFIG, else ~/.kube/config")
    parser.add_argument("--context", help="kubeconfig context; default: the current one")


def _add_cluster_commands(commands: Any) -> None:
    """The commands a person runs against a cluster with their own kubeconfig."""
    approve = commands.add_parser("approve", help="approve the retrain a DriftPolicy with approval: Manual waits on")
    approve.add_argument("policy", help="the DriftPolicy's name")
    _add_kubeconfig(approve)
    approve.set_defaults(func=_approve)
    rotate = commands.add_parser("rotate-key", help="give a ModelDeployment a new key for its prediction ids")
    rotate.add_argument("deployment", help="the ModelDeployment's name")
    _add_kubeconfig(rotate)
    rotate.set_defaults(func=_rotate_key)
    status = commands.add_parser("status", help="what a ModelDeployment serves and how it got there")
    status.add_argument("deployment", help="the ModelDeployment's name")
    _add_kubeconfig(status)
    status.set_defaults(func=_status)
    for verb, what in (("promote", "continue a canary that waits for approval, to every pod"),
                       ("rollback", "end a running canary: the stable version keeps every pod")):  # fmt: skip
        decide = commands.add_parser(verb, help=what)
        decide.add_argument("deployment", help="the ModelDeployment's name")
        decide.add_argument("--reason", default="", help="why, recorded in the ModelDeployment's status")
        decide.add_argument("--as", dest="actor", help="who decides (recorded); default: the kubeconfig's user")
        if verb == "promote":
            decide.add_argument("--version", help="try this version, which a canary rolled back, again")
        _add_kubeconfig(decide)
        decide.set_defaults(func=_decide)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="regrow", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    crds = commands.add_parser("crds", help="write the CustomResourceDefinitions generated from the API models")
    crds.add_argument("--output-dir", type=Path, default=Path("crds"))
    crds.add_argument("--check", action="store_true", help="exit 1 if the files differ from the models")
    crds.set_defaults(func=_crds)

    validate = commands.add_parser("validate", help="check regrow resources in YAML files against the API")
    validate.add_argument("files", nargs="+")
    validate.set_defaults(func=_validate)

    op = commands.add_parser("operator", help="run the operator (all namespaces unless --namespace is given)")
    op.add_argument("--namespace", action="append", default=[], help="watch only this namespace (repeatable)")
    op.add_argument("--standalone", action="store_true", help="no leader election: this is the only replica")
    op.add_argument("--leader-election-namespace", default=_env("POD_NAMESPACE"),
                    help="namespace of the Lease replicas elect a leader with; default: $POD_NAMESPACE, "
                    "else the first --namespace, else default")  # fmt: skip
    op.add_argument("--liveness", help="liveness endpoint, such as http://0.0.0.0:8080/healthz")
    op.add_argument("--metrics-port", type=int, default=8081, help="Prometheus /metrics port; 0: none")
    op.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    op.add_argument("--log-format", default="plain", choices=["plain", "json"], help="json: one object per line")
    op.set_defaults(func=_operator)

    _add_serve(commands)

    restore = commands.add_parser("move-alias", help="move an alias to a version, if it still points at another")
    restore.add_argument("--registry", required=True)
    restore.add_argument("--model", required=True)
    restore.add_argument("--alias", required=True)
    restore.add_argument("--from", dest="from_version", required=True, help="the version it must point at now")
    restore.add_argument("--to", required=True, help="the version it is to point at")
    restore.add_argument("--endpoint-url", default=_env("REGROW_STORAGE_ENDPOINT"), help="S3-compatible endpoint")
    restore.add_argument("--region", default=_env("AWS_DEFAULT_REGION"))
    restore.set_defaults(func=_move_alias)

    _add_cluster_commands(commands)

    sample = commands.add_parser("sample-data", help="write a data set that ships with a package as CSV")
    sample.add_argument("name", choices=["iris", "wine", "breast_cancer", "diabetes", "penguins"])
    sample.add_argument("--output", help="file to write; standard output if unset")
    sample.set_defaults(func=_sample_data)

    _add_drift(commands)

    train = commands.add_parser("train", help="run one training (what a TrainingJob's pod runs)")
    train.add_argument("--spec-file", help="TrainingJob spec as JSON; default: $REGROW_TRAINING_SPEC")
    train.add_argument("--termination-log", type=Path, help="default: /dev/termination-log when present")
    train.set_defaults(func=_train)
    return parser


# The extra each subcommand's lazy imports come from (the core distribution has the others' dependencies).
EXTRAS = {
    "operator": "operator",
    "approve": "operator",
    "promote": "operator",
    "status": "operator",
    "rollback": "operator",
    "serve": "serving",
    "train": "training",
    "sample-data": "training",
    "drift": "training",
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ModuleNotFoundError as error:
        extra = EXTRAS.get(args.command)
        if extra is None or not error.name or error.name.startswith("regrow"):
            raise
        package = error.name.split(".", 1)[0]  # the distribution to install, not the submodule that failed
        print(f"regrow {args.command} needs {package}: pip install 'regrow[{extra}]'", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
