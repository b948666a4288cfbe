"""PixelContext behaviours (contexts.md §5)."""
import io
import pickle

import numpy as np
import pytest
from PIL import Image

from harness.context import GenerationStatus, PixelContext, TokenBuffer


def pctx(**kw):
    return PixelContext(tokens=TokenBuffer(np.arange(4, dtype=np.int64)), **kw)


def test_seed_page_defaults():
    c = pctx()
    assert (c.height, c.width, c.num_inference_steps, c.guidance_scale, c.true_cfg_scale,
            c.strength, c.cfg_normalization, c.cfg_truncation, c.num_warmup_steps,
            c.num_images_per_prompt, c.output_format, c.residual_threshold, c.status,
            c.explicit_negative_prompt, c.model_name) == (
        1024, 1024, 50, 3.5, 1.0, 0.6, False, 1.0, 0, 1, "jpeg", None,
        GenerationStatus.ACTIVE, False, "")
    for name in ("mask", "tokens_2", "negative_tokens", "negative_mask", "negative_tokens_2",
                 "input_image", "input_images", "prompt_images", "vae_condition_images"):
        assert getattr(c, name) is None
    for name in ("timesteps", "sigmas", "latents", "latent_image_ids"):
        arr = getattr(c, name)
        assert arr.dtype == np.float32 and arr.size == 0
    for name in ("text_ids", "negative_text_ids"):
        assert getattr(c, name).dtype == np.int64
    assert pctx().timesteps is not c.timesteps  # fresh defaults per instance
    assert c.request_id != pctx().request_id


def test_keyword_only_and_validation():
    with pytest.raises(TypeError):
        PixelContext(TokenBuffer(np.arange(2)))
    with pytest.raises(ValueError, match="allowed: png, jpeg, webp"):
        pctx(output_format="bmp")
    with pytest.raises(ValueError, match="residual_threshold must be > 0"):
        pctx(residual_threshold=0.0)
    with pytest.raises(TypeError, match="TokenBuffer"):
        PixelContext(tokens=np.arange(3))


def test_methods():
    c = pctx(num_inference_steps=7)
    assert c.compute_num_available_steps(12345) == 7
    assert not c.is_done
    c.status = GenerationStatus.END_OF_SEQUENCE
    assert c.is_done
    c.reset()
    assert c.status == GenerationStatus.ACTIVE
    lat = np.ones((1, 4, 64), np.float32)
    c.update(lat)
    assert c.latents is lat


def test_to_generation_output_clips_and_encodes():
    c = pctx(output_format="png")
    img = np.array([[-5.0, 0.0], [128.4, 300.0]], dtype=np.float32)
    c.update(np.stack([img] * 3, axis=-1))
    g = c.to_generation_output()
    assert len(g.output) == 1 and g.final_status == GenerationStatus.ACTIVE
    back = np.asarray(Image.open(io.BytesIO(g.output[0].data)))
    assert back[..., 0].tolist() == [[0, 0], [128, 255]]
    c.update(np.zeros((2, 3, 3, 3), np.uint8))
    assert len(c.to_generation_output().output) == 2


@pytest.mark.parametrize("lat, msg", [
    (np.zeros(0, np.float32), "empty"),
    (np.zeros(5, np.float32), "HxW"),
    (np.zeros((2, 2, 5), np.float32), "HxW, HxWx1"),
])
def test_to_generation_output_errors(lat, msg):
    c = pctx()
    c.update(lat)
    with pytest.raises(ValueError, match=msg):
        c.to_generation_output()


def test_pickle_round_trip_every_field():
    c = pctx(
        mask=np.array([True, False]), tokens_2=TokenBuffer(np.arange(3)),
        negative_tokens=TokenBuffer(np.arange(2)), explicit_negative_prompt=True,
        timesteps=np.array([1000.0, 500.0], np.float32), sigmas=np.array([1, .5, 0], np.float32),
        latents=np.ones((1, 4, 64), np.float32), latent_image_ids=np.zeros((4, 3), np.float32),
        text_ids=np.zeros((1, 2, 4), np.int64), height=64, width=128, num_inference_steps=2,
        guidance_scale=4.0, true_cfg_scale=2.0, strength=0.3, input_image=np.zeros((8, 8, 3),
                                                                                   np.uint8),
        output_format="webp", residual_threshold=0.1, extra_model_args={"x": np.arange(2)})
    c2 = pickle.loads(pickle.dumps(c))
    for name, value in vars(c).items():
        other = getattr(c2, name)
        if isinstance(value, np.ndarray):
            assert np.array_equal(value, other) and value.dtype == other.dtype, name
        elif name in ("tokens", "tokens_2", "negative_tokens"):
            assert value.all.tolist() == other.all.tolist()
        elif name == "extra_model_args":
            assert other["x"].tolist() == [0, 1]
        else:
            assert value == other, name
    c2.latents[0, 0, 0] = 5
    assert c.latents[0, 0, 0] == 1
