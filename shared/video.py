"""Videos in and out, with PyAV (whose wheels carry FFmpeg's libraries).

The API inspects an upload here before it stores anything: the header's frame size, frame
count and duration against the limits first, then every packet demuxed (not decoded) to count
the frames truly there and find a truncated file, and one frame decoded to prove the codec
works. The worker decodes the frames and encodes the result here. No TensorFlow.
"""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from shared.images import fit_within

# FFmpeg's demuxer names of the containers accepted, and the extension each is stored under.
CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "webm"}
# Audio codecs an MP4 carries as they are; any other track is re-encoded to AAC.
MP4_AUDIO = {"aac", "mp3", "alac", "ac3", "eac3", "opus"}


class VideoRejected(ValueError):
    """The upload is not a video we can dream; the message says why."""


class VideoTooLarge(VideoRejected):
    """The video breaks a size limit: `what` it is (frame size, frames, duration) and `limit`."""

    def __init__(self, message: str, what: str, limit: float) -> None:
        super().__init__(message)
        self.what, self.limit = what, limit


@dataclass(frozen=True)
class VideoInfo:
    """What an accepted upload holds."""

    extension: str
    width: int
    height: int
    frames: int
    fps: Fraction
    has_audio: bool

    @property
    def seconds(self) -> float:
        return float(self.frames / self.fps)


def inspect_video(data: bytes, max_pixels: int, max_frames: int, max_seconds: float) -> VideoInfo:
    """The upload's container, frame size, frame count and rate; VideoTooLarge when its header
    (or its packets) break a limit, VideoRejected when it is no video we can decode."""
    if not data:
        raise VideoRejected("the video file is empty")
    try:
        container = av.open(io.BytesIO(data), mode="r")
    except (av.FFmpegError, ValueError) as exc:
        raise VideoRejected(f"the file is not a readable video ({_reason(exc)})") from None
    with container:
        extension = CONTAINERS.get(container.format.name)
        if extension is None:
            raise VideoRejected(
                f"unsupported container {container.format.long_name or container.format.name}; "
                "send MP4, MOV or WebM"
            )
        if not container.streams.video:
            raise VideoRejected("the file has no video stream")
        stream = container.streams.video[0]
        codec = stream.codec_context
        width, height = codec.width, codec.height
        if width <= 0 or height <= 0:
            raise VideoRejected(f"the video stream ({codec.name}) has no frame size")
        if width * height > max_pixels:
            raise VideoTooLarge(
                f"the video's frames are {width}x{height} = {width * height} pixels; the limit "
                f"is {max_pixels} (ONEIRO_MAX_PIXELS): scale the video down",
                "frame pixels",
                max_pixels,
            )
        rate = stream.average_rate or stream.guessed_rate
        if not rate:
            raise VideoRejected("the video stream has no frame rate")
        _check_length(_header_frames(container, stream, rate), rate, max_frames, max_seconds)
        frames, decoded = _count_frames(container, stream, max_frames)
        if not decoded:
            raise VideoRejected(
                f"no frame of the video stream ({codec.name}) could be decoded: the file is "
                "corrupt or its codec unsupported"
            )
        _check_length(frames, rate, max_frames, max_seconds)
        return VideoInfo(
            extension, width, height, frames, Fraction(rate), bool(container.streams.audio)
        )


def _header_frames(container: av.container.InputContainer, stream: object, rate: Fraction) -> int:
    """The frame count the header promises: the stream's, else its duration times its rate."""
    if stream.frames:  # type: ignore[attr-defined]
        return int(stream.frames)  # type: ignore[attr-defined]
    if stream.duration and stream.time_base:  # type: ignore[attr-defined]
        seconds = stream.duration * stream.time_base  # type: ignore[attr-defined]
    elif container.duration:
        seconds = Fraction(container.duration, av.time_base)
    else:
        return 0
    return round(seconds * rate)


def _check_length(frames: int, rate: Fraction, max_frames: int, max_seconds: float) -> None:
    seconds = float(frames / rate)
    if seconds > max_seconds:
        raise VideoTooLarge(
            f"the video lasts {seconds:.1f} s; the limit is {max_seconds:g} s "
            "(ONEIRO_MAX_VIDEO_SECONDS): cut it shorter",
            "duration",
            max_seconds,
        )
    if frames > max_frames:
        raise VideoTooLarge(
            f"the video has {frames} frames; the limit is {max_frames} (ONEIRO_MAX_FRAMES): "
            "cut it shorter or lower its frame rate",
            "frames",
            max_frames,
        )


