"""deploy/: both kustomize overlays render with kubectl, every object validates
against the Kubernetes OpenAPI schema, and what they configure is what chit
and its operators need — checked object by object."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from chit.server.config import load_config
from chit.policy.bundle import load_policy_dir
from chit.policy.embedded import EmbeddedEngine
from tests.factories import ROOT

KUBERNETES_VERSION = "1.33.0"  # the schema every rendered object is validated against
DEPLOY = ROOT / "deploy"
CERT_MANAGER = "cert-manager.io/v1"
SERVICE_NAMES = ["chit.chit.svc.cluster.local", "chit.chit.svc", "chit.chit"]


def render(overlay: str) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (./test.sh installs Debian's kubernetes-client)"
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module", params=["dev", "prod"])
def overlay(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    return request.param, render(request.param)


@pytest.fixture(scope="module")
def prod() -> list[dict[str, Any]]:
    return render("prod")


@pytest.fixture(scope="module")
def dev() -> list[dict[str, Any]]:
    return render("dev")


def one(objects: list[dict[str, Any]], kind: str, name_prefix: str = "chit") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].startswith(name_prefix)]
    assert len(found) == 1, f"expected one {kind} {name_prefix}*, found {len(found)}"
    return found[0]


def container(deployment: dict[str, Any], name: str) -> dict[str, Any] | None:
    return next((c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name), None)


def chit_config(objects: list[dict[str, Any]], tmp_path: Path):
    path = tmp_path / "chit.yaml"
    path.write_text(one(objects, "ConfigMap", "chit-config")["data"]["chit.yaml"])
    return load_config(path)


# --- every object, both overlays ------------------------------------------------------------


def test_every_rendered_object_validates_against_the_kubernetes_schema(overlay) -> None:
    name, objects = overlay
    kinds = {o["kind"] for o in objects}
    assert {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "Service",
            "PodDisruptionBudget", "HorizontalPodAutoscaler", "NetworkPolicy", "Certificate", "Issuer"} <= kinds
    for document in objects:
        if document["apiVersion"] != CERT_MANAGER:  # a CRD: no schema here, checked object by object below
            kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_agent_example_validates() -> None:
    for document in yaml.safe_load_all((DEPLOY / "examples" / "agent.yaml").read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_agent_examples_sidecar_is_chit_agent_as_its_command_line_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from chit.cli import build_parser
    from tests.factories import CLIENT_ENV_VARIABLES

    documents = list(yaml.safe_load_all((DEPLOY / "examples" / "agent.yaml").read_text()))
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    (sidecar,) = pod["initContainers"]
    (agent,) = pod["containers"]
    assert sidecar["restartPolicy"] == "Always" and sidecar["command"] == ["chit", "agent"]  # a native sidecar
    base = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    assert sidecar["image"] == container(base, "chit")["image"]

    for name in CLIENT_ENV_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for variable in sidecar["env"]:
        monkeypatch.setenv(variable["name"], variable["value"])
    args = build_parser().parse_args(["agent", *sidecar["args"]])
    assert args.platform == "kubernetes" and args.server == "https://chit.chit.svc.cluster.local"

    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    # chit's certificate is verified against chit's CA, from a ConfigMap the sidecar mounts.
    ca_mount = mounts[str(args.ca_file.parent)]
    assert ca_mount["readOnly"] is True
    assert volumes[ca_mount["name"]]["configMap"] == {"name": "chit-ca", "items": [{"key": "ca.crt", "path": args.ca_file.name}]}
    # The subject token is the projected token with chit's audience.
    token_mount = mounts[str(args.subject_token_file.parent)]
    (source,) = volumes[token_mount["name"]]["projected"]["sources"]
    assert source["serviceAccountToken"]["path"] == args.subject_token_file.name
    assert source["serviceAccountToken"]["audience"] == "chit"
    # Each credential lives in memory, in a volume the agent container mounts read-only.
    for path, _ in args.file:
        volume = mounts[str(path.parent)]["name"]
        assert volumes[volume]["emptyDir"]["medium"] == "Memory"
        assert {"name": volume, "mountPath": str(path.parent), "readOnly": True} in agent["volumeMounts"]
    assert sidecar["startupProbe"]["exec"]["command"] == ["test", "-s", str(args.file[0][0])]
    # The files are 0600: both containers run as the pod's one user.
    assert pod["securityContext"]["runAsUser"] and all("runAsUser" not in c["securityContext"] for c in (sidecar, agent))


def test_everything_namespaced_lives_in_the_chit_namespace(overlay) -> None:
    _, objects = overlay
    for document in objects:
        if document["kind"] not in ("Namespace", "ClusterRole", "ClusterRoleBinding"):
            assert document["metadata"]["namespace"] == "chit", document["metadata"]


def test_chit_accepts_the_config_in_the_configmap(overlay, tmp_path: Path) -> None:
    name, objects = overlay
    config = chit_config(objects, tmp_path)
    assert config.listen.host == "0.0.0.0" and config.listen.port == 8443
    assert config.listen.clear_text_refusal() is None and not config.listen.plain_http
    assert config.issuer.startswith("https://")
    assert config.signing.keys_dir == Path("/var/lib/chit/keys")
    if name == "prod":
        assert config.policy.engine == "opa" and config.state.backend == "redis"
    else:
        assert config.policy.engine == "embedded" and config.state.backend == "memory"
    # `chit serve` refuses several workers on per-process state.
    containers = one(objects, "Deployment", "chit")["spec"]["template"]["spec"]["containers"]
    args = next(c for c in containers if c["name"] == "chit")["args"]
    workers = int(args[args.index("--workers") + 1])
    assert workers == 1 or config.state.backend == "redis"


def test_the_policies_configmap_holds_the_shipped_policies(overlay, tmp_path: Path) -> None:
    _, objects = overlay
    data = one(objects, "ConfigMap", "chit-policies")["data"]
    shipped = {
        path.name: path.read_text()
        for path in (ROOT / "policies").rglob("*")
        if path.suffix in (".rego", ".json") and not path.name.endswith("_test.rego")
    }
    assert data == shipped
    for key, text in data.items():  # the flat ConfigMap mount compiles as it is
        (tmp_path / key).write_text(text)
    EmbeddedEngine(load_policy_dir(tmp_path))


def test_containers_run_non_root_read_only_without_privileges(overlay) -> None:
    _, objects = overlay
    deployment = one(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    for item in pod["containers"]:
        context = item["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"] and "add" not in context["capabilities"]
        assert context.get("privileged", False) is False
        assert item["resources"]["requests"] and item["resources"]["limits"]
        assert item["readinessProbe"] and item["livenessProbe"]
        assert not item["image"].endswith(":latest") and ":" in item["image"]


def test_probes_use_healthz_and_readyz_over_https(overlay) -> None:
    _, objects = overlay
    chit = container(one(objects, "Deployment"), "chit")
    assert chit["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert chit["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert chit[probe]["httpGet"]["scheme"] == "HTTPS" and chit[probe]["httpGet"]["port"] == "https"
    assert chit["ports"] == [{"name": "https", "containerPort": 8443, "protocol": "TCP"}]


def test_chit_serves_the_certificate_cert_manager_keeps_in_the_mounted_secret(overlay, tmp_path: Path) -> None:
    _, objects = overlay
    deployment = one(objects, "Deployment")
    tls = chit_config(objects, tmp_path).listen.tls
    assert tls is not None and tls.cert_file.name == "tls.crt" and tls.key_file.name == "tls.key"
    mounts = {m["mountPath"]: m for m in container(deployment, "chit")["volumeMounts"]}
    mount = mounts[str(tls.cert_file.parent)]
    assert tls.key_file.parent == tls.cert_file.parent and mount["readOnly"] is True
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    secret = volumes[mount["name"]]["secret"]
    assert secret["defaultMode"] == 0o440  # chit's user (fsGroup) reads it, nobody else
    certificate = one(objects, "Certificate", "chit-tls")
    assert certificate["apiVersion"] == CERT_MANAGER and certificate["metadata"]["namespace"] == "chit"
    spec = certificate["spec"]
    assert spec["secretName"] == secret["secretName"]
    assert set(SERVICE_NAMES) <= set(spec["dnsNames"])  # the names agents reach the Service by
    assert "server auth" in spec["usages"] and spec["privateKey"]["rotationPolicy"] == "Always"
    # The issuer chain renders too: chit-tls from the CA issuer, the CA from the self-signed one.
    issuers = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "Issuer"}
    assert issuers[spec["issuerRef"]["name"]] == {"ca": {"secretName": "chit-ca"}}
    ca = one(objects, "Certificate", "chit-ca")["spec"]
    assert ca["isCA"] is True and ca["secretName"] == "chit-ca" and issuers[ca["issuerRef"]["name"]] == {"selfSigned": {}}


def test_rbac_grants_tokenreviews_create_and_pods_get_only(overlay) -> None:
    _, objects = overlay
    role = one(objects, "ClusterRole")
    rules = sorted((tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r["verbs"])) for r in role["rules"])
    assert rules == [(("",), ("pods",), ("get",)), (("authentication.k8s.io",), ("tokenreviews",), ("create",))]
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "chit", "namespace": "chit"}]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "chit"


def test_network_policy_admits_the_token_port_only(overlay) -> None:
    _, objects = overlay
    policy = one(objects, "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    chit = container(one(objects, "Deployment"), "chit")
    assert [port for rule in policy["ingress"] for port in rule["ports"]] == [{"protocol": "TCP", "port": chit["ports"][0]["containerPort"]}]
    egress_ports = {(p["protocol"], p["port"]) for rule in policy["egress"] for p in rule["ports"]}
    assert {("UDP", 53), ("TCP", 53), ("TCP", 6379), ("TCP", 26379), ("TCP", 443)} <= egress_ports


def test_service_routes_to_the_token_port(overlay) -> None:
    _, objects = overlay
    service = one(objects, "Service")["spec"]
    assert service["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
    assert service["selector"] == one(objects, "Deployment")["spec"]["selector"]["matchLabels"]


# --- prod -------------------------------------------------------------------------------------


def test_prod_runs_three_spread_replicas_with_an_opa_sidecar(prod, tmp_path: Path) -> None:
    deployment = one(prod, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    pod = deployment["spec"]["template"]["spec"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}
    opa = container(deployment, "opa")
    assert opa is not None and re.fullmatch(r"openpolicyagent/opa:\d+\.\d+\.\d+(-static)?", opa["image"])
    config = chit_config(prod, tmp_path)
    assert f"--addr=localhost:{config.policy.opa_url.rsplit(':', 1)[1]}" in opa["args"]
    mounts = {m["name"]: m["mountPath"] for m in opa["volumeMounts"]}
    assert opa["args"][-1] == mounts["policies"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["policies"]["configMap"]["name"].startswith("chit-policies")
    assert volumes["signing-keys"]["secret"]["secretName"] == "chit-signing-keys"
    assert volumes["config"]["configMap"]["name"].startswith("chit-config")


def test_prod_scales_and_survives_disruption(prod) -> None:
    hpa = one(prod, "HorizontalPodAutoscaler")["spec"]
    assert hpa["minReplicas"] == 3 and hpa["maxReplicas"] > 3
    assert one(prod, "PodDisruptionBudget")["spec"]["minAvailable"] == 2


# --- dev --------------------------------------------------------------------------------------


def test_dev_is_one_replica_with_the_embedded_engine(dev, tmp_path: Path) -> None:
    deployment = one(dev, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert container(deployment, "opa") is None
    chit = container(deployment, "chit")
    config = chit_config(dev, tmp_path)
    mounts = {m["name"]: m for m in chit["volumeMounts"]}
    assert str(config.policy.dir) == mounts["policies"]["mountPath"]
    assert mounts["signing-keys"]["readOnly"] is False  # the key is generated in the pod
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert "emptyDir" in volumes["signing-keys"] and "secret" not in volumes["signing-keys"]
    hpa = one(dev, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 1)
    # Reached through `kubectl port-forward`: the issuer is the forwarded address, which the certificate names.
    assert config.issuer == "https://127.0.0.1:8443"
    certificate = one(dev, "Certificate", "chit-tls")["spec"]
    assert certificate["ipAddresses"] == ["127.0.0.1"] and set(SERVICE_NAMES) <= set(certificate["dnsNames"])
    assert "minAvailable" not in one(dev, "PodDisruptionBudget")["spec"]
