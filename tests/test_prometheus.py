"""A real Prometheus (Debian's package) scraping a real gateway on the Triton backend and a real Triton, under load.

Prometheus runs deploy/prometheus/prometheus.yml with its service discovery swapped for the loopback addresses of the
test's servers (same jobs, same rules.yml) and a 2 s scrape and evaluation interval. After a little load (tokenize,
detokenize, generate, and a few bad requests so that the error series exist), every expression of every dashboard
panel and every rule goes through Prometheus' HTTP API: each must be valid PromQL and return data, Grafana's
variables replaced the way Grafana would. GPU-only panels are valid but cannot have data on a CPU host.
"""

import base64
import math
import re
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import free_port
from tests.processes import stop_process, wait_until_ready
from tests.test_deploy import PROMETHEUS as CONFIG_DIR
from tests.test_deploy import dashboards, panels, rule_groups

pytestmark = pytest.mark.slow

PROMETHEUS = Path("/usr/bin/prometheus")
SCRAPE_S = 2  # scrape and rule evaluation interval of the test's Prometheus ($__rate_interval: 8 s)
LOAD_S = 12
# Panels that cannot return data on this CPU-only host; their queries must still be valid PromQL.
GPU_ONLY = {
    ("triton", "GPU utilization"): "nv_gpu_* exist only where Triton sees a GPU (docker-compose.gpu.yml)",
    ("triton", "GPU memory used"): "nv_gpu_* exist only where Triton sees a GPU (docker-compose.gpu.yml)",
}
ALERT = re.compile(r"^(?P<lhs>.+?)\s*(?:>|<|>=|<=|==|!=)\s*(?P<threshold>[-+0-9.e]+)\s*$", re.S)
ABSENT = re.compile(r"^absent\((?P<inner>.+)\)$", re.S)


class Prometheus:
    """``prometheus`` on a free loopback port, scraping the given targets per job of the deployment's config."""

    def __init__(self, workdir: Path, targets: dict[str, str]):
        config = yaml.safe_load((CONFIG_DIR / "prometheus.yml").read_text())
        config["global"] = {"scrape_interval": f"{SCRAPE_S}s", "evaluation_interval": f"{SCRAPE_S}s"}
        config["rule_files"] = [str(CONFIG_DIR / f) for f in config["rule_files"]]
        self.port = free_port()
        targets = {**targets, "prometheus": f"127.0.0.1:{self.port}"}
        for job in config["scrape_configs"]:  # the compose services' discovery, replaced by the test's servers
            job.pop("dns_sd_configs", None)
            job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "prometheus.log"
        cmd = [
            str(PROMETHEUS),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if wait_until_ready(self.proc, f"{self.url}/-/ready", timeout=30, interval=0.2):
            return
        assert self.proc.poll() is None, self.log.read_text()
        self.stop()
        raise RuntimeError(f"prometheus did not get ready:\n{self.log.read_text()}")

    def api(self, path: str, **params) -> dict:
        body = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10).json()
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str, at: float) -> list[float]:
        """The values of an instant query at ``at`` (a scalar counts as one value)."""
        data = self.api("query", query=expr, time=f"{at:.3f}")
        if data["resultType"] == "scalar":
            return [float(data["result"][1])]
        return [float(sample["value"][1]) for sample in data["result"]]

    def stop(self) -> None:
        stop_process(self.proc)


def drive(url: str, seconds: float, workers: int = 3) -> Counter:
    """Closed-loop load: generate (tokens back), tokenize its image, detokenize its tokens, and three bad requests."""
    statuses, lock = Counter(), threading.Lock()

    def loop(seed: int):
        with httpx.Client(base_url=url, timeout=60) as client:
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                body = {"class_labels": ["Sneaker", 9], "n": 1, "seed": seed, "num_steps": 4, "return_tokens": True}
                generated = client.post("/v1/generate", json=body)
                answers = [generated]
                if generated.status_code == 200:
                    image = generated.json()["images"][0]
                    png = base64.b64decode(image["b64_json"])
                    answers.append(client.post("/v1/tokenize", files={"files": ("x.png", png, "image/png")}))
                    answers.append(client.post("/v1/detokenize", json={"tokens": [image["tokens"]]}))
                answers.append(client.post("/v1/generate", json={"class_labels": ["Hat"]}))  # 400 unknown class
                answers.append(client.post("/v1/detokenize", json={"tokens": [[-1] * 32]}))  # 400 id out of range
                answers.append(client.get("/v1/nothing-here"))  # 404
                with lock:
                    statuses.update(a.status_code for a in answers)
                seed += workers

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def grafana_interpolate(expr: str, variables: list[dict], range_s: float = 300, max_points: int = 1000) -> str:
    """Replace Grafana's variables as Grafana does for a ``range_s`` dashboard ``max_points`` wide, every template
    variable set to All. ``$__interval``: the range over the points, at least the data source's scrape interval;
    ``$__rate_interval``: max($__interval + scrape interval, 4 x scrape interval)."""
    interval = max(SCRAPE_S, math.ceil(range_s / max_points))
    values = {"__interval": f"{interval}s", "__rate_interval": f"{max(interval + SCRAPE_S, 4 * SCRAPE_S)}s"}
    values |= {v["name"]: v["allValue"] for v in variables}
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


