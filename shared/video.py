"""Videos in and out, with PyAV (whose wheels carry FFmpeg's libraries).

The API inspects an upload here before it stores anything: the header's frame size, frame
count and duration against the limits first, then every packet demuxed (not decoded) to count
the frames truly there and find a truncated file, each frame's size read where its packet is
a picture file (PNG, JPEG: a MOV may hold one 64x64 PNG and then 12000x12000 ones), one frame
decoded to prove the codec works, and the audio track probed. The worker decodes the frames
(each checked against the declared size before it is converted; the decoder refuses a larger
one before allocating it) and encodes the result here, with the source's frame times and
rotation kept. No TensorFlow.
"""

from __future__ import annotations

import io
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import IO, Any

import av
import numpy as np
from PIL import Image

from shared.images import fit_within

# FFmpeg's demuxer names of the containers accepted, and the extension each is stored under.
CONTAINERS = {"mov,mp4,m4a,3gp,3g2,mj2": "mp4", "matroska,webm": "webm"}
# Audio codecs an MP4 carries as they are; any other track is re-encoded to AAC.
MP4_AUDIO = {"aac", "mp3", "alac", "ac3", "eac3", "opus"}
# Codecs whose every packet is a whole picture file that Pillow reads the size of from its
# header, without decoding it.
# How much larger than the declared frame the decoder may allocate, each side (its padding).
DECODER_MARGIN = 128
PICTURE_CODECS = {"png", "apng", "mjpeg", "bmp", "tiff", "webp", "gif"}


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


def inspect_video(
    data: bytes | IO[bytes], max_pixels: int, max_frames: int, max_seconds: float
) -> VideoInfo:
    """The upload's container, frame size, frame count and rate; VideoTooLarge when its header
    (or its packets) break a limit, VideoRejected when it is no video we can decode. `data` is
    the bytes, or a file (a resumable upload's, read as needed)."""
    if isinstance(data, bytes) and not data:
        raise VideoRejected("the video file is empty")
    try:
        container = av.open(io.BytesIO(data) if isinstance(data, bytes) else data, mode="r")
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
        if codec is None:
            raise VideoRejected("the video stream's codec is unknown")
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
        audio = _audio_probe(container)
        frames, turn = _count_frames(container, stream, audio, max_frames)
        _check_length(frames, rate, max_frames, max_seconds)
        if turn % 180:  # a portrait clip stored landscape: it is dreamed and returned upright
            width, height = height, width
        return VideoInfo(extension, width, height, frames, Fraction(rate), audio is not None)


def _header_frames(
    container: av.container.InputContainer, stream: av.VideoStream, rate: Fraction
) -> int:
    """The frame count the header promises: the stream's, else its duration times its rate."""
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        seconds = stream.duration * stream.time_base
    elif container.duration:
        seconds = Fraction(container.duration, av.time_base)
    else:
        return 0
    return int(round(seconds * rate))


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


def _audio_probe(container: av.container.InputContainer) -> av.AudioStream | None:
    """The audio track the result will carry (its first), checked to be one the MP4 can copy
    or FFmpeg can decode (to encode as AAC); None when there is none."""
    if not container.streams.audio:
        return None
    track = container.streams.audio[0]
    codec = track.codec_context
    if codec is None or (codec.name not in MP4_AUDIO and not _decodes(codec.name)):
        name = codec.name if codec is not None else "unknown"
        raise VideoRejected(
            f"the video's audio track is in a codec ({name}) Oneiro cannot carry into the "
            "result: remove the audio or send it as AAC, MP3, Opus or PCM"
        )
    return track


def _decodes(name: str) -> bool:
    try:
        return av.codec.Codec(name, "r") is not None
    except (av.FFmpegError, ValueError):
        return False


