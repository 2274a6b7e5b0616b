# syntax=docker/dockerfile:1
#
# Aqueduct image: one image for both roles.
#   gateway (default): docker run -p 8000:8000 -e REDIS_URL=redis://:PASSWORD@redis:6379 aqueduct
#   worker:            docker run -e REDIS_URL=redis://:PASSWORD@redis:6379 aqueduct \
#                        node dist/apps/worker/apps/worker/src/main.js
# Both run node directly (exec form, no npm or shell in between) as the child of tini, the image's
# init (PID 1): `docker stop` / `docker compose stop` send SIGTERM to tini, which passes it on to
# node, the process that drains. The node flags come from NODE_OPTIONS below, as for any node
# started in the image.
# The operator CLI: `aqueduct …` (on PATH) or `node bin/aqueduct.js …`, e.g.
#   docker compose exec gateway aqueduct tokens create --name me
# Probes (no curl in the image; node's fetch does it, see docker-compose.yml):
#   gateway: GET :8000/health (liveness), GET :8000/ready (readiness), GET :8000/metrics
#   worker:  GET :9464/health (liveness), GET :9464/metrics (WORKER_METRICS_PORT)
# No HEALTHCHECK here: the same image runs both roles, which answer on different ports.

# Node 24 LTS, pinned to the release CI runs (TOOLCHAIN.md, .ci/run): bump both together.
ARG NODE_IMAGE=node:24.22.3-bookworm-slim
# Same npm as the one that wrote package-lock.json (the base image ships its own).
ARG NPM_VERSION=11.19.1

# ---- npm: the installer both install stages share ----
FROM ${NODE_IMAGE} AS npm
ARG NPM_VERSION
ENV CI=true \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    NPM_CONFIG_AUDIT=false
RUN npm install -g "npm@${NPM_VERSION}" && npm cache clean --force
WORKDIR /app
# bin/package.json is the workspace that provides the `aqueduct` bin link (node_modules/.bin).
COPY package.json package-lock.json ./
COPY bin/package.json ./bin/

# ---- build: full install, compile TypeScript to dist/ ----
FROM npm AS build
# --ignore-scripts: `prepare` builds, and the sources are not copied yet.
RUN npm ci --ignore-scripts
COPY . .
RUN npm run build

# ---- prod-deps: production dependencies only ----
FROM npm AS prod-deps
RUN npm ci --omit=dev --ignore-scripts && npm cache clean --force

# ---- runtime ----
FROM ${NODE_IMAGE} AS runtime
# tini as PID 1: it forwards SIGTERM and SIGINT to node and reaps zombies (exec'd healthchecks,
# `docker compose exec`), so the image needs no `docker run --init` or compose `init: true`, and
# behaves the same under Kubernetes. -s (subreaper) keeps it quiet and correct when something else
# is PID 1 after all (`docker run --init`).
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# The heap flags: V8 on Node 24 otherwise grows each process to ~300 MB RSS under load (README,
# "Memory"); the same flags as `npm run start:*`. NODE_OPTIONS does not accept
# --heap-growing-percent, so scripts/heap-growing.js (copied below) sets it when node starts.
ENV NODE_ENV=production \
    NODE_OPTIONS="--enable-source-maps --max-semi-space-size=16 --require=/app/scripts/heap-growing.js" \
    NPM_CONFIG_UPDATE_NOTIFIER=false \
    NPM_CONFIG_FUND=false \
    NPM_CONFIG_AUDIT=false \
    PORT=8000 \
    HOST=0.0.0.0
WORKDIR /app
# Files stay owned by root (read-only for the app); the process runs as the unprivileged "node" user.
COPY package.json package-lock.json ./
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY config ./config
COPY scripts/heap-growing.js ./scripts/
# The operator CLI, as `node bin/aqueduct.js`, `aqueduct` on PATH, or `npx aqueduct` in /app
# (node_modules/.bin/aqueduct, the workspace link): all run the built dist/ and never build.
COPY bin ./bin
RUN ln -s /app/bin/aqueduct.js /usr/local/bin/aqueduct
USER node
# 8000: gateway HTTP (PORT); 9464: worker metrics and health (WORKER_METRICS_PORT).
EXPOSE 8000 9464
ENTRYPOINT ["/usr/bin/tini", "-s", "--"]
CMD ["node", "dist/apps/gateway/apps/gateway/src/main.js"]
