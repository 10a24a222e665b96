"""Kubernetes: projected service-account tokens (docs/reference/http-api.md "Workload subjects").

- `config`: the `attestors.kubernetes` section: clusters, their keys, their API checks;
- `claims`: what a token says about its pod, checked for consistency;
- `verifier`: the token routed to its one cluster, verified against that cluster's keys;
- `api`: TokenReview and the pod lookup (a cluster's API server vouching);
- `collector`: the agent side, the projected token file the kubelet writes.
"""

KIND = "kubernetes"
