# pacsnode image: one image, several entry points (pacsnode receiver|worker|dispatcher|scheduler|web|serve).
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 PACSNODE_DATA_DIR=/data
RUN apt-get update \
 && apt-get install -y --no-install-recommends dcmtk libgl1 libglib2.0-0 \
    fonts-dejavu-core fonts-droid-fallback \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/pacsnode
COPY pyproject.toml README.md ./
COPY core ./core
COPY models ./models
COPY pipelines ./pipelines
COPY node ./node
COPY web ./web
COPY app ./app
RUN pip install --upgrade pip && pip install .
RUN useradd --system --home /data pacsnode && mkdir -p /data && chown pacsnode /data
USER pacsnode
VOLUME /data
EXPOSE 11112 8000
ENTRYPOINT ["pacsnode"]
CMD ["serve"]