def _count_frames(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    audio: av.AudioStream | None,
    max_frames: int,
) -> tuple[int, int]:
    """(packets of the video stream, the rotation of its first frame): demuxing reads the whole
    file (the audio track's packets too) without decoding it, so a truncated file shows, and
    costs little. One video frame is decoded, and the audio's first packets when they are to
    be encoded again; VideoRejected when one cannot be."""
    count, turn, sound = 0, None, False
    copied = audio is None or audio.codec_context.name in MP4_AUDIO
    streams: list[av.VideoStream | av.AudioStream] = [stream] if audio is None else [stream, audio]
    try:
        for packet in checked_packets(container, stream, streams):
            if packet.stream is audio:
                if not copied and not sound:
                    sound = bool(packet.decode())
                continue
            count += 1
            if count > max_frames:
                break  # enough to refuse
            if turn is None:
                turn = next((frame.rotation for frame in packet.decode()), None)
        if turn is None and count:
            turn = next(
                (f.rotation for f in stream.codec_context.decode(None)),
                None,
            )
    except VideoRejected:
        raise
    except (av.FFmpegError, ValueError) as exc:
        raise VideoRejected(
            f"the video is corrupt or truncated after {count} frames ({_reason(exc)})"
        ) from None
    if turn is None:
        name = stream.codec_context.name
        raise VideoRejected(
            f"no frame of the video stream ({name}) could be decoded: the file is corrupt or "
            "its codec unsupported"
        )
    if not copied and not sound:
        raise VideoRejected("no sound of the video's audio track could be decoded")
    return count, int(turn)


def checked_packets(
    container: av.container.InputContainer,
    stream: av.VideoStream,
    streams: list[av.VideoStream | av.AudioStream] | None = None,
) -> Iterator[av.Packet[Any]]:
    """The packets of `streams` (default: the video `stream`) in file order, end markers left
    out; VideoRejected at the first video packet that is a picture of another size than the
    stream declares (read from its header: PNG and JPEG frames carry their own)."""
    codec = stream.codec_context
    pictures = codec.name in PICTURE_CODECS
    declared = (codec.width, codec.height)
    n = 0
    for packet in container.demux(*(streams or [stream])):
        if packet.size == 0:  # the demuxer's end-of-stream marker
            continue
        if packet.stream is stream:
            n += 1
            if pictures:
                _check_size(n, _picture_size(n, bytes(packet)), declared)
        yield packet


def _picture_size(n: int, data: bytes) -> tuple[int, int]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                return picture.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise VideoRejected(f"frame {n} of the video is corrupt: not a readable picture") from None


def _check_size(n: int, size: tuple[int, int], declared: tuple[int, int]) -> None:
    if size != declared:
        raise VideoRejected(
            f"frame {n} is {size[0]}x{size[1]}; the video declares {declared[0]}x{declared[1]} "
            "frames: every frame must be the declared size (the job's work is charged for it)"
        )


def decode_frames(data: bytes, max_dim: int | None = None) -> Iterator[np.ndarray]:
    """The video's frames in order, as H x W x 3 uint8 RGB, upright (the stream's rotation
    applied), each scaled to fit `max_dim`. VideoRejected at a frame of another size than the
    stream declares (what the job was charged for), before it is converted or scaled; the
    decoder itself refuses a larger one before allocating it."""
    with av.open(io.BytesIO(data), mode="r") as container:
        for frame in _checked_frames(container):
            # A copy: the array must not share a buffer the decoder may reuse for later frames.
            pixels = np.array(frame.to_ndarray(format="rgb24"))
            turns = round(frame.rotation / 90) % 4  # counter-clockwise, as the display matrix
            if turns:
                pixels = np.ascontiguousarray(np.rot90(pixels, turns))
            yield fit_within(pixels, max_dim)


