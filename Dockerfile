# syntax=docker/dockerfile:1
# qsmprep BIDS-App image.
#   docker build --build-arg VERSION=$(python -c "import qsmprep; print(qsmprep.__version__)") \
#       -t qsmprep/qsmprep:<version> .
# The image runs read-only (docker run --read-only --tmpfs /tmp, or Apptainer/Singularity) by
# any user id: nothing is written outside /tmp, the output folder and the work folder.

# ---- build: a wheel of the source tree (template, atlas and report files are package data)
FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN pip install --no-cache-dir --constraint constraints.txt "setuptools>=64" wheel \
    && pip wheel --no-cache-dir --no-deps --no-build-isolation --wheel-dir /wheels .

# ---- runtime
FROM python:3.11.11-slim-bookworm

ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="qsmprep" \
      org.opencontainers.image.description="Quantitative susceptibility mapping BIDS-App with regional iron measures" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="https://github.com/qsmprep/qsmprep" \
      org.opencontainers.image.url="https://github.com/qsmprep/qsmprep" \
      org.opencontainers.image.licenses="Apache-2.0"

# No bytecode, pip cache or version checks at run time; every cache lives under /tmp
# (qsmprep also falls back to a private folder under /tmp when one of these is not writable).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NIPYPE_NO_ET=1 \
    XDG_CACHE_HOME=/tmp/qsmprep-cache \
    MPLCONFIGDIR=/tmp/qsmprep-cache/matplotlib \
    NUMBA_CACHE_DIR=/tmp/qsmprep-cache/numba \
    NIPYPE_CONFIG_DIR=/tmp/qsmprep-cache/nipype

COPY constraints.txt /opt/qsmprep/constraints.txt
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --constraint /opt/qsmprep/constraints.txt /wheels/qsmprep-*.whl \
    && python -c "from qsmprep.atlases import template_files; assert all(p.is_file() for p in template_files().values())" \
    && groupadd --system --gid 1000 qsmprep \
    && useradd --system --no-create-home --uid 1000 --gid 1000 --shell /usr/sbin/nologin qsmprep

# a numeric user (qsmprep, made above); any other --user works as well
USER 1000:1000
WORKDIR /tmp
ENTRYPOINT ["qsmprep"]
CMD ["--help"]
