# The scaler reads its config from a file only (`run --config FILE`), so on ECS the file
# is baked into an image: the taskqueue-autoscaler image plus scaler.yml. The build fails
# on a placeholder left unfilled or a config that `check-config` rejects.
ARG BASE
FROM ${BASE}
COPY scaler.yml /etc/taskqueue/scaler.yml
RUN ! grep -n '<[A-Z][A-Z0-9_]*>' /etc/taskqueue/scaler.yml \
    && taskqueue-scaler check-config /etc/taskqueue/scaler.yml
