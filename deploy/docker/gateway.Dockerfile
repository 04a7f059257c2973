# The Tether gateway: REST API, agent loop, session log, MCP gateway, tunnel hub.
# Build from the repository root:
#   docker build -f deploy/docker/NAME.Dockerfile -t tether/NAME .
# BASE is any Debian bookworm image (the tests import one made with debootstrap; no registry).
# Behind a TLS-intercepting proxy, pass its CA for the build only:
#   --build-arg EXTRA_CA_CERTS="$(cat proxy-ca.pem)"  (no file kept; build args show in `docker history`)
# PIP_OPTIONS passes index settings to pip, e.g. --build-arg PIP_OPTIONS="--index-url https://mirror/simple"
# (no credentials in it: build args are recorded in the image history).
# Everything up to the blank line is identical in both Dockerfiles: the two images share those layers.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
ARG EXTRA_CA_CERTS=""
ARG PIP_OPTIONS=""
# bubblewrap: the sandboxes of the gateway (local environments) and of an on-prem worker.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      python3 python3-venv ca-certificates bubblewrap \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/tether \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/tether --create-home \
      --shell /usr/sbin/nologin tether
COPY pyproject.toml /src/pyproject.toml
# Dependencies first, in their own layer: a source change does not reinstall them.
RUN cat /etc/ssl/certs/ca-certificates.crt > /tmp/build-ca.pem \
 && printf "%s\n" "$EXTRA_CA_CERTS" >> /tmp/build-ca.pem \
 && /opt/tether/bin/python -c "import tomllib; print(chr(10).join(tomllib.load(open(\"/src/pyproject.toml\", \"rb\"))[\"project\"][\"dependencies\"]))" > /tmp/requirements.txt \
 && /opt/tether/bin/pip install --no-cache-dir --cert /tmp/build-ca.pem $PIP_OPTIONS \
      "setuptools>=68" wheel -r /tmp/requirements.txt \
 && rm /tmp/build-ca.pem /tmp/requirements.txt
# The context holds only the packages and their metadata (.dockerignore).
COPY . /src
RUN install -m 0755 /src/deploy/docker/healthcheck.py /usr/local/bin/tether-healthcheck \
 && /opt/tether/bin/pip install --no-cache-dir --no-deps --no-build-isolation /src \
 && rm -rf /src

# Data (SQLite log unless TETHER_DATABASE_URL names PostgreSQL, workspaces, generated key).
ENV PATH=/opt/tether/bin:$PATH PYTHONUNBUFFERED=1 \
    TETHER_HOST=0.0.0.0 TETHER_PORT=8420 TETHER_DATA_DIR=/var/lib/tether
VOLUME /var/lib/tether
WORKDIR /var/lib/tether
USER tether
EXPOSE 8420
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
  CMD ["/opt/tether/bin/python", "/usr/local/bin/tether-healthcheck", "gateway"]
# Local sandboxes run bubblewrap, which needs user namespaces inside the container: run with
#   --security-opt seccomp=unconfined --security-opt apparmor=unconfined --security-opt systempaths=unconfined
# or keep sandboxes off this container (self_hosted environments run them on a tunnel worker).
ENTRYPOINT ["tether", "gateway"]