@pytest.fixture(scope="module")
def loaded(triton, triton_gateway, tmp_path_factory):
    """Prometheus scraping the gateway and Triton, after LOAD_S seconds of load; yields (prometheus, when)."""
    if not PROMETHEUS.exists():
        pytest.fail("prometheus is missing: make tools (Debian's prometheus package)")
    metrics = triton.metrics_url.removeprefix("http://").removesuffix("/metrics")
    targets = {"gateway": triton_gateway.url.removeprefix("http://"), "triton": metrics}
    prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), targets)
    try:
        time.sleep(3 * SCRAPE_S)  # a few scrapes before the load: rates start from a known count
        statuses = drive(triton_gateway.url, LOAD_S)
        when = time.time()
        assert statuses[200] >= 9 and statuses[400] and statuses[404], statuses
        time.sleep(3 * SCRAPE_S)  # the last samples scraped and the rules evaluated on them
        yield prometheus, when
    finally:
        prometheus.stop()


def test_targets_are_up_and_rules_evaluate_without_errors(loaded):
    prometheus, _ = loaded
    targets = prometheus.api("targets")["activeTargets"]
    assert sorted(t["labels"]["job"] for t in targets) == ["gateway", "prometheus", "triton"]
    assert all(t["health"] == "up" for t in targets), [(t["scrapeUrl"], t["lastError"]) for t in targets]
    rules = [r for g in prometheus.api("rules")["groups"] for r in g["rules"]]
    assert len(rules) == sum(len(g["rules"]) for g in rule_groups())
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]


def test_every_dashboard_query_is_valid_and_returns_data(loaded):
    prometheus, when = loaded
    empty, exempt = [], []
    for name, dashboard in dashboards().items():
        variables = dashboard["templating"]["list"]
        for panel in panels(dashboard):
            for target in panel["targets"]:
                values = prometheus.query(grafana_interpolate(target["expr"], variables), when)  # valid or raises
                if (name, panel["title"]) in GPU_ONLY:
                    exempt.append(panel["title"])
                elif not any(math.isfinite(v) for v in values):
                    empty.append(f"{name}: {panel['title']} [{target['refId']}]: {target['expr']} -> {values}")
    assert not empty, "\n".join(empty)
    assert sorted(set(exempt)) == sorted(title for _, title in GPU_ONLY)  # the exemptions name real panels


def test_dashboard_variables_have_values(loaded):
    """A query variable ``label_values(metric, label)`` lists the label's values on that metric (All covers them)."""
    prometheus, _ = loaded
    for name, dashboard in dashboards().items():
        for variable in dashboard["templating"]["list"]:
            metric, label = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]).groups()
            assert prometheus.api(f"label/{label}/values", **{"match[]": metric}), f"{name}: ${variable['name']}"


def test_every_rule_is_valid_and_returns_data(loaded):
    """Recording rules: the expression and the recorded series. Alerts: the left-hand side has data, the whole
    comparison is valid (it is empty unless the alert is pending or firing); an ``absent(...)`` alert: its expression
    has data (the job is up) and the alert's is empty."""
    prometheus, when = loaded
    for group in rule_groups():
        for rule in group["rules"]:
            if "record" in rule:
                for expr in (rule["expr"], rule["record"]):
                    values = prometheus.query(expr, when)
                    assert any(math.isfinite(v) for v in values), f"{rule['record']}: {expr} -> {values}"
            elif absent := ABSENT.match(rule["expr"].strip()):
                values = prometheus.query(absent["inner"], when)
                assert any(math.isfinite(v) for v in values), f"{rule['alert']}: {absent['inner']} -> {values}"
                assert prometheus.query(rule["expr"], when) == [], rule["alert"]
            else:
                match = ALERT.match(rule["expr"])
                assert match, f"{rule['alert']}: neither `<expression> <comparison> <threshold>` nor `absent(...)`"
                values = prometheus.query(match["lhs"], when)
                assert any(math.isfinite(v) for v in values), f"{rule['alert']}: {match['lhs']} -> {values}"
                prometheus.query(rule["expr"], when)
