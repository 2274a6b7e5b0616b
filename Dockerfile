# syntax=docker/dockerfile:1
#
# Aqueduct image: one image for both roles.
#   gateway (default): docker run -p 8000:8000 -e REDIS_URL=redis://:PASSWORD@redis:6379 aqueduct
#   worker:            docker run -e REDIS_URL=redis://:PASSWORD@redis:6379 aqueduct \
#                        node dist/apps/worker/apps/worker/src/main.js
# Both run node directly (exec form, no npm or shell in between), so SIGTERM reaches the process
# that drains; the node flags come from NODE_OPTIONS below, as for any node started in the image.
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
COPY package.json package-lock.json ./

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
# --max-semi-space-size: V8's young generation on Node 24 otherwise grows each process to
# ~350 MB RSS under load (README, "Memory"); the same flags as `npm run start:*`.
ENV NODE_ENV=production \
    NODE_OPTIONS="--enable-source-maps --max-semi-space-size=16" \
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
# The operator CLI, as `node bin/aqueduct.js` or `aqueduct` on PATH:
#   docker compose exec gateway aqueduct tokens create --name me
COPY bin ./bin
RUN ln -s /app/bin/aqueduct.js /usr/local/bin/aqueduct
USER node
# 8000: gateway HTTP (PORT); 9464: worker metrics and health (WORKER_METRICS_PORT).
EXPOSE 8000 9464
# node is PID 1's child when run with an init (docker run --init, compose `init: true`), which
# reaps zombies and passes SIGTERM on; without one, node is PID 1 and still handles SIGTERM.
CMD ["node", "dist/apps/gateway/apps/gateway/src/main.js"]
