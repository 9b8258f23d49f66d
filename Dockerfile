# One image for every Oneiro service; compose picks the command. The worker needs the `worker`
# extra (TensorFlow); on NVIDIA hosts the CUDA libraries come with tensorflow[and-cuda].
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY shared shared
COPY migrations migrations
RUN pip install --no-cache-dir '.[worker]' 'tensorflow[and-cuda]>=2.16' 'flower>=2'
# Bake the ImageNet weights of every backbone into the image at build time (the build has the
# network; a GPU host at render time may not), into the Keras cache the worker reads.
ENV KERAS_HOME=/opt/keras
RUN python -c "import keras; [getattr(keras.applications, n)(include_top=False, weights='imagenet') for n in ('InceptionV3', 'VGG19', 'ResNet50', 'MobileNetV2')]"
ENV ONEIRO_DATA_DIR=/data
EXPOSE 8000
CMD ["gunicorn", "--bind", "0.0.0.0:8000", "--workers", "4", "--no-control-socket", "api:create_app()"]