def _count_frames(
    container: av.container.InputContainer, stream: object, max_frames: int
) -> tuple[int, bool]:
    """(packets of the video stream, whether one decoded into a frame): demuxing reads the
    whole file without decoding it, so a truncated file shows, and costs little."""
    count, decoded = 0, False
    try:
        for packet in container.demux(stream):  # type: ignore[arg-type]
            if packet.size == 0:  # the demuxer's end-of-stream marker
                continue
            count += 1
            if count > max_frames:
                break  # enough to refuse
            if not decoded:
                decoded = bool(packet.decode())
        if not decoded and count:
            decoded = bool(stream.codec_context.decode(None))  # type: ignore[attr-defined]
    except (av.FFmpegError, ValueError) as exc:
        raise VideoRejected(
            f"the video is corrupt or truncated after {count} frames ({_reason(exc)})"
        ) from None
    return count, decoded


def decode_frames(data: bytes, max_dim: int | None = None) -> Iterator[np.ndarray]:
    """The video's frames in order, as H x W x 3 uint8 RGB, each scaled to fit `max_dim`."""
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in container.decode(container.streams.video[0]):
            # A copy: the array must not share a buffer the decoder may reuse for later frames.
            yield fit_within(np.array(frame.to_ndarray(format="rgb24")), max_dim)


def video_fps(data: bytes) -> Fraction:
    """The average frame rate of the video's first video stream."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        return Fraction(stream.average_rate or stream.guessed_rate)


def mp4_comment(data: bytes) -> str | None:
    """The `comment` tag of an MP4 (where encode_mp4 writes a recipe); None without one."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            return container.metadata.get("comment") or None
    except av.FFmpegError:
        return None


def encode_mp4(
    frames: Iterable[np.ndarray],
    fps: Fraction,
    audio_from: bytes | None = None,
    recipe: str | None = None,
) -> bytes:
    """The frames as an MP4: H.264 in yuv420p (which every browser plays) at `fps`, with the
    first audio track of the video `audio_from`, if it has one, copied unchanged, and
    `recipe` in its `comment` tag.

    yuv420p halves the colour resolution, so a frame of odd width or height loses its last
    column or row. The index goes first (faststart), so a browser can play while downloading.
    """
    with tempfile.TemporaryDirectory(prefix="oneiro-video-") as folder:
        path = Path(folder, "video.mp4")
        with av.open(str(path), mode="w", options={"movflags": "+faststart"}) as out:
            if recipe is not None:  # as a still carries it: `oneiro recipe FILE` reads it back
                out.metadata["comment"] = recipe
            video = out.add_stream("libx264", rate=fps)
            video.pix_fmt = "yuv420p"
            # Near-lossless at a fraction of the frames' size; the dream is mostly fine detail.
            # x264 without its assembly (asm=0): with it, the same frames encode to a different
            # stream from run to run (even on one thread; measured: up to 15 streams from 60
            # encodes of 4 frames, pixels up to 29 levels apart), so a job resumed after a crash
            # would not decode to the uninterrupted run's pixels. In C alone it is repeatable
            # (80 of 80) and about 2x slower: 1.9 s a 1080p frame on the 2-core development
            # machine, once a job, beside minutes of dreaming each frame.
            video.options = {"crf": "18", "preset": "medium", "x264-params": "asm=0"}
            source = av.open(io.BytesIO(audio_from), mode="r") if audio_from else None
            try:
                audio = _audio_track(out, source)
                for n, image in enumerate(frames):
                    if n == 0:
                        video.height, video.width = (side - side % 2 for side in image.shape[:2])
                    frame = av.VideoFrame.from_ndarray(
                        np.ascontiguousarray(image[: video.height, : video.width]),
                        format="rgb24",
                    )
                    frame.pts, frame.time_base = n, 1 / Fraction(fps)
                    out.mux(video.encode(frame))
                out.mux(video.encode(None))
                if audio is not None and source is not None:
                    _copy_audio(source, out, audio)
            finally:
                if source is not None:
                    source.close()
        return path.read_bytes()


def _audio_track(
    out: av.container.OutputContainer, source: av.container.InputContainer | None
) -> object | None:
    if source is None or not source.streams.audio:
        return None
    track = source.streams.audio[0]
    if track.codec_context.name in MP4_AUDIO:
        return out.add_stream_from_template(track)
    return out.add_stream("aac", rate=track.codec_context.sample_rate or 48000)


def _copy_audio(
    source: av.container.InputContainer, out: av.container.OutputContainer, audio: object
) -> None:
    """The source's first audio track into `audio`: its packets as they are when the MP4 can
    hold its codec, else decoded and encoded again as AAC (WebM's Vorbis, say)."""
    track = source.streams.audio[0]
    copy = track.codec_context.name in MP4_AUDIO
    for packet in source.demux(track):
        if packet.dts is None:
            continue
        if copy:
            packet.stream = audio  # type: ignore[assignment]
            out.mux(packet)
        else:
            for frame in packet.decode():
                frame.pts = None
                out.mux(audio.encode(frame))  # type: ignore[attr-defined]
    if not copy:
        out.mux(audio.encode(None))  # type: ignore[attr-defined]


def _reason(exc: Exception) -> str:
    # FFmpeg's own words ("Invalid data found when processing input"), without errno and path.
    text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return str(text).splitlines()[0][:200]
