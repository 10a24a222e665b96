# chit's production image.
#
#   docker build -t chit .
#   docker run --read-only --tmpfs /tmp -v $PWD/chit.yaml:/etc/chit/chit.yaml:ro \
#     -v $PWD/keys:/var/lib/chit/keys:ro -v $PWD/tls:/etc/chit-tls:ro -p 8443:8443 chit
#
# chit.yaml: listen {host: 0.0.0.0, port: 8443, tls: {cert_file: /etc/chit-tls/tls.crt,
# key_file: /etc/chit-tls/tls.key}}, as deploy/base/chit.yaml.
#
# Stage 1 installs the server's dependencies exactly as locked, every file
# checked against its hash (requirements/server.lock; nothing is resolved,
# nothing is built from source), then builds chit's wheel with the locked build
# backend (requirements/agent.lock) and installs it without dependencies;
# stage 2 copies only that virtualenv onto a clean slim base: no compilers, no
# pip, no pip cache, no apt lists (docs/operators/supply-chain.md).

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY requirements ./requirements
RUN python -m venv /opt/chit \
 && /opt/chit/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: -r requirements/server.lock \
 && python -m venv /opt/build \
 && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps --only-binary=:all: -r requirements/agent.lock
COPY pyproject.toml README.md ./
COPY chit ./chit
COPY policies ./policies
RUN /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /tmp/wheels . \
 && /opt/chit/bin/pip install --no-cache-dir --no-deps /tmp/wheels/chit-*.whl \
 && /opt/chit/bin/pip uninstall --yes pip \
 && find /opt/chit -name '__pycache__' -prune -exec rm -rf {} +

FROM python:3.11.14-slim-bookworm
LABEL org.opencontainers.image.title="chit" \
      org.opencontainers.image.description="Workload-identity token exchange (RFC 8693)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build /opt/chit /opt/chit
ENV PATH=/opt/chit/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user: no entry in /etc/passwd is needed, and Kubernetes
# can check runAsNonRoot against it.
USER 10001:10001
# The only places chit reads from or writes to; the root filesystem can be
# read-only. /etc/chit: config (and policies); /var/lib/chit/keys: signing
# keys (a Secret); /etc/chit-tls: chit's TLS certificate and key (a Secret);
# /tmp: scratch for the worker processes.
VOLUME ["/etc/chit", "/var/lib/chit/keys", "/etc/chit-tls", "/tmp"]
EXPOSE 8443
# chit's own HTTPS on the container's loopback. The certificate names the
# Service, not 127.0.0.1, and no token travels here: it is not verified.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import ssl, sys, urllib.request; c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; sys.exit(urllib.request.urlopen('https://127.0.0.1:8443/healthz', timeout=2, context=c).status != 200)"]
ENTRYPOINT ["chit", "serve"]
CMD ["--config", "/etc/chit/chit.yaml"]
