FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY exporter ./exporter
COPY scaler ./scaler
RUN pip install --no-cache-dir .
USER nobody
EXPOSE 9808
ENTRYPOINT ["taskqueue-exporter"]
