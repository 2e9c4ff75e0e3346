"""deploy/k8s/ validated offline against the Kubernetes schemas, and checked against the compose stack and the code.

Every manifest goes through ``kubernetes-validate`` (the API's JSON schemas, bundled in the package: nothing is
fetched) in strict mode, so an unknown field fails as a typo would on a cluster. Then the manifests are held to
docker-compose.yml (+ docker-compose.gpu.yml), the Dockerfile, the exported configs and service/metrics.py: ports,
environment, probes, volumes, the autoscaler's metric and the Prometheus jobs the rules select.
"""

import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from export.triton_repo import GPU_CONFIG_FILE
from tests.test_deploy import (
    PROMETHEUS,
    PROMTOOL,
    ROOT,
    dockerfile,
    dockerfile_env,
    exported_series,
    flags,
    models_in,
    prometheus_config,
    resolved,
)

K8S = ROOT / "deploy" / "k8s"
KUBERNETES = "1.30.0"  # the oldest Kubernetes these manifests are checked against (autoscaling/v2 is GA since 1.23)


def documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def resources() -> dict[tuple[str, str], dict]:
    """Every object of the kustomization's resources, by (kind, name)."""
    found = {}
    for name in kustomization()["resources"]:
        for doc in documents(K8S / name):
            found[doc["kind"], doc["metadata"]["name"]] = doc
    return found


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def mounts(deployment: dict) -> dict[str, tuple[dict, dict]]:
    """mountPath -> (volumeMount, volume) of a Deployment's container."""
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    return {m["mountPath"]: (m, volumes[m["name"]]) for m in container(deployment)["volumeMounts"]}


@pytest.fixture(scope="module")
def stack() -> dict:
    return resolved("gpu")["services"]


def manifest_files() -> list[Path]:
    return sorted(K8S.rglob("*.yaml"))


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifests_validate_against_the_kubernetes_schemas(path):
    if path.name == "kustomization.yaml":  # kustomize's own file, no API object
        assert sorted(kustomization()["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p != path)
        return
    for doc in documents(path):
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)  # raises on any error


def test_the_validator_rejects_a_broken_manifest():
    """The validation above means something: an unknown field and a wrong type are refused."""
    gateway = resources()["Deployment", "gateway"]
    broken = yaml.safe_load(yaml.safe_dump(gateway))
    container(broken)["readinessProbe"]["httpGet"]["pathh"] = "/readyz"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(gateway))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES, strict=True)


def test_gateway_matches_the_compose_service_and_the_image(stack):
    objects = resources()
    gateway = container(objects["Deployment", "gateway"])
    compose = stack["gateway"]
    assert gateway["image"] == compose["image"]
    env = {e["name"]: e["value"] for e in gateway["env"]}
    assert env == compose["environment"]  # backend, Triton's address (the Service of the same name), port, models
    host, port = env["TITOK_TRITON_URL"].split(":")
    triton_service = objects["Service", host]
    assert int(port) == int(flags(stack["triton"]["command"])["grpc-port"])
    assert int(port) in [p["port"] for p in triton_service["spec"]["ports"]]
    (http,) = gateway["ports"]
    assert http["containerPort"] == int(env["TITOK_PORT"]) == int(dockerfile_env()["TITOK_PORT"])
    (service_port,) = objects["Service", "gateway"]["spec"]["ports"]
    assert service_port["targetPort"] == http["name"]
    # probes: ready as the image's HEALTHCHECK (/readyz, same interval and timeout), alive on /healthz
    (check,) = [args for keyword, args in dockerfile() if keyword == "HEALTHCHECK"]
    ready, alive = gateway["readinessProbe"], gateway["livenessProbe"]
    assert ready["httpGet"] == {"path": "/readyz", "port": "http"} and alive["httpGet"]["path"] == "/healthz"
    assert f"--interval={ready['periodSeconds']}s" in check and f"--timeout={ready['timeoutSeconds']}s" in check
    assert f"--retries={ready['failureThreshold']}" in check
    assert gateway["resources"]["requests"] and gateway["resources"]["limits"]["memory"]


