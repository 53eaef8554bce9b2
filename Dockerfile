# One image for all four services; docker-compose picks the service with the command.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trustlog ./trustlog
COPY services ./services
COPY schemas ./schemas
COPY config ./config
RUN pip install --no-cache-dir -e . && useradd -r -u 10001 trustlog
USER trustlog
ENV TRUSTLOG_STATE_DIR=/tmp/trustlog
ENTRYPOINT ["trustlog"]
