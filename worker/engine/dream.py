"""The tiled multi-octave DeepDream loop."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.cost import octave_sizes
from shared.params import RenderParams
from worker.engine import imaging
from worker.engine.controls import Controls, composite, guide_features, mask_weights
from worker.engine.model import DreamModel
from worker.engine.ondevice import device_steps, to_device, to_host
from worker.engine.tiling import Canceled, Tile, TilePlan, tiled_gradient


@dataclass(frozen=True)
class Progress:
    """Where a render stands; octave and step count from 1."""

    fraction: float
    octave: int
    octaves: int
    step: int
    steps: int
    tiles_done: int
    tiles: int
    eta_seconds: float | None
    loss: float


@dataclass
class DreamState:
    """Enough to resume a render: the octave in progress, the steps done in it, its image
    (3 x h x w float32 in [-1, 1]) and the random generator's state."""

    octave: int
    step: int
    image: np.ndarray
    rng_state: dict[str, Any] = field(repr=False)

    def to_bytes(self) -> bytes:
        """The state as an .npz archive (the image uncompressed: it is mostly noise)."""
        buffer = io.BytesIO()
        meta = {"octave": self.octave, "step": self.step, "rng_state": self.rng_state}
        np.savez(buffer, image=self.image, meta=np.array(json.dumps(meta)))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> DreamState:
        """A state written by to_bytes."""
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            meta = json.loads(str(archive["meta"]))
            return cls(meta["octave"], meta["step"], archive["image"], meta["rng_state"])


