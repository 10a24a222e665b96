"""chit server."""

# The configuration's environment variables, here so that a command that needs no
# configuration (`chit policy test`, `chit dev token`) does not import pydantic for them.
CONFIG_ENV = "CHIT_CONFIG"
RESOLVED_CONFIG_ENV = "CHIT_RESOLVED_CONFIG"  # set by `chit serve` for its uvicorn workers