def frame_times(data: bytes) -> list[Fraction] | None:
    """When each frame of the video starts, in seconds from the first, in order (a variable
    frame rate's frames keep their times, so the result lasts as long as the source); None
    when the frames carry no times. Every frame is decoded (not converted) and checked as
    decode_frames checks it: the worker calls this before dreaming, so a frame of another
    size or a corrupt one fails the job before any work, not hours in."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stamps = [frame.pts for frame in _checked_frames(container)]
        base = container.streams.video[0].time_base
    known = [stamp for stamp in stamps if stamp is not None]
    if not known or base is None or len(known) < len(stamps):
        return None
    return [(stamp - known[0]) * base for stamp in known]


def _checked_frames(container: av.container.InputContainer) -> Iterator[av.VideoFrame]:
    stream = container.streams.video[0]
    codec = stream.codec_context
    declared = (codec.width, codec.height)
    # With a margin: decoders check their padded size (an H.264 96x64 is refused at 96 x 64
    # pixels). A frame within it but not the declared size is refused below.
    allowed = (declared[0] + DECODER_MARGIN) * (declared[1] + DECODER_MARGIN)
    codec.options = {"max_pixels": str(allowed)}
    n = 0
    try:
        for packet in checked_packets(container, stream):
            for frame in packet.decode():
                n += 1
                _check_size(n, (frame.width, frame.height), declared)
                yield frame
        for frame in codec.decode(None):
            n += 1
            _check_size(n, (frame.width, frame.height), declared)
            yield frame
    except VideoRejected:
        raise
    except (av.FFmpegError, ValueError) as exc:
        raise VideoRejected(
            f"frame {n + 1} of the video cannot be decoded ({_reason(exc)}): it is corrupt or "
            f"larger than the declared {declared[0]}x{declared[1]}"
        ) from None


def video_fps(data: bytes) -> Fraction:
    """The average frame rate of the video's first video stream."""
    with av.open(io.BytesIO(data), mode="r") as container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        if rate is None:  # checked at submit (inspect_video); a file changed since is no video
            raise VideoRejected("the video has no frame rate")
        return Fraction(rate)


def mp4_comment(data: bytes) -> str | None:
    """The `comment` tag of an MP4 (where encode_mp4 writes a recipe); None without one."""
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            return container.metadata.get("comment") or None
    except av.FFmpegError:
        return None


# The clock a video's frame times are written in when they are the source's own (MPEG's).
TIMES_CLOCK = Fraction(1, 90000)


def encode_mp4(
    frames: Iterable[np.ndarray],
    fps: Fraction,
    audio_from: bytes | None = None,
    times: list[Fraction] | None = None,
    recipe: str | None = None,
) -> bytes:
    """The frames as an MP4: H.264 in yuv420p (which every browser plays) at `fps` (a rational
    of bounded denominator: shared/formats.py frame_rate), or at `times` (each frame's start in
    seconds: a variable rate's), with the first audio track of the video `audio_from`, if it has
    one, copied unchanged (or encoded as AAC), and `recipe` in its `comment` tag.

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
            clock = TIMES_CLOCK if times else 1 / Fraction(fps)
            video.codec_context.time_base = clock
            last = -1
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
                    # Strictly increasing, as the encoder needs, whatever the source said.
                    last = max(last + 1, round(times[n] / clock) if times else n)
                    frame.pts, frame.time_base = last, clock
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
) -> av.AudioStream | None:
    if source is None or not source.streams.audio:
        return None
    track = source.streams.audio[0]
    if track.codec_context.name in MP4_AUDIO:
        return out.add_stream_from_template(track)
    return out.add_stream("aac", rate=track.codec_context.sample_rate or 48000)


def _copy_audio(
    source: av.container.InputContainer, out: av.container.OutputContainer, audio: av.AudioStream
) -> None:
    """The source's first audio track into `audio`: its packets as they are when the MP4 can
    hold its codec, else decoded and encoded again as AAC (WebM's Vorbis, say)."""
    track = source.streams.audio[0]
    copy = track.codec_context.name in MP4_AUDIO
    for packet in source.demux(track):
        if packet.dts is None:
            continue
        if copy:
            packet.stream = audio
            out.mux(packet)
        else:
            for frame in packet.decode():
                frame.pts = None
                out.mux(audio.encode(frame))
    if not copy:
        out.mux(audio.encode(None))


def _reason(exc: Exception) -> str:
    # FFmpeg's own words ("Invalid data found when processing input"), without errno and path.
    text = getattr(exc, "strerror", None) or str(exc).strip() or type(exc).__name__
    return str(text).splitlines()[0][:200]
