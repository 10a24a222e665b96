"""deploy/monitoring (docs/operators/monitoring.md): the ServiceMonitor, the PrometheusRule and
the Grafana dashboard render with kubectl, fit the Service and certificate they scrape,
use only metrics a real chit exports, and the alerts parse and fire as intended
(Debian's promtool: `check rules`, and `test rules` over synthetic series)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_manifests import DEPLOY, SERVICE_NAMES, one, render
from tests.factories import ChitServer, ClusterIssuer, assert_issued

# Prometheus's own series, not chit's.
PROMETHEUS_SERIES = {"up"}
_FUNCTIONS_AND_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


@pytest.fixture(scope="module")
def monitoring() -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is needed (./test.sh installs Debian's kubernetes-client)"
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY / "monitoring")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.fixture(scope="module")
def rules(monitoring: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [rule for group in one(monitoring, "PrometheusRule")["spec"]["groups"] for rule in group["rules"]]


@pytest.fixture(scope="module")
def dashboard(monitoring: list[dict[str, Any]]) -> dict[str, Any]:
    return json.loads(one(monitoring, "ConfigMap", "chit-dashboard")["data"]["chit-dashboard.json"])


@pytest.fixture(scope="module")
def exported(chit: ChitServer, prod_issuer: ClusterIssuer) -> set[str]:
    """Every series name a real chit's GET /metrics exports (histograms with their suffixes)."""
    assert_issued(chit.exchange(prod_issuer.token()))
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", chit.client.get("/metrics").text, re.MULTILINE):
        name, kind = match.groups()
        names |= {name, f"{name}_bucket", f"{name}_sum", f"{name}_count"} if kind == "histogram" else {name}
    return names


