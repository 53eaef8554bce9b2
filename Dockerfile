# One image for all four services; docker-compose picks the service with the command.

# The sensitive-data detector's native core (native/: Rust + PCRE2), built into a wheel.
FROM python:3.11-slim AS native
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
ENV PATH=/root/.cargo/bin:$PATH
RUN pip install --no-cache-dir maturin==1.16.0
COPY native /native
RUN cd /native && maturin build --release --locked --out /wheels

FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY trustlog ./trustlog
COPY services ./services
COPY schemas ./schemas
COPY config ./config
COPY --from=native /wheels /wheels
RUN pip install --no-cache-dir -e . /wheels/*.whl && rm -rf /wheels && useradd -r -u 10001 trustlog
USER trustlog
ENV TRUSTLOG_STATE_DIR=/tmp/trustlog
ENTRYPOINT ["trustlog"]