def test_gateway_runs_locked_down_with_what_it_must_write_on_volumes():
    deployment = resources()["Deployment", "gateway"]
    pod, gateway = deployment["spec"]["template"]["spec"]["securityContext"], container(deployment)
    (user,) = [args for keyword, args in dockerfile() if keyword == "USER"]
    assert pod["runAsNonRoot"] and f"{pod['runAsUser']}:{pod['runAsGroup']}" == user
    security = gateway["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]
    found = mounts(deployment)
    env = {e["name"]: e["value"] for e in gateway["env"]}
    models, volume = found[env["TITOK_MODEL_REPOSITORY"]]
    assert models["readOnly"] and volume["persistentVolumeClaim"]["readOnly"]
    for writable in ("/tmp", dockerfile_env()["HOME"]):  # a read-only root: these are emptyDirs
        assert "emptyDir" in found[writable][1], writable


def test_triton_matches_the_gpu_compose_service_and_the_gpu_configs(stack):
    objects = resources()
    deployment = objects["Deployment", "triton"]
    triton, compose = container(deployment), stack["triton"]
    assert triton["image"] == compose["image"] and triton["command"] == compose["command"]
    ports = {p["name"]: p["containerPort"] for p in triton["ports"]}
    command = flags(triton["command"])
    assert ports == {k: int(command[f"{k}-port"]) for k in ("http", "grpc", "metrics")}
    assert sorted(str(p) for p in ports.values()) == sorted(compose["expose"])
    service = {p["name"]: (p["port"], p["targetPort"]) for p in objects["Service", "triton"]["spec"]["ports"]}
    assert service == {name: (port, name) for name, port in ports.items()}
    for probe in ("startupProbe", "readinessProbe"):
        assert triton[probe]["httpGet"]["path"] == "/v2/health/ready"  # as compose's healthcheck
    gpus = triton["resources"]
    assert gpus["requests"]["nvidia.com/gpu"] == gpus["limits"]["nvidia.com/gpu"] == 1
    found = mounts(deployment)
    models, volume = found[command["model-repository"]]
    assert models["readOnly"] and volume["persistentVolumeClaim"]["claimName"] == "model-repository"
    gateway_models = mounts(objects["Deployment", "gateway"])["/app/model_repository"][1]
    assert gateway_models["persistentVolumeClaim"]["claimName"] == "model-repository"  # the same repository
    # TensorRT's engines: where every gpu.pbtxt keeps them is the engine-cache claim, as in docker-compose.gpu.yml
    repo = ROOT / "model_repository"
    for model in models_in(repo):
        config = text_format.Parse((repo / model / GPU_CONFIG_FILE).read_text(), mc.ModelConfig())
        (trt,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        cache = Path(trt.parameters["trt_engine_cache_path"])
        mount, volume = found[str(cache.parent)]
        assert volume["persistentVolumeClaim"]["claimName"] == "engine-cache" and not mount.get("readOnly")
    for claim in ("model-repository", "engine-cache"):
        assert ("PersistentVolumeClaim", claim) in objects
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]


def test_every_pod_is_scraped_on_its_metrics_port():
    for name, port in (("gateway", "http"), ("triton", "metrics")):
        deployment = resources()["Deployment", name]
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        ports = {p["name"]: p["containerPort"] for p in container(deployment)["ports"]}
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == ports[port], name


def test_prometheus_jobs_keep_the_names_the_rules_select(tmp_path):
    """deploy/k8s/prometheus.yml: the compose jobs' names, each keeping its Deployment's pods on the right port.
    Debian's promtool is built without Kubernetes discovery, so it checks a copy whose discovery is static."""
    config = yaml.safe_load((K8S / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    compose_jobs = {job["job_name"] for job in prometheus_config()["scrape_configs"]} - {"prometheus"}
    assert set(jobs) == compose_jobs
    for name, port in (("gateway", "http"), ("triton", "metrics")):
        deployment = resources()["Deployment", name]
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        (keep,) = [r for r in jobs[name]["relabel_configs"] if r.get("action") == "keep"]
        assert keep["regex"] == f"{labels['app.kubernetes.io/name']};{port}", name
        targets = {r["target_label"] for r in jobs[name]["relabel_configs"] if "target_label" in r}
        assert {"namespace", "pod"} <= targets  # what the Prometheus adapter maps series to pods by
        assert jobs[name]["kubernetes_sd_configs"][0]["namespaces"]["names"] == [kustomization()["namespace"]]
    assert [(K8S / f).resolve() for f in config["rule_files"]] == [PROMETHEUS / "rules.yml"]
    if not PROMTOOL.exists():
        pytest.fail("promtool is missing: make tools (Debian's prometheus package)")
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": ["127.0.0.1:8000"]}]
        del job["kubernetes_sd_configs"]
    config["rule_files"] = [str(PROMETHEUS / "rules.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    done = subprocess.run([str(PROMTOOL), "check", "config", str(tmp_path / "prometheus.yml")], capture_output=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_autoscaler_scales_the_gateway_on_an_exported_metric():
    objects = resources()
    hpa = objects["HorizontalPodAutoscaler", "gateway"]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "gateway") and ("Deployment", "gateway") in objects
    assert 1 <= hpa["minReplicas"] <= objects["Deployment", "gateway"]["spec"]["replicas"] <= hpa["maxReplicas"]
    (pods,) = [m["pods"] for m in hpa["metrics"] if m["type"] == "Pods"]
    name = pods["metric"]["name"]
    assert name in exported_series()  # a gauge of service/metrics.py
    # the Prometheus adapter serves it under that name, per pod
    (adapter,) = documents(K8S / "prometheus-adapter" / "config.yaml")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])["rules"]
    (rule,) = [r for r in rules if r["name"]["as"] == name]
    assert rule["seriesQuery"].startswith(f"{name}{{") and rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
