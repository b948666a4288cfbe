"""harness.video (MP4 through imageio-ffmpeg, lossless animated WebP, GIF; atomic writes) and
VideoPixelContext (the 4k+1 rule, video formats, encoded output, pickling)."""
from __future__ import annotations

import pickle

import numpy as np
import pytest

from _fast.tokens import TokenBuffer
from harness.context.pixel import VideoPixelContext
from harness.video import encode_video, read_video_frames, write_video, write_videos


def frames(n=5, h=32, w=48, seed=0):
    y, x = np.mgrid[0:h, 0:w]
    out = [np.stack([(x * 5 + 20 * i) % 256, (y * 7) % 256, np.full_like(x, 40 * i % 256)], -1)
           for i in range(n)]
    return np.asarray(out, dtype=np.uint8)


def test_webp_is_lossless_and_mp4_gif_decode_to_the_same_geometry(tmp_path):
    f = frames()
    for fmt in ("webp", "mp4", "gif"):
        path = write_video(tmp_path / f"v.{fmt}", f, fps=8)
        back = read_video_frames(path)
        assert back.shape == f.shape and back.dtype == np.uint8, fmt
        if fmt == "webp":
            assert np.array_equal(back, f)
        else:  # lossy, but the same picture
            assert np.abs(back.astype(int) - f).mean() < 12, fmt
    assert encode_video(f, "mp4", 16)[4:8] == b"ftyp"  # an MP4 container
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.gif", "v.mp4", "v.webp"]  # no temps


def test_write_videos_names_each_batch_entry(tmp_path):
    paths = write_videos(np.stack([frames(seed=0), frames(seed=1)]), tmp_path, "gif", 4)
    assert [p.name for p in paths] == ["video_0.gif", "video_1.gif"]


def test_bad_frames_and_options_are_refused():
    with pytest.raises(ValueError, match="uint8 \\(F, H, W, 3\\)"):
        encode_video(frames().astype(np.float32))
    with pytest.raises(ValueError, match="uint8 \\(F, H, W, 3\\)"):
        encode_video(frames()[..., :2])
    with pytest.raises(ValueError, match="fps must be an integer"):
        encode_video(frames(), "gif", 0)
    with pytest.raises(ValueError, match="not supported"):
        encode_video(frames(), "avi")
    with pytest.raises(ValueError, match="even frame sides"):
        encode_video(frames(h=31), "mp4")


def test_video_context_rules_and_output():
    base = dict(tokens=TokenBuffer(np.arange(4, dtype=np.int64)), num_frames=5, frame_rate=8)
    ctx = VideoPixelContext(**base, latents=frames(), output_format="webp")
    out = ctx.to_generation_output()
    assert len(out.output) == 1 and out.output[0].format == "webp"
    assert (out.output[0].width, out.output[0].height) == (48, 32)
    assert pickle.loads(pickle.dumps(ctx)) == ctx
    assert VideoPixelContext(**base).output_format == "mp4"
    with pytest.raises(ValueError, match="4k\\+1"):
        VideoPixelContext(tokens=base["tokens"], num_frames=6)
    with pytest.raises(ValueError, match="video output format 'png'"):
        VideoPixelContext(**base, output_format="png")
    with pytest.raises(ValueError, match="frame_rate"):
        VideoPixelContext(tokens=base["tokens"], frame_rate=0)
    with pytest.raises(ValueError, match="uint8 \\(F, H, W, 3\\)"):
        VideoPixelContext(**base, latents=np.zeros((1, 16, 2, 4, 4), np.float32)
                          ).to_generation_output()
