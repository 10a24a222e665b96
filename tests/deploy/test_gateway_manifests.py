"""deploy/gateway/: the gateway's kustomization renders with kubectl, every object validates
against the Kubernetes schema, and it deploys what the gateway needs and nothing more:
its configuration loads (`chit gateway`'s own loader), its upstream keys come from a
Secret mounted read-only where the routes read them, chit's signing keys are nowhere,
and the NetworkPolicy lets agents in and the gateway out to HTTPS outside the cluster."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from chit.gateway.config import load_gateway_config
from tests.deploy.test_manifests import CERT_MANAGER, KUBERNETES_VERSION, container, one
from tests.factories import ROOT

GATEWAY_NAMES = ["chit-gateway.chit.svc.cluster.local", "chit-gateway.chit.svc", "chit-gateway.chit"]


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (./test.sh installs Debian's kubernetes-client)"
    result = subprocess.run([kubectl, "kustomize", str(ROOT / "deploy" / "gateway")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def gateway_config(objects: list[dict[str, Any]], tmp_path: Path):
    path = tmp_path / "gateway.yaml"
    path.write_text(one(objects, "ConfigMap", "chit-gateway-config")["data"]["gateway.yaml"])
    return load_gateway_config(path)


def test_every_object_validates_and_lives_in_the_chit_namespace(objects) -> None:
    assert {o["kind"] for o in objects} == {"ServiceAccount", "ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                                            "NetworkPolicy", "Certificate"}
    for document in objects:
        assert document["metadata"]["namespace"] == "chit"
        if document["apiVersion"] != CERT_MANAGER:
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_gateway_runs_its_own_command_non_root_read_only(objects) -> None:
    deployment = one(objects, "Deployment", "chit-gateway")
    pod = deployment["spec"]["template"]["spec"]
    gateway = container(deployment, "gateway")
    assert gateway is not None
    assert gateway["command"] == ["chit", "gateway"] and gateway["args"][:2] == ["--config", "/etc/chit-gateway/gateway.yaml"]
    assert pod["automountServiceAccountToken"] is False and pod["serviceAccountName"] == "chit-gateway"
    assert pod["securityContext"]["runAsNonRoot"] is True
    context = gateway["securityContext"]
    assert context["readOnlyRootFilesystem"] is True and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        assert gateway[probe]["httpGet"] == {"path": path, "port": "https", "scheme": "HTTPS"}


def test_the_configuration_loads_and_reads_its_keys_from_the_mounted_secret(objects, tmp_path: Path) -> None:
    config = gateway_config(objects, tmp_path)
    deployment = one(objects, "Deployment", "chit-gateway")
    mounts = {m["mountPath"]: m for m in container(deployment, "gateway")["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert {route.provider for route in config.routes} == {"openai", "anthropic", "gemini"}
    for route in config.routes:
        assert route.key.file is not None
        mount = mounts[str(route.key.file.parent)]
        assert mount["readOnly"] is True
        assert volumes[mount["name"]]["secret"] == {"secretName": "chit-gateway-keys", "defaultMode": 0o440}
        assert route.budgets.requests_per_minute and route.budgets.tokens_per_day and route.models
    assert config.state.backend == "redis"  # revocations and budgets shared with chit and every replica
    assert config.listen.tls is not None and str(config.listen.tls.cert_file.parent) in mounts
    # The signing keys are the token server's alone.
    assert not any(v.get("secret", {}).get("secretName") == "chit-signing-keys" for v in volumes.values())


def test_the_certificate_names_the_service_and_comes_from_chits_ca(objects) -> None:
    spec = one(objects, "Certificate", "chit-gateway-tls")["spec"]
    assert set(GATEWAY_NAMES) <= set(spec["dnsNames"])
    assert spec["issuerRef"]["name"] == "chit-ca" and spec["secretName"] == "chit-gateway-tls"
    service = one(objects, "Service", "chit-gateway")["spec"]
    assert service["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    assert service["selector"] == one(objects, "Deployment", "chit-gateway")["spec"]["selector"]["matchLabels"]


def test_agents_reach_the_gateway_and_only_the_gateway_reaches_the_providers(objects) -> None:
    policy = one(objects, "NetworkPolicy", "chit-gateway")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    assert policy["ingress"] == [{"from": [{"namespaceSelector": {}}], "ports": [{"protocol": "TCP", "port": 8443}]}]
    internet = [rule for rule in policy["egress"] if any("ipBlock" in peer for peer in rule["to"])]
    assert len(internet) == 1 and internet[0]["ports"] == [{"protocol": "TCP", "port": 443}]
    block = internet[0]["to"][0]["ipBlock"]
    assert block["cidr"] == "0.0.0.0/0"
    excepted = [ipaddress.ip_network(cidr) for cidr in block["except"]]
    for inside in ("10.96.0.10", "172.20.1.1", "192.168.1.1", "169.254.169.254", "127.0.0.1"):
        assert any(ipaddress.ip_address(inside) in network for network in excepted), inside  # cluster and metadata addresses
    other_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] if rule not in internet for p in rule["ports"]}
    assert other_ports == {("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 8443)}

    agents = yaml.safe_load((ROOT / "deploy" / "examples" / "agent-egress.yaml").read_text())
    kubernetes_validate.validate(agents, KUBERNETES_VERSION, strict=True)
    assert agents["spec"]["policyTypes"] == ["Egress"]
    assert not any("ipBlock" in peer for rule in agents["spec"]["egress"] for peer in rule["to"])  # agents: no internet
