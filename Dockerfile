# fastfog's image: the wheel is built in one stage and installed, alone, into a slim runtime.
# (No container engine runs where fastfog is developed: this file is linted with hadolint in the
# test suite, and the wheel it builds is the one scripts/build-wheels tests.)

FROM python:3.12-slim AS build
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="fastfog" \
      org.opencontainers.image.description="A high-throughput egress proxy, a drop-in replacement for Smokescreen" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.source="https://github.com/fastfog/fastfog"
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fastfog
COPY --from=build /wheels /wheels
# The wheels are the ones built above, dependencies included: nothing is fetched here.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links /wheels fastfog \
    && rm -rf /wheels
# The default config (every setting at its default); mount your own over /etc/fastfog.
COPY deploy/docker/config.yaml /etc/fastfog/config.yaml
USER 10001
EXPOSE 4750 9810
STOPSIGNAL SIGTERM
# The probe reads the same config as the proxy: whatever its port, plain or TLS.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["fastfog", "healthcheck", "--config-file", "/etc/fastfog/config.yaml"]
ENTRYPOINT ["fastfog", "serve"]
CMD ["--config-file", "/etc/fastfog/config.yaml"]
