"""The default params keep the photo: a first dream at defaults is the photo dreamed on, not an
even grid of eyes where the photo was (docs/guide/defaults.md shows the choice)."""

from __future__ import annotations

import pytest
from PIL import Image

from shared.cost import work
from shared.images import decode_rgb, fit_within
from shared.params import FRAME_DEFAULTS, RenderParams
from tests.utils.likeness import photo_kept
from tests.utils.paths import CHELSEA, OFFLINE_WEIGHTS

# The seed's octave recipe (TensorFlow's DeepDream tutorial): five octaves at 1.3 around the
# input, 50 steps each.
SEED_RECIPE = {"steps": 50, "octaves": 5, "octave_scale": 1.3, "step_size": 0.01}


def test_the_defaults_are_pinned() -> None:
    params = RenderParams()
    chosen = (params.steps, params.octaves, params.octave_scale, params.step_size)
    assert chosen == (20, 5, 1.3, 0.01)
    assert list(params.layers) == ["mixed3", "mixed5"] and params.detail
    assert FRAME_DEFAULTS == {"steps": 10, "octaves": 3}


def test_the_defaults_dream_no_harder_than_the_seeds_recipe() -> None:
    # Fewer steps of the same size, over octaves no larger: no more dreaming anywhere.
    seed = RenderParams(**SEED_RECIPE)
    for width, height in [(400, 266), (1000, 750), (6000, 5232)]:
        assert work(width, height, RenderParams()) < work(width, height, seed)
    assert RenderParams().steps < seed.steps and RenderParams().step_size <= seed.step_size


@pytest.mark.skipif(
    not OFFLINE_WEIGHTS.is_file(),
    reason=f"no offline InceptionV3 weights at {OFFLINE_WEIGHTS} (../shared/models is handed to "
    "CI and demos, not to clones): random weights dream no photo away",
)
def test_a_dream_at_default_params_keeps_the_photo() -> None:
    from worker.engine import load_dream_model, render

    cat = fit_within(decode_rgb(CHELSEA.read_bytes()), 192)  # 192 x 128: 6 x 4 blocks of 32
    params = RenderParams(seed=1)
    model = load_dream_model(str(OFFLINE_WEIGHTS), tuple(params.layers))
    dreamed = render(cat, params, model)

    photo, dream = Image.fromarray(cat), Image.fromarray(dreamed)
    # The block luminance of a 400-px cat correlated 0.979 with the photo's at the old defaults
    # (5 octaves up to 1.69x, 100 steps), 0.991 at the seed's recipe, 0.997 now.
    assert photo_kept(photo, dream) >= 0.99
    assert dreamed.std() > 0  # and it dreamed: not the photo returned as it came
    assert abs(dreamed.astype(float) - cat).mean() > 8
