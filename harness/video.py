"""Writing videos: uint8 (F, H, W, 3) frames to MP4 (H.264 through imageio-ffmpeg, whose wheel
ships ffmpeg), animated WebP (lossless) or GIF (Pillow), as bytes or atomically to a file.

Frames are compared as uint8 arrays before any of this: MP4 (yuv420p) and GIF (a 256-colour
palette) are lossy; the WebP written here is lossless (its frames decode to the same arrays).
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["VIDEO_FORMATS", "LOSSY_VIDEO_FORMATS", "encode_video", "write_video", "write_videos",
           "read_video_frames", "check_frames"]

VIDEO_FORMATS = ("mp4", "webp", "gif")
#: Containers whose decoded frames are not the arrays that were written.
LOSSY_VIDEO_FORMATS = ("mp4", "gif")


def check_frames(frames) -> np.ndarray:
    """``frames`` as a C-contiguous uint8 (F, H, W, 3) array (anything else: ValueError)."""
    arr = np.asarray(frames)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or 0 in arr.shape:
        raise ValueError(f"video frames must be a non-empty uint8 (F, H, W, 3) array, got "
                         f"{arr.dtype} {arr.shape}")
    return np.ascontiguousarray(arr)


def _fps(fps) -> int:
    if isinstance(fps, bool) or not isinstance(fps, (int, np.integer)) or not 1 <= fps <= 240:
        raise ValueError(f"fps must be an integer in [1, 240], got {fps!r}")
    return int(fps)


def _mp4(frames: np.ndarray, fps: int, path: Path) -> None:
    """H.264 (libx264, yuv420p, CRF-like quality 8 of 10) at ``fps``; sides must be even."""
    import imageio_ffmpeg

    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"MP4 (yuv420p) needs even frame sides, got {w}x{h}")
    writer = imageio_ffmpeg.write_frames(
        str(path), (w, h), fps=fps, codec="libx264", pix_fmt_in="rgb24", pix_fmt_out="yuv420p",
        quality=8, macro_block_size=2, ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"])
    writer.send(None)  # start the encoder
    try:
        for frame in frames:
            writer.send(frame)
    finally:
        writer.close()


def _pillow(frames: np.ndarray, fps: int, fmt: str) -> bytes:
    from PIL import Image

    images = [Image.fromarray(f) for f in frames]
    duration = int(round(1000 / fps))
    buf = io.BytesIO()
    kw = {"lossless": True, "quality": 100, "method": 4} if fmt == "webp" else {"optimize": False}
    images[0].save(buf, format=fmt.upper(), save_all=True, append_images=images[1:],
                   duration=duration, loop=0, **kw)
    return buf.getvalue()


def encode_video(frames, fmt: str = "mp4", fps: int = 16) -> bytes:
    """The encoded container (mp4, webp or gif) of uint8 (F, H, W, 3) ``frames`` at ``fps``."""
    frames = check_frames(frames)
    fps = _fps(fps)
    fmt = str(fmt).lower()
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f"video format {fmt!r} is not supported; allowed: "
                         f"{', '.join(VIDEO_FORMATS)}")
    if fmt != "mp4":
        return _pillow(frames, fps, fmt)
    with tempfile.TemporaryDirectory(prefix="harness-video-") as tmp:
        path = Path(tmp) / "video.mp4"
        _mp4(frames, fps, path)
        return path.read_bytes()


def write_video(path: str | os.PathLike, frames, fmt: str | None = None, fps: int = 16) -> Path:
    """Encode ``frames`` and write them to ``path`` atomically (a temp file beside it, renamed);
    the format defaults to the file's suffix."""
    from harness.parity.report import atomic_write_bytes

    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".")
    return atomic_write_bytes(path, encode_video(frames, fmt, fps))


def read_video_frames(path: str | os.PathLike) -> np.ndarray:
    """The decoded uint8 (F, H, W, 3) frames of an MP4 (ffmpeg), WebP or GIF (Pillow) file."""
    path = Path(path)
    if path.suffix.lower() == ".mp4":
        import imageio_ffmpeg

        reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = next(reader)
        w, h = meta["size"]
        frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
        return np.stack(frames)
    from PIL import Image, ImageSequence

    with Image.open(path) as im:
        return np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(im)])


def write_videos(videos, out_dir: str | os.PathLike, fmt: str, fps: int,
                 stem: str = "video") -> list[Path]:
    """``<stem>_<i>.<fmt>`` for each uint8 (F, H, W, 3) video of a (B, F, H, W, 3) batch, each
    written atomically."""
    return [write_video(Path(out_dir) / f"{stem}_{i}.{fmt}", frames, fmt, fps)
            for i, frames in enumerate(np.asarray(videos))]
