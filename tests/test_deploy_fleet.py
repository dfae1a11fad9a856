"""The fleet examples, checked offline with the real tools: docker compose config, haproxy -c, kubernetes-validate,
promtool; and the shared CA: replicas reading one read-only CA directory present the same certificate."""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mitmproxy.certs import CertStore

from tests.test_alerts import RULES_FILE, run_promtool
from tests.test_deploy import compose_model, run_compose

REPO = Path(__file__).resolve().parents[1]
FLEET = REPO / "deploy" / "compose.fleet.yaml"
HAPROXY = REPO / "deploy" / "haproxy" / "haproxy.cfg"
K8S = REPO / "deploy" / "kubernetes"
PROXIES = ("proxy-1", "proxy-2", "proxy-3")
CONFDIR = "/home/app/.mitmproxy"


@pytest.fixture(scope="module")
def fleet() -> dict[str, Any]:
    return compose_model(files=(FLEET,))


def _haproxy(path: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("haproxy")
    if binary is None:
        pytest.fail("haproxy is not on PATH: ./dev test installs it (apt-get install haproxy)")
    return subprocess.run([binary, "-c", "-f", str(path)], capture_output=True, text=True, timeout=60, check=False)


def _option(command: list[str], name: str) -> str:
    """The value of `--set name=value` in a container command."""
    sets = dict(command[i + 1].split("=", 1) for i, arg in enumerate(command[:-1]) if arg == "--set")
    return sets[name]


# -- compose -------------------------------------------------------------------------------------------


def test_compose_fleet_config_is_valid_and_has_three_replicas_a_balancer_and_prometheus(fleet: dict[str, Any]) -> None:
    run_compose("config", "--quiet", files=(FLEET,))
    assert set(fleet["services"]) == {"ca-init", *PROXIES, "haproxy", "prometheus"}
    for name, service in fleet["services"].items():
        image = service["image"]
        assert ":" in image and not image.endswith(":latest"), f"{name}: pin the image ({image})"


def test_each_replica_has_its_own_instance_id_and_shares_the_data_and_the_read_only_ca(fleet: dict[str, Any]) -> None:
    services = fleet["services"]
    ids = {_option(services[p]["command"], "copilot_instance_id") for p in PROXIES}
    assert ids == set(PROXIES)
    for proxy in PROXIES:
        mounts = {v["target"]: v for v in services[proxy]["volumes"]}
        assert mounts["/data"]["source"] == "copilot-data" and not mounts["/data"].get("read_only")
        assert mounts[CONFDIR]["source"] == "copilot-ca" and mounts[CONFDIR]["read_only"] is True
        assert services[proxy]["depends_on"]["ca-init"]["condition"] == "service_completed_successfully"
    init = {v["target"]: v for v in services["ca-init"]["volumes"]}
    assert init[CONFDIR]["source"] == "copilot-ca" and not init[CONFDIR].get("read_only")


def test_the_ca_init_command_creates_a_ca_once_and_keeps_it(tmp_path: Path, fleet: dict[str, Any]) -> None:
    entrypoint = fleet["services"]["ca-init"]["entrypoint"]
    assert entrypoint[:2] == ["python", "-c"]
    code = entrypoint[2].replace(CONFDIR, str(tmp_path))
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    first = (tmp_path / "mitmproxy-ca.pem").read_bytes()
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert (tmp_path / "mitmproxy-ca.pem").read_bytes() == first
    assert (tmp_path / "mitmproxy-ca-cert.pem").is_file()


def test_replicas_reading_one_read_only_ca_present_the_same_ca(tmp_path: Path) -> None:
    CertStore.from_store(tmp_path, "mitmproxy", 2048)
    for path in tmp_path.iterdir():
        path.chmod(stat.S_IRUSR)
    tmp_path.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        stores = [CertStore.from_store(tmp_path, "mitmproxy", 2048) for _ in PROXIES]
        fingerprints = {s.default_ca.fingerprint() for s in stores}
        assert len(fingerprints) == 1
        leaves = [s.get_cert("api.business.githubcopilot.com", []) for s in stores]
        assert all(leaf.cert.issuer == stores[0].default_ca.subject for leaf in leaves)
    finally:
        tmp_path.chmod(stat.S_IRWXU)


def test_haproxy_config_passes_haproxy_check_and_balances_over_the_replicas(fleet: dict[str, Any]) -> None:
    result = _haproxy(HAPROXY)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Configuration file is valid" in result.stdout + result.stderr
    text = HAPROXY.read_text()
    servers = [line.split()[1:3] for line in text.splitlines() if line.strip().startswith("server ")]
    assert servers == [[p, f"{p}:8080"] for p in PROXIES]
    assert "mode tcp" in text and "bind :8080" in text
    mounts = {v["target"]: v for v in fleet["services"]["haproxy"]["volumes"]}
    assert Path(mounts["/usr/local/etc/haproxy/haproxy.cfg"]["source"]) == HAPROXY


def test_a_broken_haproxy_config_fails_the_check(tmp_path: Path) -> None:
    broken = tmp_path / "haproxy.cfg"
    broken.write_text(HAPROXY.read_text().replace("balance source", "balance nonsense"))
    assert _haproxy(broken).returncode != 0


def test_fleet_prometheus_scrapes_every_replica_and_passes_promtool(fleet: dict[str, Any], tmp_path: Path) -> None:
    mounts = {v["target"]: v for v in fleet["services"]["prometheus"]["volumes"]}
    config_path = Path(mounts["/etc/prometheus/prometheus.yml"]["source"])
    config = yaml.safe_load(config_path.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "copilot-proxy-insight"]
    assert job["static_configs"] == [{"targets": [f"{p}:9180" for p in PROXIES]}]
    shutil.copy(config_path, tmp_path / "prometheus.yml")
    (tmp_path / "alerts").mkdir()
    shutil.copy(RULES_FILE, tmp_path / "alerts" / "copilot-rules.yaml")
    result = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


# -- Kubernetes ------------------------------------------------------------------------------------------


def _validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).parent / "kubernetes-validate"
    assert binary.is_file(), "kubernetes-validate missing: pip install -e '.[dev]'"
    return subprocess.run([str(binary), "--strict", *map(str, paths)], capture_output=True, text=True, timeout=120)


