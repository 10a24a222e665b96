"""`chit gateway`: the credential-injection gateway (docs/operators/gateway.md).

Agents call key-only APIs with their chit token; the gateway verifies it, checks
the route's allowlists and budgets, injects the upstream key, and audits the call.
Its own process and configuration: it imports nothing of the token server.
"""
