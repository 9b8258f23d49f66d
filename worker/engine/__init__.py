"""The DeepDream engine: a numpy image and RenderParams in, a numpy image out.

No I/O, no database, no Celery: the worker, the CLI and the benchmark drive it alike.
"""

from worker.engine.dream import Canceled, DreamState, Progress, preview, render
from worker.engine.model import DreamModel, WeightsUnavailable, load_dream_model

__all__ = [
    "Canceled",
    "DreamModel",
    "DreamState",
    "Progress",
    "WeightsUnavailable",
    "load_dream_model",
    "preview",
    "render",
]