def render(
    image: np.ndarray,
    params: RenderParams,
    model: DreamModel,
    *,
    on_progress: Callable[[Progress], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_checkpoint: Callable[[DreamState], None] | None = None,
    checkpoint_every: int = 0,
    resume: DreamState | None = None,
    on_step: Callable[[np.ndarray], None] | None = None,
    controls: Controls | None = None,
    on_stop: Callable[[DreamState], None] | None = None,
) -> np.ndarray:
    """Dream on `image` (H x W x 3 uint8 or uint16); return the dreamed image, same size and
    dtype (a uint16 result is made from the float dream, so it has all 16 bits).

    `should_stop` is asked before every tile batch; when it answers True the render raises
    Canceled. `on_checkpoint` receives the state at every octave end and every
    `checkpoint_every` steps (its image is only valid during the call); `resume` continues
    from such a state and gives the same image as a render that never stopped. `on_step`
    receives the image in progress (3 x h x w float32, valid only during the call; see
    `preview`) after every step. `controls` steer it with a guide image and a mask. `on_stop`
    receives the state of the last whole step when `should_stop` stops the render, before
    Canceled is raised: a worker that is shutting down saves it, so the next one resumes there.
    """
    height, width = image.shape[:2]
    # The schedule the API charged for (shared/cost.py), so price and render never disagree.
    shapes = [(h, w) for w, h in octave_sizes(width, height, params)]
    plans = [TilePlan(shape, params.tile_size, model) for shape in shapes]
    run = _Render(
        params,
        model,
        plans,
        _Clock(shapes, plans, params, resume),
        np.random.default_rng(params.seed),
        on_progress,
        should_stop,
    )
    controls = controls or Controls()
    if controls.guide is not None and params.guide_weight > 0:
        # Once per job, at a size suited to the model: every octave and tile seeks the same
        # features, and the traced gradient takes them as arguments, not constants.
        features = (np.float32(params.guide_weight), *guide_features(model, controls.guide))
        extra = tuple(to_device(np.asarray(value)) for value in features)
        guided = model.guided
        assert guided is not None
        run.objective = lambda tiles: guided(tiles, *extra)
    run.mask, run.mask_model = controls.mask, controls.mask_model

    if resume is None:
        done = 0
        start = np.stack(
            [imaging.resize_plane(imaging.to_plane(image[..., c]), shapes[0]) for c in range(3)]
        )
    else:
        run.octave, done = resume.octave, resume.step
        start = resume.image
        run.rng.bit_generator.state = resume.rng_state
    # The octave's image lives on the backend's device from its first step to its last; the
    # host sees it only when a checkpoint, a preview or a stop asks (ondevice.py).
    dream = to_device(start)
    del start  # on a CPU the device's memory is the host's: no second copy through the octave

    while True:
        for step in range(done, params.steps):
            # The generator before this step's shift is drawn: a state saved at a stop must
            # draw the same shift again, or the resumed render would not be the same.
            before = run.rng.bit_generator.state
            try:
                dream, loss = run.step(dream, step)
            except Canceled:
                # A step is stopped before it updates the image: `dream` is the last whole
                # step's.
                if on_stop is not None:
                    on_stop(DreamState(run.octave, step, to_host(dream), dict(before)))
                raise
            if on_step is not None:
                on_step(dream)
            # The Keras DeepDream example's max_loss: past it the octave's steps stop. The rest
            # of the octave counts as done, for progress and for a resumed render alike.
            stopped = params.max_loss is not None and loss is not None and loss > params.max_loss
            if stopped:
                run.clock.skip(run.octave, params.steps - step - 1)
            ended = stopped or step + 1 == params.steps
            if on_checkpoint and (
                ended or (checkpoint_every and (step + 1) % checkpoint_every == 0)
            ):
                state = dict(run.rng.bit_generator.state)
                at = params.steps if ended else step + 1
                on_checkpoint(DreamState(run.octave, at, to_host(dream), state))
            if stopped:
                break
        if run.octave + 1 == len(shapes):
            break
        dream = to_device(
            _next_octave(
                to_host(dream), image, shapes[run.octave], shapes[run.octave + 1], params.detail
            )
        )
        run.octave, done = run.octave + 1, 0

    dreamed = imaging.to_image(imaging.resize(to_host(dream), (height, width)), image.dtype)
    if params.preserve_colors:
        dreamed = imaging.keep_colors(dreamed, image)
    if controls.mask is not None and controls.mask_model is None:
        dreamed = composite(dreamed, image, mask_weights(controls.mask, (height, width)))
    return dreamed


def preview(planar: np.ndarray, longest: int) -> np.ndarray:
    """A small H x W x 3 uint8 view of an image in progress (numpy or on the device), its
    longer side at most `longest`.

    Scaled down first, so a preview of a 16k render costs a small image's conversion."""
    planar = to_host(planar)
    height, width = planar.shape[1:]
    scale = min(1.0, longest / max(height, width))
    shape = (max(1, round(height * scale)), max(1, round(width * scale)))
    return imaging.to_image(imaging.resize(planar, shape))


def _next_octave(
    dream: np.ndarray,
    image: np.ndarray,
    shape: tuple[int, int],
    next_shape: tuple[int, int],
    detail: bool,
) -> np.ndarray:
    """The next octave's starting image: the dream scaled up, or with detail re-injection the
    input at the new size plus the dreamed detail (dream minus input) scaled up.

    One channel at a time, from the input's integers: the temporaries are planes, not images.
    """
    out = np.empty((3, *next_shape), dtype=np.float32)
    for c in range(3):
        plane = dream[c]
        if detail:
            source = imaging.to_plane(image[..., c])
            plane = plane - imaging.resize_plane(source, shape)
        out[c] = imaging.resize_plane(plane, next_shape)
        if detail:
            out[c] += imaging.resize_plane(source, next_shape)
    np.clip(out, -1.0, 1.0, out=out)
    return out


@dataclass
class _Render:
    """What every step of one render needs: its parameters, model, tile plans, clock, random
    generator and callbacks, its objective and mask, and the octave under way."""

    params: RenderParams
    model: DreamModel
    plans: list[TilePlan]
    clock: _Clock
    rng: np.random.Generator
    on_progress: Callable[[Progress], None] | None
    should_stop: Callable[[], bool] | None
    octave: int = 0
    # tiles -> (gradients, losses); None: the model's plain objective
    objective: Callable[[Any], tuple[Any, Any]] | None = None
    mask: np.ndarray | None = None  # uint8, any size: how strongly each pixel dreams
    mask_model: DreamModel | None = None  # the masked-out part's objective, if it dreams
    _weights: tuple[tuple[int, int], Any] | None = None  # the mask at the octave's shape

    def mask_at(self, shape: tuple[int, int]) -> Any:
        """The mask's weights at `shape`, on the device, made once per octave."""
        assert self.mask is not None
        if self._weights is None or self._weights[0] != shape:
            self._weights = (shape, to_device(mask_weights(self.mask, shape)))
        return self._weights[1]

    def step(self, dream: Any, step: int) -> tuple[Any, float | None]:
        """One gradient-ascent step over the whole image: the next image (on the device) and
        the step's loss (the mean of its tiles'), read only when progress or max_loss wants it.
        """
        params, plan = self.params, self.plans[self.octave]
        shift = (int(self.rng.integers(plan.shape[0])), int(self.rng.integers(plan.shape[1])))
        total = [0.0]
        batch_done = None
        if self.on_progress is not None or params.max_loss is not None:

            def batch_done(batch: list[Tile], losses: np.ndarray) -> None:
                total[0] += float(np.sum(losses))
                if self.on_progress is not None:
                    loss = float(np.mean(losses))
                    self.on_progress(self.clock.advance(batch, self.octave, step, loss))

        gradient = tiled_gradient(
            dream, plan, self.model, shift, batch_done, self.should_stop, self.objective
        )
        blend = []
        if self.mask is not None:
            blend.append(self.mask_at(plan.shape))
            if self.mask_model is not None:
                blend.append(
                    tiled_gradient(dream, plan, self.mask_model, shift, None, self.should_stop)
                )
        # Smoothing stronger than 1/4 per step would overshoot the neighbours' mean and ring.
        smoothing = min(params.tv_weight * params.step_size, 0.25)
        dream = device_steps(self.model).update(
            dream,
            gradient,
            blend,
            pyramid=plan.pyramid() if params.grad_norm == "laplacian" else None,
            step_size=params.step_size,
            smoothing=smoothing,
        )
        return dream, (total[0] / len(plan.tiles) if batch_done is not None else None)


class _Clock:
    """Turns tile batches done into Progress: fraction by pixels processed, and an ETA."""

    def __init__(
        self,
        shapes: list[tuple[int, int]],
        plans: list[TilePlan],
        params: RenderParams,
        resume: DreamState | None,
    ) -> None:
        self.params, self.plans, self.octaves = params, plans, len(shapes)
        self.total_work = float(sum(h * w for h, w in shapes) * params.steps)
        self.total_tiles = sum(len(plan.tiles) for plan in plans) * params.steps
        self.work = self.tiles = 0.0
        if resume is not None:
            for index in range(resume.octave):
                self.work += shapes[index][0] * shapes[index][1] * params.steps
                self.tiles += len(plans[index].tiles) * params.steps
            h, w = shapes[resume.octave]
            self.work += h * w * resume.step
            self.tiles += len(plans[resume.octave].tiles) * resume.step
        # The rate counts only batches that reuse a traced gradient function: the first batch
        # of each octave (a new window shape) waits seconds for tracing, and counted in the
        # rate it made the first ETA many times too long.
        self.measured_time = self.measured_fraction = 0.0
        self.last_time, self.last_fraction = time.monotonic(), self.work / self.total_work
        self.last_octave: int | None = None

    def skip(self, octave: int, steps: int) -> None:
        """Count `steps` of `octave` as done without rendering them (max_loss stopped it)."""
        plan = self.plans[octave]
        self.work += plan.shape[0] * plan.shape[1] * steps
        self.tiles += len(plan.tiles) * steps
        # Not a rate: the next batch measures from here.
        self.last_time, self.last_fraction = time.monotonic(), self.work / self.total_work

    def advance(self, batch: list[Tile], octave: int, step: int, loss: float) -> Progress:
        self.tiles += len(batch)
        self.work += sum((t.rows[1] - t.rows[0]) * (t.cols[1] - t.cols[0]) for t in batch)
        fraction = min(1.0, self.work / self.total_work)
        now = time.monotonic()
        if octave == self.last_octave:
            self.measured_time += now - self.last_time
            self.measured_fraction += fraction - self.last_fraction
        self.last_time, self.last_fraction, self.last_octave = now, fraction, octave
        rate = self.measured_fraction / self.measured_time if self.measured_time > 0 else 0.0
        if fraction >= 1.0:
            eta: float | None = 0.0
        else:  # none until a rate is measured
            eta = (1.0 - fraction) / rate if rate > 0 else None
        return Progress(
            fraction=fraction,
            octave=octave + 1,
            octaves=self.octaves,
            step=step + 1,
            steps=self.params.steps,
            tiles_done=int(self.tiles),
            tiles=self.total_tiles,
            eta_seconds=eta,
            loss=loss,
        )
