"""Multi-node training as a Kubeflow Training Operator TFJob (kubeflow.org/v1).

`tfjob_manifest` is the one place the custom resource is built (a pure function of its
arguments); `launch_tfjob` creates it through the `kubernetes` client's CustomObjectsApi, streams
its status changes, raises with the pods' termination reasons when it fails, and always deletes
it. The TFJob runs the project image's own CLI: `cyclegan -S train.strategy=multi_worker train`,
and the operator injects TF_CONFIG (port 2222) that MultiWorkerMirroredStrategy reads.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

GROUP, VERSION, PLURAL, KIND = "kubeflow.org", "v1", "tfjobs", "TFJob"
CONTAINER = "tensorflow"  # the Training Operator finds the TF container by this name
PORT = 2222
JOB_NAME_LABEL = "training.kubeflow.org/job-name"
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TFJobFailed(RuntimeError):
    """The TFJob reached the Failed condition; the message carries the pods' reasons."""


def job_name(run_id: str, prefix: str = "cyclegan-train") -> str:
    """A DNS-1123 name, short enough for the operator's `-worker-N` pod and service names."""
    suffix = re.sub(r"[^a-z0-9]", "", (run_id or "").lower())[:12] or f"{int(time.time())}"
    return f"{prefix}-{suffix}"


def current_namespace(default: str = "kubeflow") -> str:
    """The namespace this pod runs in (service-account mount), else `default`."""
    import os

    if SA_NAMESPACE.is_file():
        return SA_NAMESPACE.read_text().strip()
    return os.environ.get("POD_NAMESPACE", default)


def kube_apis():
    """(CustomObjectsApi, CoreV1Api) from the in-cluster config, else ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.CustomObjectsApi(), client.CoreV1Api()


def tfjob_manifest(
    name: str,
    namespace: str,
    image: str,
    workers: int,
    gpus_per_worker: int,
    data_uri: str,
    out_uri: str,
    params_overrides: list[str] | tuple[str, ...] = (),
    *,
    params_path: str | None = None,
    pvc_name: str | None = None,
    mount_path: str = "/mnt/cyclegan",
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, Any]] | None = None,
    resources: dict[str, dict[str, str]] | None = None,
    secret_env: list[dict[str, Any]] | None = None,
    service_account: str | None = None,
    backoff_limit: int = 3,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The TFJob custom resource: 1 Chief + (workers - 1) Workers of `image`.

    `workers` counts every training process (the Chief trains too, and writes the outputs).
    `secret_env`: [{"secret": NAME, "keys": {SECRET_KEY: ENV_NAME}, "optional": bool}].
    `resources`: {"requests": {...}, "limits": {...}} for cpu/memory; GPUs come from
    `gpus_per_worker`. Exit codes 128+ (143 = SIGTERM, a preempted node) restart the replica,
    which resumes from its checkpoints; 1-127 fail the job (`restartPolicy: ExitCode`).
    """
    if workers < 2:
        raise ValueError(f"a TFJob needs workers >= 2 (got {workers}); train in-process instead")
    if gpus_per_worker < 0:
        raise ValueError(f"gpus_per_worker must be >= 0, got {gpus_per_worker}")
    command = ["cyclegan"]
    if params_path:
        command += ["-p", params_path]
    for override in params_overrides:
        command += ["-S", override]
    command += ["-S", "train.strategy=multi_worker", "train", "--data", data_uri, "--out", out_uri]

    env: list[dict[str, Any]] = [
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        {"name": "TF_CPP_MIN_LOG_LEVEL", "value": "2"},
    ]
    if gpus_per_worker == 0:
        env.append({"name": "CUDA_VISIBLE_DEVICES", "value": "-1"})
    for spec in secret_env or []:
        for key, env_name in spec["keys"].items():
            env.append({"name": env_name, "valueFrom": {"secretKeyRef": {
                "name": spec["secret"], "key": key, "optional": bool(spec.get("optional", False))}}})  # fmt: skip

    res: dict[str, dict[str, Any]] = {
        "requests": dict((resources or {}).get("requests", {})),
        "limits": dict((resources or {}).get("limits", {})),
    }
    if gpus_per_worker:
        res["limits"]["nvidia.com/gpu"] = str(gpus_per_worker)
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": image,
        "command": command,
        "env": env,
        "ports": [{"name": "tfjob-port", "containerPort": PORT}],
        "resources": {k: v for k, v in res.items() if v},
    }
    pod_spec: dict[str, Any] = {"containers": [container]}
    if pvc_name:
        container["volumeMounts"] = [{"name": "work", "mountPath": mount_path}]
        pod_spec["volumes"] = [{"name": "work", "persistentVolumeClaim": {"claimName": pvc_name}}]
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [dict(t) for t in tolerations]
    if service_account:
        pod_spec["serviceAccountName"] = service_account

    def replica(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "ExitCode",
            "template": {
                # Istio sidecars break the workers' gRPC ring and keep finished pods running.
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": pod_spec,
            },
        }

    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/name": "cyclegan", **(labels or {})},
        },
        "spec": {
            # Keep finished pods until we delete the job, so their termination reasons can be read.
            "runPolicy": {"cleanPodPolicy": "None", "backoffLimit": backoff_limit},
            "tfReplicaSpecs": {"Chief": replica(1), "Worker": replica(workers - 1)},
        },
    }


