"""Generate `kuberay-v1.schema.json`: JSON Schemas for KubeRay's RayCluster, RayJob and RayService (ray.io/v1).

Why generated, not copied: KubeRay's CRD files (ray-operator/config/crd/bases/ray.io_*.yaml) are ~1 MB
each, nearly all of it the inlined Kubernetes pod template. So this schema is assembled from:
  * the ray.io/v1 fields, written out from KubeRay's v1 API types (ray-operator/apis/ray/v1), strict
    (unknown keys rejected, as the API server's structural schema prunes/rejects them), and
  * core/v1 PodTemplateSpec generated from the official Kubernetes Python client's models
    (pydantic), with Kubernetes quantities as int-or-string. Unknown pod-template keys are rejected too.
Reduced: status sub-resources and rarely used fields (headService spec internals, gcsFaultToleranceOptions
internals) are open objects. Regenerate: `pip install kubernetes==37.0.2 && python cluster/schemas/generate.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from kubernetes.client import models as k8s

OUT = Path(__file__).with_name("kuberay-v1.schema.json")
QUANTITY = {"anyOf": [{"type": "integer"}, {"type": "number"}, {"type": "string"}]}


def _strict(node):
    """additionalProperties: false on every object that lists its properties; quantities int-or-string."""
    if isinstance(node, dict):
        for key in ("description", "title", "default"):  # size: 4x smaller; errors never show them
            if isinstance(node.get(key), (str, type(None))):
                node.pop(key, None)
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
    return node


def pod_template_defs() -> dict:
    schema = k8s.V1PodTemplateSpec.model_json_schema(by_alias=True, mode="serialization",
                                                       ref_template="#/$defs/{model}")
    defs = schema.pop("$defs")
    defs["V1PodTemplateSpec"] = schema
    for name in ("V1ResourceRequirements", "V1VolumeResourceRequirements"):
        for key in ("limits", "requests"):
            prop = defs.get(name, {}).get("properties", {}).get(key)
            if prop:
                prop.clear()
                prop.update({"anyOf": [{"type": "object", "additionalProperties": QUANTITY}, {"type": "null"}]})
    return _strict(defs)


def obj(properties: dict, required: list[str] | None = None) -> dict:
    out = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        out["required"] = required
    return out


STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
INT = {"type": "integer"}
POD = {"$ref": "#/$defs/V1PodTemplateSpec"}
OPEN = {"type": "object"}


def kuberay_defs() -> dict:
    autoscaler = obj({
        "version": {"enum": ["v1", "v2"]},
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "idleTimeoutSeconds": INT, "image": {"type": "string"}, "imagePullPolicy": {"type": "string"},
        "resources": {"$ref": "#/$defs/V1ResourceRequirements"},
        "env": {"type": "array", "items": {"$ref": "#/$defs/V1EnvVar"}},
        "envFrom": {"type": "array", "items": {"$ref": "#/$defs/V1EnvFromSource"}},
        "securityContext": {"$ref": "#/$defs/V1SecurityContext"},
        "volumeMounts": {"type": "array", "items": {"$ref": "#/$defs/V1VolumeMount"}},
    })
    # KubeRay requires rayStartParams values to be strings ("0", "true"), a classic mistake.
    head = obj({"rayStartParams": STR_MAP, "template": POD, "serviceType": {"type": "string"},
                "headService": OPEN, "enableIngress": {"type": "boolean"}}, ["template"])
    worker = obj({
        "groupName": {"type": "string", "minLength": 1}, "replicas": {**INT, "minimum": 0},
        "minReplicas": {**INT, "minimum": 0}, "maxReplicas": {**INT, "minimum": 0},
        "idleTimeoutSeconds": INT, "numOfHosts": {**INT, "minimum": 1}, "rayStartParams": STR_MAP,
        "template": POD, "suspend": {"type": "boolean"},
        "scaleStrategy": obj({"workersToDelete": {"type": "array", "items": {"type": "string"}}}),
    }, ["groupName", "template"])
    cluster_spec = obj({
        "rayVersion": {"type": "string"}, "enableInTreeAutoscaling": {"type": "boolean"},
        "autoscalerOptions": autoscaler, "headGroupSpec": head,
        "workerGroupSpecs": {"type": "array", "items": worker},
        "headServiceAnnotations": STR_MAP, "suspend": {"type": "boolean"}, "managedBy": {"type": "string"},
        "gcsFaultToleranceOptions": OPEN,
    }, ["headGroupSpec"])
    job_spec = obj({
        "entrypoint": {"type": "string"}, "runtimeEnvYAML": {"type": "string"}, "jobId": {"type": "string"},
        "metadata": STR_MAP, "shutdownAfterJobFinishes": {"type": "boolean"},
        "ttlSecondsAfterFinished": {**INT, "minimum": 0}, "activeDeadlineSeconds": {**INT, "minimum": 1},
        "backoffLimit": {**INT, "minimum": 0}, "rayClusterSpec": {"$ref": "#/$defs/RayClusterSpec"},
        "clusterSelector": STR_MAP,
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "submitterPodTemplate": POD, "submitterConfig": obj({"backoffLimit": INT}),
        "entrypointNumCpus": {"type": "number", "minimum": 0}, "entrypointNumGpus": {"type": "number", "minimum": 0},
        "entrypointResources": {"type": "string"}, "suspend": {"type": "boolean"}, "managedBy": {"type": "string"},
        "deletionStrategy": OPEN,
    })
    service_spec = obj({
        "serveConfigV2": {"type": "string"}, "rayClusterConfig": {"$ref": "#/$defs/RayClusterSpec"},
        "upgradeStrategy": obj({"type": {"enum": ["NewCluster", "NewClusterWithIncrementalUpgrade", "None"]},
                                "clusterUpgradeOptions": OPEN}),
        "serviceUnhealthySecondThreshold": INT, "deploymentUnhealthySecondThreshold": INT,
        "excludeHeadPodFromServeSvc": {"type": "boolean"}, "serveService": OPEN,
    }, ["rayClusterConfig"])
    meta = obj({"name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
                "namespace": {"type": "string"}, "labels": STR_MAP, "annotations": STR_MAP}, ["name"])

    def resource(kind: str, spec: str) -> dict:
        return obj({"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind}, "metadata": meta,
                    "spec": {"$ref": f"#/$defs/{spec}"}}, ["apiVersion", "kind", "metadata", "spec"])

    return {"RayClusterSpec": cluster_spec, "RayJobSpec": job_spec, "RayServiceSpec": service_spec,
            "RayCluster": resource("RayCluster", "RayClusterSpec"), "RayJob": resource("RayJob", "RayJobSpec"),
            "RayService": resource("RayService", "RayServiceSpec")}


def main() -> None:
    defs = {**pod_template_defs(), **kuberay_defs()}
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "KubeRay ray.io/v1 RayCluster, RayJob, RayService (reduced; see generate.py)",
        "oneOf": [{"$ref": "#/$defs/RayCluster"}, {"$ref": "#/$defs/RayJob"}, {"$ref": "#/$defs/RayService"}],
        "$defs": defs,
    }
    OUT.write_text(json.dumps(schema, indent=1, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({OUT.stat().st_size // 1024} KiB, {len(defs)} definitions)")


if __name__ == "__main__":
    main()
