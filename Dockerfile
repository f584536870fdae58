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
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin fastfog
COPY --from=build /wheels /wheels
# The wheels are the ones built above, dependencies included: nothing is fetched here.
# hadolint ignore=DL3013
RUN pip install --no-cache-dir --no-index --find-links /wheels fastfog \
    && rm -rf /wheels
USER 10001
EXPOSE 4750 9810
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=10s --timeout=3s --retries=3 \
    CMD ["python", "-c", "import socket, sys; s = socket.create_connection(('127.0.0.1', 4750), 2); s.sendall(b'GET /healthcheck HTTP/1.0\\r\\n\\r\\n'); sys.exit(0 if b' 200 ' in s.recv(64) else 1)"]
ENTRYPOINT ["fastfog", "serve"]