def _true_conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"
    ]


def _get(value: Any, *names: str) -> Any:
    """Attribute (kubernetes model objects) or key (dicts) lookup along `names`."""
    for name in names:
        if value is None:
            return None
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
    return value


def pod_failure_reasons(core_api: Any, namespace: str, name: str) -> list[str]:
    """One line per failed container of the TFJob's pods: pod, container, reason, exit code, message."""
    pods = core_api.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}")
    lines = []
    for pod in _get(pods, "items") or []:
        pod_name = _get(pod, "metadata", "name")
        statuses = _get(pod, "status", "container_statuses") or []
        for status in statuses:
            term = _get(status, "state", "terminated") or _get(status, "last_state", "terminated")
            if term is None or _get(term, "exit_code") == 0:
                continue
            message = (_get(term, "message") or "").strip()
            lines.append(f"{pod_name}/{_get(status, 'name')}: {_get(term, 'reason')} "
                         f"(exit code {_get(term, 'exit_code')})" + (f": {message}" if message else ""))  # fmt: skip
        if not statuses and _get(pod, "status", "reason"):
            lines.append(f"{pod_name}: {_get(pod, 'status', 'reason')}: "
                         f"{_get(pod, 'status', 'message') or ''}".rstrip(": "))  # fmt: skip
    return lines


def launch_tfjob(
    api: Any,
    manifest: dict[str, Any],
    namespace: str,
    poll_s: float = 15.0,
    timeout_s: float = 24 * 3600.0,
    *,
    core_api: Any = None,
    out: TextIO | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """Create the TFJob, wait for Succeeded (returned: the final object) or Failed (raises
    TFJobFailed with the pods' termination reasons) or `timeout_s` (raises TimeoutError).
    The TFJob is deleted in every case. `api` is a kubernetes.client.CustomObjectsApi,
    `core_api` a CoreV1Api (to read pod failure reasons)."""
    out = out or sys.stdout
    name = manifest["metadata"]["name"]
    ref = {"group": GROUP, "version": VERSION, "namespace": namespace, "plural": PLURAL}

    def say(text: str) -> None:
        print(f"tfjob {namespace}/{name}: {text}", file=out, flush=True)

    try:
        api.create_namespaced_custom_object(body=manifest, **ref)
        say(f"created ({manifest['spec']['tfReplicaSpecs']['Worker']['replicas'] + 1} replicas)")
    except Exception as exc:
        if getattr(exc, "status", None) != 409:
            raise
        # A retried launcher pod (the previous one was preempted): wait on the running job.
        say("exists already (a retried launcher); waiting on it")
    started, seen, last_replicas = clock(), set(), None
    try:
        while True:
            obj = api.get_namespaced_custom_object(name=name, **ref)
            for cond in _true_conditions(obj):
                key = (cond.get("type"), cond.get("reason"), cond.get("lastTransitionTime"))
                if key not in seen:
                    seen.add(key)
                    say(
                        f"{cond.get('type')}: {cond.get('reason', '')} {cond.get('message', '')}".rstrip()
                    )
            replicas = (obj.get("status") or {}).get("replicaStatuses")
            if replicas and replicas != last_replicas:
                last_replicas = replicas
                say("replicas " + ", ".join(f"{k}={v}" for k, v in sorted(replicas.items())))
            types = {c.get("type") for c in _true_conditions(obj)}
            if "Succeeded" in types:
                say("succeeded")
                return obj
            if "Failed" in types:
                message = next(c.get("message", "") for c in _true_conditions(obj)
                               if c.get("type") == "Failed")  # fmt: skip
                reasons = pod_failure_reasons(core_api, namespace, name) if core_api else []
                detail = "\n  ".join(reasons) or "(no pod termination reason recorded)"
                raise TFJobFailed(f"TFJob {namespace}/{name} failed: {message}\n  {detail}")
            if clock() - started > timeout_s:
                raise TimeoutError(
                    f"TFJob {namespace}/{name} did not finish within {timeout_s:.0f} s "
                    f"(last conditions: {sorted(t for t in types if t)})"
                )
            sleep(poll_s)
    finally:
        try:
            api.delete_namespaced_custom_object(name=name, propagation_policy="Background", **ref)
            say("deleted")
        except Exception as exc:  # noqa: BLE001 — already gone, or the API is down: report, don't mask
            status = getattr(exc, "status", None)
            if status != 404:
                say(f"could not delete: {exc}")
