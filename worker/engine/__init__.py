"""The DeepDream engine: a numpy image and RenderParams in, a numpy image out.

No I/O, no database, no Celery: the worker, the CLI and the benchmark drive it alike.
"""

from worker.engine.backend import choose_backend

# Before the imports below load Keras: Keras fixes its backend on first import.
BACKEND = choose_backend()

from worker.engine.device import DeviceOutOfMemory  # noqa: E402
from worker.engine.dream import DreamState, Progress, preview, render  # noqa: E402
from worker.engine.model import (  # noqa: E402
    DownloadFailed,
    DreamModel,
    WeightsUnavailable,
    load_dream_model,
)
from worker.engine.motion import FrameProgress, animate, dream_video  # noqa: E402
from worker.engine.tiling import Canceled  # noqa: E402

__all__ = [
    "BACKEND",
    "Canceled",
    "DeviceOutOfMemory",
    "DreamModel",
    "DreamState",
    "FrameProgress",
    "Progress",
    "WeightsUnavailable",
    "DownloadFailed",
    "animate",
    "dream_video",
    "load_dream_model",
    "preview",
    "render",
]