def metric_names(expr: str) -> set[str]:
    """The series a PromQL expression selects: what is left once strings, label matchers,
    ranges, grouping clauses, function calls and numbers are taken out."""
    text = re.sub(r'"[^"]*"', "", expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[match.end():].lstrip()[:1]
        if following != "(" and match.group() not in _FUNCTIONS_AND_KEYWORDS:
            names.add(match.group())
    return names


def test_the_service_monitor_scrapes_the_service_over_verified_https(monitoring: list[dict[str, Any]]) -> None:
    monitor = one(monitoring, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["namespace"] == "chit"
    prod = render("prod")
    service = one(prod, "Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    (endpoint,) = monitor["spec"]["endpoints"]
    # The fields of the operator's Endpoint type that are used, and nothing misspelt.
    assert set(endpoint) <= {"port", "scheme", "path", "interval", "scrapeTimeout", "tlsConfig"}
    assert endpoint["port"] in {port["name"] for port in service["spec"]["ports"]}
    assert endpoint["scheme"] == "https" and endpoint["path"] == "/metrics"
    tls = endpoint["tlsConfig"]
    assert set(tls) == {"serverName", "ca"} and "insecureSkipVerify" not in tls
    certificate = one(prod, "Certificate", "chit-tls")
    assert tls["serverName"] in certificate["spec"]["dnsNames"] and tls["serverName"] in SERVICE_NAMES
    assert tls["ca"] == {"configMap": {"name": "chit-ca", "key": "ca.crt"}}  # the CA's certificate, never its key


def test_every_alert_is_complete(rules: list[dict[str, Any]]) -> None:
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    assert {"ChitServerErrors", "ChitUnavailable", "ChitUnavailableByCause", "ChitPolicySlow", "ChitSigningKeyRotationOverdue",
            "ChitRateLimited", "ChitStateStoreErrors", "ChitKeyFetchFailures"} <= set(names)
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert rule["labels"]["severity"] in {"critical", "warning"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alerts_and_dashboard_use_only_metrics_chit_exports(rules: list[dict[str, Any]], dashboard: dict[str, Any], exported: set[str]) -> None:
    assert metric_names('sum by (cause) (rate(chit_x_total{a="b"}[5m])) / up{job="chit"} > 0.1') == {"chit_x_total", "up"}
    used = {name: rule["alert"] for rule in rules for name in metric_names(rule["expr"])}
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    used.update({name: "the dashboard" for expr in expressions for name in metric_names(expr)})
    unknown = {name: where for name, where in used.items() if name not in exported | PROMETHEUS_SERIES}
    assert not unknown, f"not exported by chit: {unknown}"
    # Every metric of chit's own is on the dashboard (a histogram through its buckets).
    families = {name for name in exported if name.startswith("chit_") and not name.endswith(("_bucket", "_sum", "_count", "_created"))}
    shown = set(used) | {re.sub(r"_(bucket|sum|count)$", "", name) for name in used}
    assert families <= shown, families - shown


def test_the_dashboard_is_a_grafana_dashboard_for_the_sidecar(monitoring: list[dict[str, Any]], dashboard: dict[str, Any]) -> None:
    configmap = one(monitoring, "ConfigMap", "chit-dashboard")
    assert configmap["metadata"]["name"] == "chit-dashboard" and configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["uid"] == "chit-overview" and dashboard["templating"]["list"][0]["type"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["type"] in {"timeseries", "stat"} and panel["targets"]
        assert panel["datasource"]["uid"] == "${datasource}"
        assert set(panel["gridPos"]) == {"x", "y", "w", "h"} and panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is needed (./test.sh installs Debian's prometheus)"
    return subprocess.run([binary, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_the_rules_parse(monitoring: list[dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "chit.rules.yaml").write_text(yaml.safe_dump(one(monitoring, "PrometheusRule")["spec"]))
    result = promtool("check", "rules", "chit.rules.yaml", cwd=tmp_path)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


# promtool's rule unit tests: synthetic series in, the alerts expected out (and none where none is due).
RULE_TESTS = {
    "rule_files": ["chit.rules.yaml"],
    "evaluation_interval": "1m",
    "tests": [
        {   # Redis down: 2 of every 10 exchanges/s refused for state; the cause is named.
            "interval": "1m",
            "input_series": [
                {"series": 'chit_exchanges_total{outcome="issued", kind="kubernetes", error="none"}', "values": "0+480x20"},
                {"series": 'chit_exchanges_total{outcome="unavailable", kind="kubernetes", error="temporarily_unavailable"}', "values": "0+120x20"},
                {"series": 'chit_exchange_unavailable_total{cause="state"}', "values": "0+120x20"},
                {"series": 'chit_exchange_unavailable_total{cause="policy"}', "values": "0+0x20"},
            ],
            "alert_rule_test": [
                {"eval_time": "4m", "alertname": "ChitUnavailableByCause", "exp_alerts": []},
                {"eval_time": "12m", "alertname": "ChitUnavailableByCause",
                 "exp_alerts": [{"exp_labels": {"severity": "warning", "cause": "state"},
                                 "exp_annotations": {"summary": "chit answers 503 because state cannot answer",
                                                     "description": "2/s exchanges refused (503) for state: attestation (cluster keys, TokenReview, Google's certificates), platform_api (pod or instance lookups), policy (OPA), state (Redis), sts (AWS STS) or signing_key."}}]},
                {"eval_time": "12m", "alertname": "ChitUnavailable",
                 "exp_alerts": [{"exp_labels": {"severity": "critical"},
                                 "exp_annotations": {"summary": "more than 5% of chit's exchanges fail closed (503)",
                                                     "description": "20% of exchanges are refused because a dependency cannot answer; ChitUnavailableByCause names it."}}]},
                {"eval_time": "12m", "alertname": "ChitServerErrors", "exp_alerts": []},
            ],
        },
        {   # The RS256 series' active key activated 100 days before the evaluation: overdue. ES256's, 80 days: not yet.
            "interval": "1m",
            "input_series": [{"series": 'chit_signing_key_activated_timestamp_seconds{algorithm="RS256"}', "values": "-8640000+0x180"},
                             {"series": 'chit_signing_key_activated_timestamp_seconds{algorithm="ES256"}', "values": "-6912000+0x180"}],
            "alert_rule_test": [{"eval_time": "2h", "alertname": "ChitSigningKeyRotationOverdue",
                                 "exp_alerts": [{"exp_labels": {"severity": "warning", "algorithm": "RS256"},
                                                 "exp_annotations": {"summary": "chit's RS256 signing key has signed for 100d 2h 0m 0s",
                                                                     "description": "The active RS256 signing key is older than 90 days: run chit keys rotate (docs/operators/keys.md)."}}]}],
        },
        {
            "interval": "1m",
            "input_series": [{"series": 'chit_signing_key_activated_timestamp_seconds{algorithm="ES256"}', "values": "-6912000+0x180"}],
            "alert_rule_test": [{"eval_time": "2h", "alertname": "ChitSigningKeyRotationOverdue", "exp_alerts": []}],
        },
        {   # Policy decisions: most within 50 ms, then the slow ones dominate the tail.
            "interval": "1m",
            "input_series": [
                {"series": 'chit_exchange_step_duration_seconds_bucket{step="policy", le="0.05"}', "values": "0+10x30"},
                {"series": 'chit_exchange_step_duration_seconds_bucket{step="policy", le="0.5"}', "values": "0+20x30"},
                {"series": 'chit_exchange_step_duration_seconds_bucket{step="policy", le="+Inf"}', "values": "0+20x30"},
            ],
            "alert_rule_test": [{"eval_time": "20m", "alertname": "ChitPolicySlow",
                                 "exp_alerts": [{"exp_labels": {"severity": "warning"},
                                                 "exp_annotations": {"summary": "chit's policy decisions take 491ms at p99",
                                                                     "description": "Decisions slower than 250 ms at the 99th percentile: OPA overloaded, or a policy grown expensive (docs/policy/writing.md, keeping decisions fast). Past policy.timeout_ms they fail closed."}}]}],
        },
        {   # Over the rate limit: 2/s for 20 minutes.
            "interval": "1m",
            "input_series": [{"series": 'chit_exchanges_total{outcome="limited", kind="kubernetes", error="slow_down"}', "values": "0+120x30"}],
            "alert_rule_test": [{"eval_time": "20m", "alertname": "ChitRateLimited",
                                 "exp_alerts": [{"exp_labels": {"severity": "warning"},
                                                 "exp_annotations": {"summary": "chit refuses 2 exchanges/s over their rate limit",
                                                                     "description": "Subjects or client addresses exceed rate_limits (429 slow_down): an agent renewing in a loop, or limits set too low for the load. The audit log's client and subject fields name them."}}]}],
        },
    ],
}


def test_the_alerts_fire_on_the_series_they_watch_and_not_before(monitoring: list[dict[str, Any]], tmp_path: Path) -> None:
    (tmp_path / "chit.rules.yaml").write_text(yaml.safe_dump(one(monitoring, "PrometheusRule")["spec"]))
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(RULE_TESTS, width=1000))
    result = promtool("test", "rules", "tests.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_active_signing_key_s_activation_is_exported(chit: ChitServer) -> None:
    """What ChitSigningKeyRotationOverdue watches: the activation time of the key that signs now."""
    text = chit.client.get("/metrics").text
    (value,) = re.findall(r'^chit_signing_key_activated_timestamp_seconds\{algorithm="ES256"\} (\S+)$', text, re.MULTILINE)
    activations = [int(path.name.split("-")[1]) for path in (chit.directory / "keys").glob("signing-*.pem")]
    assert float(value) == max(activations)
