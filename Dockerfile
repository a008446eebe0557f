FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY campaigns campaigns
COPY workers workers
COPY scheduler scheduler
COPY simulator simulator
COPY demo demo
COPY console console
COPY examples examples
RUN pip install --no-cache-dir . && useradd --create-home campaigns \
    && mkdir -p /app/.campaigns && chown campaigns /app/.campaigns
USER campaigns
ENTRYPOINT ["campaigns"]
