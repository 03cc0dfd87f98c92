"""The multi-node training TFJob: its manifest, and the launcher's wait logic.

No Kubernetes cluster (nor Training Operator) can run here, so the launcher is driven by a
scripted stand-in for the `kubernetes` client's CustomObjectsApi / CoreV1Api — the only fake in
these tests. The pods it reports are the real `kubernetes.client` model objects.
"""

import io
import json

import pytest
from kubernetes import client

from pipeline.tfjob import (
    CONTAINER,
    JOB_NAME_LABEL,
    TFJobFailed,
    job_name,
    launch_tfjob,
    tfjob_manifest,
)

IMAGE = "registry.example.com/ml/cyclegan:1.2.3"


def manifest(**kw):
    args = dict(name="cyclegan-train-abc", namespace="ml", image=IMAGE, workers=2,
                gpus_per_worker=1, data_uri="/mnt/cyclegan/run/data",
                out_uri="/mnt/cyclegan/run/train", params_overrides=["train.epochs=3"],
                params_path="/mnt/cyclegan/run/params.yaml", pvc_name="cyclegan-work",
                node_selector={"nvidia.com/gpu.present": "true"},
                tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                resources={"requests": {"cpu": "4", "memory": "16G"}, "limits": {"memory": "32G"}},
                secret_env=[{"secret": "cyclegan-s3", "keys": {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID"}}])  # fmt: skip
    args.update(kw)
    return tfjob_manifest(**args)


def as_model(data: dict, kind: str):
    """Round-trip through the kubernetes client's models: unknown or misspelt fields drop out."""

    class Response:
        pass

    response = Response()
    response.data = json.dumps(data)
    api = client.ApiClient()
    return api.sanitize_for_serialization(api.deserialize(response, kind))


def test_manifest_for_two_workers_has_the_tfjob_shape():
    m = manifest()
    assert m["apiVersion"] == "kubeflow.org/v1" and m["kind"] == "TFJob"
    assert m["metadata"]["name"] == "cyclegan-train-abc" and m["metadata"]["namespace"] == "ml"
    specs = m["spec"]["tfReplicaSpecs"]
    assert set(specs) == {"Chief", "Worker"}
    assert specs["Chief"]["replicas"] == 1 and specs["Worker"]["replicas"] == 1
    for spec in specs.values():
        assert spec["restartPolicy"] == "ExitCode"  # 143 (preempted) restarts, 1 fails
        pod = spec["template"]["spec"]
        assert as_model(spec["template"], "V1PodTemplateSpec") == spec["template"]
        (container,) = pod["containers"]
        assert container["name"] == CONTAINER == "tensorflow"
        assert container["image"] == IMAGE
        assert container["command"] == [
            "cyclegan", "-p", "/mnt/cyclegan/run/params.yaml", "-S", "train.epochs=3",
            "-S", "train.strategy=multi_worker",
            "train", "--data", "/mnt/cyclegan/run/data", "--out", "/mnt/cyclegan/run/train",
        ]  # fmt: skip
        assert container["resources"]["limits"] == {"memory": "32G", "nvidia.com/gpu": "1"}
        assert container["ports"] == [{"name": "tfjob-port", "containerPort": 2222}]
        assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "cyclegan-work"
        assert container["volumeMounts"][0]["mountPath"] == "/mnt/cyclegan"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"][0]["key"] == "nvidia.com/gpu"
        secret = {e["name"]: e["valueFrom"]["secretKeyRef"]["name"] for e in container["env"]
                  if "valueFrom" in e}  # fmt: skip
        assert secret == {"AWS_ACCESS_KEY_ID": "cyclegan-s3"}
    assert m["spec"]["runPolicy"]["cleanPodPolicy"] == "None"
    json.dumps(m)  # plain data, ready for the API


def test_manifest_scales_workers_and_runs_on_cpu():
    m = manifest(workers=4, gpus_per_worker=0, pvc_name=None, node_selector=None, tolerations=None)
    assert m["spec"]["tfReplicaSpecs"]["Worker"]["replicas"] == 3
    container = m["spec"]["tfReplicaSpecs"]["Chief"]["template"]["spec"]["containers"][0]
    assert "nvidia.com/gpu" not in container["resources"].get("limits", {})
    assert {"name": "CUDA_VISIBLE_DEVICES", "value": "-1"} in container["env"]
    with pytest.raises(ValueError, match="workers >= 2"):
        manifest(workers=1)


def test_job_name_is_a_short_dns_label():
    name = job_name("5D0F1C2E-8A77-4B9A-9C3D-0123456789AB")
    assert name == "cyclegan-train-5d0f1c2e8a77"
    assert len(name) <= 40 and name.replace("-", "").isalnum() and name.islower()


# ---------------------------------------------------------------------------- launcher


def cond(type_, status="True", reason="", message="", t="2026-01-01T00:00:00Z"):
    return {"type": type_, "status": status, "reason": reason, "message": message,
            "lastTransitionTime": f"{t}{type_}"}  # fmt: skip


class FakeCustomObjects:
    """Answers get_namespaced_custom_object with a script of TFJob statuses (last one repeats)."""

    def __init__(self, statuses):
        self.statuses = list(statuses)
        self.calls = []
        self.created = None

    def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
        self.calls.append(("create", group, version, namespace, plural, body["metadata"]["name"]))
        self.created = body
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.calls.append(("get", name))
        status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {**self.created, "status": status}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name, **kw):
        self.calls.append(("delete", group, version, namespace, plural, name))
        return {}


class FakeCoreV1:
    def __init__(self, pods):
        self.pods = pods
        self.selectors = []

    def list_namespaced_pod(self, namespace, label_selector=None, **kw):
        self.selectors.append((namespace, label_selector))
        return client.V1PodList(items=self.pods)


class FakeClock:
    def __init__(self):
        self.now = 0.0
        self.sleeps = []

    def sleep(self, s):
        self.sleeps.append(s)
        self.now += s

    def __call__(self):
        return self.now


def launch(api, core=None, timeout_s=3600.0):
    clock, out = FakeClock(), io.StringIO()
    m = manifest()
    try:
        result = launch_tfjob(api, m, "ml", poll_s=10, timeout_s=timeout_s, core_api=core,
                              out=out, sleep=clock.sleep, clock=clock)  # fmt: skip
        return result, out.getvalue(), clock
    except Exception as exc:
        exc.log, exc.clock = out.getvalue(), clock
        raise


def test_launcher_waits_for_success_and_deletes_the_job():
    api = FakeCustomObjects([
        {},
        {"conditions": [cond("Created", reason="TFJobCreated")]},
        {"conditions": [cond("Created"), cond("Running", reason="TFJobRunning")],
         "replicaStatuses": {"Chief": {"active": 1}, "Worker": {"active": 1}}},
        {"conditions": [cond("Created"), cond("Running", status="False"),
                        cond("Succeeded", reason="TFJobSucceeded", message="done")],
         "replicaStatuses": {"Chief": {"succeeded": 1}, "Worker": {"succeeded": 1}}},
    ])  # fmt: skip
    result, log, clock = launch(api)
    assert result["status"]["conditions"][-1]["type"] == "Succeeded"
    assert api.calls[0] == ("create", "kubeflow.org", "v1", "ml", "tfjobs", "cyclegan-train-abc")
    assert api.calls[-1] == ("delete", "kubeflow.org", "v1", "ml", "tfjobs", "cyclegan-train-abc")
    assert [c[0] for c in api.calls].count("delete") == 1
    assert clock.sleeps == [10, 10, 10]
    # the status changes are streamed, in order, once each
    lines = log.splitlines()
    order = [next(i for i, ln in enumerate(lines) if word in ln)
             for word in ("created", "Created: TFJobCreated", "Running: TFJobRunning",
                          "Succeeded: TFJobSucceeded", "deleted")]  # fmt: skip
    assert order == sorted(order)
    assert sum("Running: TFJobRunning" in ln for ln in lines) == 1
    assert any("Chief={'active': 1}" in ln for ln in lines)


def terminated_pod(name, reason, exit_code, message):
    state = client.V1ContainerState(terminated=client.V1ContainerStateTerminated(
        reason=reason, exit_code=exit_code, message=message))  # fmt: skip
    status = client.V1ContainerStatus(name="tensorflow", image=IMAGE, image_id="", ready=False,
                                      restart_count=0, state=state)  # fmt: skip
    return client.V1Pod(metadata=client.V1ObjectMeta(name=name),
                        status=client.V1PodStatus(phase="Failed", container_statuses=[status]))  # fmt: skip


def test_launcher_raises_with_the_pods_reasons_on_failure_and_still_deletes():
    api = FakeCustomObjects([
        {"conditions": [cond("Created"), cond("Running")]},
        {"conditions": [cond("Created"), cond("Running", status="False"),
                        cond("Failed", reason="TFJobFailed", message="TFJob ml/x has failed because 1 Worker replica(s) failed.")]},
    ])  # fmt: skip
    ok = client.V1Pod(metadata=client.V1ObjectMeta(name="cyclegan-train-abc-chief-0"),
                      status=client.V1PodStatus(phase="Running", container_statuses=[]))  # fmt: skip
    core = FakeCoreV1([ok, terminated_pod("cyclegan-train-abc-worker-0", "OOMKilled", 137, "")])
    with pytest.raises(TFJobFailed) as info:
        launch(api, core)
    message = str(info.value)
    assert "1 Worker replica(s) failed" in message
    assert "cyclegan-train-abc-worker-0/tensorflow: OOMKilled (exit code 137)" in message
    assert "chief-0" not in message
    assert core.selectors == [("ml", f"{JOB_NAME_LABEL}=cyclegan-train-abc")]
    assert api.calls[-1][0] == "delete"


def test_launcher_reports_the_termination_message():
    api = FakeCustomObjects([{"conditions": [cond("Failed", message="failed")]}])
    core = FakeCoreV1([terminated_pod("p-chief-0", "Error", 1,
                                      "cyclegan train: error: 'out/data' has no training images")])  # fmt: skip
    with pytest.raises(TFJobFailed, match="Error \\(exit code 1\\): cyclegan train: error"):
        launch(api, core)
    assert api.calls[-1][0] == "delete"


def test_launcher_times_out_and_deletes_the_job():
    api = FakeCustomObjects([{"conditions": [cond("Created"), cond("Running")]}])
    with pytest.raises(TimeoutError, match="did not finish within 30 s") as info:
        launch(api, timeout_s=30)
    assert info.value.clock.now >= 30
    assert api.calls[-1] == ("delete", "kubeflow.org", "v1", "ml", "tfjobs", "cyclegan-train-abc")
    assert "deleted" in info.value.log


def test_a_retried_launcher_adopts_the_existing_job():
    class Conflict(Exception):
        status = 409

    class Existing(FakeCustomObjects):
        def create_namespaced_custom_object(self, group, version, namespace, plural, body, **kw):
            self.created = body
            raise Conflict("AlreadyExists")

    api = Existing([{"conditions": [cond("Running")]}, {"conditions": [cond("Succeeded")]}])
    result, log, _ = launch(api)
    assert result["status"]["conditions"][0]["type"] == "Succeeded"
    assert "exists already" in log and api.calls[-1][0] == "delete"


def test_other_create_errors_propagate_without_a_delete():
    class Forbidden(Exception):
        status = 403

    class NoRbac(FakeCustomObjects):
        def create_namespaced_custom_object(self, *a, **kw):
            raise Forbidden("tfjobs.kubeflow.org is forbidden")

    api = NoRbac([{}])
    with pytest.raises(Forbidden):
        launch(api)
    assert api.calls == []