def _manifests() -> dict[str, dict[str, Any]]:
    """One manifest per kind (the proxy Service; the headless metrics Service is `_metrics_service()`)."""
    docs = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())]
    return {d["kind"]: d for d in docs if d.get("spec", {}).get("clusterIP") != "None"}


def _metrics_service() -> dict[str, Any]:
    docs = [d for p in sorted(K8S.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text()) if d["kind"] == "Service"]
    (headless,) = [d for d in docs if d["spec"].get("clusterIP") == "None"]
    return headless


def test_kubernetes_manifests_validate_against_the_api_schemas() -> None:
    result = _validate(*sorted(K8S.glob("*.yaml")))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("passed") == len(list(K8S.glob("*.yaml")))


def test_an_invalid_manifest_fails_validation(tmp_path: Path) -> None:
    broken = tmp_path / "deployment.yaml"
    broken.write_text((K8S / "deployment.yaml").read_text().replace("replicas: 3", "replicas: three"))
    assert _validate(broken).returncode != 0


def test_the_deployment_mounts_the_ca_secret_and_names_each_replica_by_its_pod(tmp_path: Path) -> None:
    m = _manifests()
    pod = m["Deployment"]["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    args = container["args"]
    assert "copilot_instance_id=$(POD_NAME)" in args
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    mounts = {v["name"]: v for v in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["ca"]["mountPath"] == CONFDIR and mounts["ca"]["readOnly"] is True
    secret = volumes["ca"]["secret"]["secretName"]
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == m["PersistentVolumeClaim"]["metadata"]["name"]
    assert m["PersistentVolumeClaim"]["spec"]["accessModes"] == ["ReadWriteMany"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/healthz"
    # The Secret the comment's command creates, built from a real CA, is a valid Secret the volume can mount.
    CertStore.from_store(tmp_path, "mitmproxy", 2048)
    data = {
        n: base64.b64encode((tmp_path / n).read_bytes()).decode() for n in ("mitmproxy-ca.pem", "mitmproxy-ca-cert.pem")
    }
    manifest = tmp_path / "secret.yaml"
    manifest.write_text(
        yaml.safe_dump({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": secret}, "data": data})
    )
    assert _validate(manifest).returncode == 0
    assert "--from-file=mitmproxy-ca.pem=" in (K8S / "deployment.yaml").read_text()


def test_service_pdb_and_scrape_config_select_the_deployment_pods(tmp_path: Path) -> None:
    m = _manifests()
    labels = m["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert m["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    assert m["Service"]["spec"]["selector"] == labels
    assert m["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    assert m["PodDisruptionBudget"]["spec"]["minAvailable"] < m["Deployment"]["spec"]["replicas"]
    config = m["ConfigMap"]["data"]["prometheus.yml"]
    (job,) = yaml.safe_load(config)["scrape_configs"]
    assert job["job_name"] == "copilot-proxy-insight"
    # DNS service discovery of the headless metrics Service: one target per ready pod, no RBAC needed.
    headless = _metrics_service()
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["selector"] == labels
    (port,) = headless["spec"]["ports"]
    (sd,) = job["dns_sd_configs"]
    name = headless["metadata"]["name"]
    assert sd["type"] == "A" and sd["port"] == port["port"] == 9180
    assert sd["names"][0].startswith(f"{name}.")
    (tmp_path / "prometheus.yml").write_text(config)
    (tmp_path / "alerts").mkdir()
    shutil.copy(RULES_FILE, tmp_path / "alerts" / "copilot-rules.yaml")
    result = run_promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
