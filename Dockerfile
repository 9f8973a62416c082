# signalgate from its wheel: built in one stage, installed alone into a slim image in the next.
#   docker build -t signalgate .
#   docker run --rm -p 8080:8080 -p 127.0.0.1:8081:8081 \
#     -e SIGNALGATE_UPSTREAM=http://api.internal:9000 \
#     -e SIGNALGATE_DATABASE_URL=postgresql://signalgate:PASSWORD@db:5432/signalgate \
#     -e SIGNALGATE_ADMIN_TOKEN=... signalgate
# Without SIGNALGATE_DATABASE_URL the embedded PostgreSQL runs in /var/lib/signalgate: mount a volume there.
# docs/deployment.md has the rest (health checks, upgrades, backups, the admin token).

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /dist .

FROM python:3.11-slim
RUN useradd --system --home-dir /var/lib/signalgate --create-home signalgate
COPY --from=build /dist/ /tmp/dist/
RUN pip install --no-cache-dir /tmp/dist/signalgate-*.whl && rm -rf /tmp/dist
USER signalgate
WORKDIR /var/lib/signalgate
ENV SIGNALGATE_DATA_DIR=/var/lib/signalgate \
    SIGNALGATE_LISTEN=0.0.0.0:8080 \
    SIGNALGATE_ADMIN_LISTEN=0.0.0.0:8081
EXPOSE 8080 8081
VOLUME /var/lib/signalgate
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/.signalgate/ready', timeout=2)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["signalgate"]
CMD ["serve"]
