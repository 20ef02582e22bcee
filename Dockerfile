# The scoring service. Build context: the repository after `make repro` (or `dvc pull`), so
# data/interim (the feature state's warm start) and models/ are present:
#   docker build -t aif-serve . && docker run -p 8000:8000 aif-serve
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 NUMPY_MADVISE_HUGEPAGE=0 WANDB_MODE=disabled
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends git libgomp1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app

# the locked environment first, so code changes do not reinstall it
COPY requirements.lock pyproject.toml ./
RUN python -m pip install --no-cache-dir "uv==$(sed -n 's/^uv==\([0-9.]*\).*/\1/p' requirements.lock)" \
    && uv pip sync --system --compile-bytecode --require-hashes requirements.lock

COPY . .
RUN uv pip install --system --no-deps -e . && useradd --create-home aif && chown -R aif /app
USER aif

EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
CMD ["aif", "serve", "--host", "0.0.0.0", "--port", "8000"]
