# Two images from one file; compose picks the target per service:
#   api     the base dependencies only (no TensorFlow), so the API image stays small and starts
#           in a second; it also runs the migrations.
#   worker  adds the `worker` extra (TensorFlow; on NVIDIA hosts the CUDA libraries come with
#           tensorflow[and-cuda]) and the baked weights; Celery workers, beat and flower.
# Both run as the unprivileged user `oneiro`: a hole in an image parser is not root in the container.
FROM python:3.11-slim AS base
WORKDIR /app
# /data is made here, owned by oneiro, so a named volume mounted there starts writable by it.
RUN useradd --create-home --uid 10001 oneiro && mkdir /data && chown oneiro:oneiro /data
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY shared shared
# The `oneiro` command (`oneiro keys create` in a container, `oneiro render` in the worker's).
COPY client client
COPY migrations migrations
ENV ONEIRO_DATA_DIR=/data

FROM base AS api
RUN pip install --no-cache-dir .
USER oneiro
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--config", "api/gunicorn_conf.py", "api:create_app()"]

FROM base AS worker
RUN pip install --no-cache-dir '.[worker]' 'tensorflow[and-cuda]>=2.16' 'flower>=2'
# Bake the ImageNet weights of every backbone into the image at build time (the build has the
# network; a GPU host at render time may not), into the Keras cache the worker reads.
ENV KERAS_HOME=/opt/keras
RUN python -c "import keras; [getattr(keras.applications, n)(include_top=False, weights='imagenet') for n in ('InceptionV3', 'VGG19', 'ResNet50', 'MobileNetV2')]"
USER oneiro
CMD ["celery", "-A", "worker.celery_app", "worker", "--queues", "gpu", "--concurrency", "1", "--loglevel", "INFO"]
