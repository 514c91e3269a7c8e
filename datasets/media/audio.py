"""Audio pipelines (docs/datasets/recipes.md): named, deterministic waveform -> feature computations, every parameter
explicit.

A pipeline is a frozen ``AudioPipeline``; ``PIPELINES`` holds the published ones. ``compute_features`` turns a mono
waveform into a float32 ``(F, T)`` array; ``output_shape`` gives that shape without computing anything, and
``served_shape`` the shape a batch carries (VGGSound serves a 626-frame crop of its cached 10 s STFT).

Shared steps and their reasons:
- Decoding: WAV/FLAC/OGG through soundfile (what ``librosa.load`` uses), anything else (MP4, FLV, MP3) through PyAV;
  channels are averaged as ``librosa.to_mono`` does; resampling is ``librosa.resample(res_type=...)``, librosa 0.10+'s
  ``load`` default ``soxr_hq`` unless overridden. So the result equals ``librosa.load(path, sr=...)`` for WAV input.
- Repeat: the published code repeats with ``np.tile(x, k)[:k * sr]``, which comes out short for clips under 1 s. We
  tile until the target length is reached: identical whenever the published form reaches it, full length otherwise
  (``short`` is reported so the manifest counts such clips, docs/datasets/pitfalls.md#short-clips). BML's tool repeats
  only the clip's last partial second instead (``repeat="last_second"``, ``repeat_last_second``).
- STFT padding: ``pad_mode`` is always passed explicitly. librosa changed its default from ``reflect`` to
  ``constant`` in 0.9.0 (docs/datasets/pitfalls.md#librosa); the default here is ``constant``, what the AUG/AMSS
  environment (librosa 0.10.1, GitHub: njustkmg/TPAMI-AMSS, ``env.yml``) computed. Only the first and last frames depend
  on it.
"""

from __future__ import annotations

import dataclasses
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from core.extras import MissingExtraError
from core.hparams import is_number
from datasets.media import MediaError, is_lfs_pointer, lfs_error

AUDIO_KINDS = ("stft", "scipy_spectrogram", "kaldi_fbank")
_FBANK_ONLY = ("num_mel_bins", "frame_shift_ms", "target_frames", "norm_mean", "norm_std")
# The parameters each kind never reads: a value given for one could not change the features, so ``replace`` refuses
# it and the manifest's ``audio_applied`` leaves them out.
UNUSED_BY_KIND = {"stft": _FBANK_ONLY, "scipy_spectrogram": ("window", "center", "pad_mode", *_FBANK_ONLY),
                  "kaldi_fbank": ("seconds", "n_fft", "hop_length", "window", "center", "pad_mode", "log", "log_eps",
                                  "clip", "zscore", "repeat")}
PAD_MODES = ("constant", "reflect", "edge", "symmetric", "wrap")
SOUNDFILE_SUFFIXES = (".wav", ".flac", ".ogg")
# How a clip shorter than ``seconds`` is lengthened: ``tile`` the whole clip (OGM-GE and most loaders), or
# ``last_second``: repeat its last partial second (GitHub: GeWu-Lab/AV_preprocess_tool, audio_2_frames.py, wav_fixed).
REPEAT_RULES = ("tile", "last_second")


@dataclass(frozen=True)
class AudioPipeline:
    """A deterministic waveform -> feature pipeline.

    Attributes:
        name: registry key.
        kind: ``stft`` (librosa), ``scipy_spectrogram`` (PMR's ``scipy.signal.spectrogram``) or ``kaldi_fbank``.
        sample_rate: target rate in Hz; 0 keeps the file's native rate (the KS fbank script).
        seconds: repeat the clip until this long and cut; 0 = no repeat (fbank pads/cuts frames instead).
        n_fft: FFT size (``nperseg`` for scipy).
        hop_length: hop in samples (scipy: ``nperseg - noverlap``).
        window: window name for librosa.
        center: librosa ``center``.
        pad_mode: librosa ``pad_mode`` when centring; always explicit.
        log: take ``log(S + log_eps)``.
        log_eps: the epsilon inside the log.
        clip: clip the waveform to [-1, 1] after repeating (as published).
        zscore: per-clip ``(x - mean) / (std + 1e-9)`` after the log (PMR).
        repeat: how a short clip reaches ``seconds`` (``REPEAT_RULES``).
        res_type: ``librosa.resample`` method.
        num_mel_bins: fbank mel bins.
        frame_shift_ms: fbank frame shift.
        target_frames: fbank frames after zero-padding or cutting.
        norm_mean: fbank normalisation: ``(x - norm_mean) / norm_std``.
        norm_std: fbank normalisation divisor.
        serve_frames: when > 0, batches carry a crop of this many time frames (train: random start; test: first).
        follows: the published pipeline reproduced.
        deviation: what differs from it, and why.
    """

    name: str
    kind: str
    sample_rate: int = 22050
    seconds: float = 3.0
    n_fft: int = 512
    hop_length: int = 353
    window: str = "hann"
    center: bool = True
    pad_mode: str = "constant"
    log: bool = True
    log_eps: float = 1e-7
    clip: bool = True
    zscore: bool = False
    repeat: str = "tile"
    res_type: str = "soxr_hq"
    num_mel_bins: int = 128
    frame_shift_ms: float = 10.0
    target_frames: int = 1024
    norm_mean: float = -4.503877
    norm_std: float = 10.282552
    serve_frames: int = 0
    follows: str = ""
    deviation: str = ""

    def __post_init__(self) -> None:
        if self.kind not in AUDIO_KINDS:
            raise ValueError(f"audio pipeline {self.name!r}: unknown kind {self.kind!r}; valid: {AUDIO_KINDS}")
        if self.pad_mode not in PAD_MODES:
            raise ValueError(f"audio pipeline {self.name!r}: pad_mode {self.pad_mode!r} is not one of {PAD_MODES}")
        if self.repeat not in REPEAT_RULES:
            raise ValueError(f"audio pipeline {self.name!r}: repeat {self.repeat!r} is not one of {REPEAT_RULES}")
        if self.kind != "kaldi_fbank" and (self.seconds <= 0 or self.sample_rate <= 0):
            raise ValueError(f"audio pipeline {self.name!r}: {self.kind} needs seconds > 0 and sample_rate > 0 for a "
                             f"fixed output shape")
        if self.serve_frames and self.serve_frames > self.output_shape()[1]:
            raise ValueError(f"audio pipeline {self.name!r}: serve_frames {self.serve_frames} exceeds the cached "
                             f"{self.output_shape()[1]} frames")

    @property
    def num_samples(self) -> int:
        return int(round(self.seconds * self.sample_rate))

    def output_shape(self) -> tuple[int, int]:
        """``(F, T)`` of ``compute_features`` (what the cache stores)."""
        if self.kind == "kaldi_fbank":
            return self.target_frames, self.num_mel_bins
        n, bins = self.num_samples, self.n_fft // 2 + 1
        if self.kind == "stft" and self.center:
            return bins, 1 + n // self.hop_length
        return bins, 1 + (n - self.n_fft) // self.hop_length

    def served_shape(self) -> tuple[int, int]:
        """``(F, T)`` of the audio a batch carries."""
        f, t = self.output_shape()
        return (f, self.serve_frames) if self.serve_frames else (f, t)

    def params(self) -> dict[str, Any]:
        """Every parameter, for the manifest and the cache hash; ``repeat`` only when it is not ``tile``, so that the
        caches built before the parameter existed keep their names."""
        out = dataclasses.asdict(self)
        if out["repeat"] == "tile":
            del out["repeat"]
        return out

    def applied(self) -> dict[str, Any]:
        """The parameters this kind reads, with what it applies where that is not a parameter (scipy's window)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k not in UNUSED_BY_KIND[self.kind]}
        if self.kind == "scipy_spectrogram":
            out["window"] = "tukey(0.25), scipy.signal.spectrogram's default"
        return out

    def replace(self, overrides: Mapping[str, Any]) -> "AudioPipeline":
        """A copy with some parameters replaced; unknown names and ill-typed values are errors naming the key."""
        table = {f.name: f for f in dataclasses.fields(self)}
        values: dict[str, Any] = {}
        # The name and its description belong to the code: training compares a cache's recorded description with
        # the pipeline's to detect caches built by an earlier version of it (the manifest records the overrides).
        fixed = {"name", "follows", "deviation"}
        for key, value in overrides.items():
            if key not in table or key in fixed:
                raise ValueError(f"unknown audio pipeline parameter {key!r}; valid: {sorted(set(table) - fixed)}")
            if key in UNUSED_BY_KIND[self.kind]:
                raise ValueError(f"audio pipeline {self.name!r} ({self.kind}) does not read {key!r}, so setting it "
                                 f"would change the cache's name but not its features")
            current = getattr(self, key)
            kind = type(current)
            if kind is bool:
                ok = isinstance(value, bool)
            elif kind is int:
                ok = isinstance(value, int) and not isinstance(value, bool)
            elif kind is float:
                ok = is_number(value)
                value = float(value) if ok else value
            else:
                ok = isinstance(value, kind)
            if not ok:
                raise ValueError(f"audio pipeline parameter {key!r} expects {kind.__name__}, got {value!r}")
            values[key] = value
        return dataclasses.replace(self, **values)


_OGM_DEV = ("clips under 1 s are tiled until long enough (np.tile(x, k) comes out short); pad_mode explicit")

PIPELINES: dict[str, AudioPipeline] = {r.name: r for r in (
    AudioPipeline("ogm_stft3s", "stft", 22050, 3.0,
                follows="GitHub: GeWu-Lab/OGM-GE_CVPR2022, dataset/CramedDataset.py (AGM, InfoReg, AMSS the same)",
                deviation=_OGM_DEV),
    AudioPipeline("aug_stft20s", "stft", 22050, 20.0,
                follows="GitHub: njustkmg/NeurIPS25-AUG, dataset/CREMA.py (np.tile(x, 20)[:441000]; LFM the same)",
                deviation=_OGM_DEV),
    AudioPipeline("amss_stft10s_35k", "stft", 35400, 10.0,
                follows="GitHub: njustkmg/TPAMI-AMSS, AMSS/MyDataset.py VADataset (the commented-out on-the-fly path: "
                        "librosa.load(sr=35400), tile to 10 s, clip, stft(512, 353), log)",
                deviation="AMSS trained on pickles from an unpublished script (docs/datasets/kinetics_sounds.md); this "
                          "is the "
                          "on-the-fly path its loader documents. " + _OGM_DEV),
    AudioPipeline("pmr_spec10s", "scipy_spectrogram", 16000, 10.0, n_fft=512, hop_length=159, center=False,
                zscore=True,
                follows="GitHub: fanyunfeng-bit/Modal-Imbalance-PMR, data/CREMAD/video_preprocessing.py::extractWav "
                        "(scipy.signal.spectrogram(fs=16000, nperseg=512, noverlap=353), log, per-clip z-score)",
                deviation="short clips tiled until 10 s"),
    AudioPipeline("vgg_stft10s", "stft", 16000, 10.0, n_fft=256, hop_length=128, serve_frames=626,
                follows="GitHub: GeWu-Lab/OGM-GE_CVPR2022, dataset/VGGSoundDataset.py (16 kHz, tile to >= 10 s, "
                        "random 5 s window, stft(256, 128), log -> 129x626)",
                deviation="the 5 s window is a 626-frame crop of the cached 10 s STFT, drawn per batch (train) or "
                          "the first 626 frames (test; published: random at test time too). Crop starts are "
                          "quantised to the 8 ms hop and the edge frames differ from an STFT of the cut signal"),
    AudioPipeline("bml_stft10s_44k", "stft", 44100, 10.0, n_fft=512, hop_length=440, pad_mode="reflect", log=False,
                clip=False, repeat="last_second",
                follows="GitHub: GeWu-Lab/AV_preprocess_tool, audio_2_frames.py::audio_extract "
                        "(librosa.load(sr=44100), wav_fixed(wav, 10, sr): the last partial second repeated to 10 s, "
                        "abs(stft(512, hop 440, hann, center, pad_mode reflect)), no log, no clip -> 257x1003); read "
                        "as <id>.pkl by GitHub: GeWu-Lab/BML_TPAMI2024, code/dataset/KS.py",
                deviation="none"),
    AudioPipeline("kaldi_fbank1024", "kaldi_fbank", 0, 0.0,
                follows="GitHub: GeWu-Lab/OGM-GE_CVPR2022, data/KineticSound/process_audio.py (mean of every "
                        "channel removed, torchaudio Kaldi fbank of channel 0, "
                        "128 mel, 10 ms, hanning, htk_compat, no energy, no dither; pad/cut 1024; "
                        "(x + 4.503877) / (5.141276 * 2)); MMPareto/Diagnosing/BalanceBenchmark load its output",
                deviation="none (the target length 1024 is the KS script's; CREMA-D's is unpublished)"),
)}


def get_pipeline(name: str) -> AudioPipeline:
    if name not in PIPELINES:
        raise KeyError(f"unknown audio pipeline {name!r}; valid: {sorted(PIPELINES)}")
    return PIPELINES[name]


def _decode_with_av(path: Path) -> tuple[np.ndarray, int]:
    import av

    with av.open(str(path)) as container:
        if not container.streams.audio:
            raise MediaError(path, "corrupt audio", "no audio stream")
        stream = container.streams.audio[0]
        rate = stream.rate
        # Planar float keeps every channel separate: the fbank recipe reads channel 0, the others their mean.
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
        chunks = []
        for frame in container.decode(stream):
            chunks.extend(f.to_ndarray() for f in resampler.resample(frame))
        chunks.extend(f.to_ndarray() for f in resampler.resample(None))
    if not chunks:
        raise MediaError(path, "corrupt audio", "the audio stream decodes to no samples")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), int(rate)


def load_waveform(path: Path | str) -> tuple[np.ndarray, int]:
    """Decode ``path`` to a float32 mono waveform at its native rate: the mean of its channels, as ``librosa.load``
    makes it (``librosa.to_mono``).

    Raises:
        MediaError: an LFS pointer, unreadable or empty audio (the message names the file).
    """
    data, rate = load_channels(path)
    return np.ascontiguousarray(data.mean(axis=0, dtype=np.float32)), rate


def load_channels(path: Path | str) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 (channels, samples) at its native rate, as ``torchaudio.load`` returns it.

    Raises:
        MediaError: an LFS pointer, unreadable or empty audio (the message names the file).
    """
    import av
    import soundfile as sf

    path = Path(path)
    if is_lfs_pointer(path):
        raise lfs_error(path)
    try:
        if path.suffix.lower() in SOUNDFILE_SUFFIXES:
            data, rate = sf.read(str(path), dtype="float32", always_2d=True)
            data = data.T
        else:
            data, rate = _decode_with_av(path)
    except (sf.LibsndfileError, av.error.FFmpegError, RuntimeError, ValueError, OSError) as err:
        raise MediaError(path, "corrupt audio", f"cannot decode audio ({type(err).__name__}: {err})") from err
    if data.size == 0:
        raise MediaError(path, "corrupt audio", "empty audio (0 samples)")
    return np.ascontiguousarray(data), int(rate)


def repeat_to(y: np.ndarray, n: int) -> np.ndarray:
    """Tile ``y`` until it has at least ``n`` samples and cut to ``n``."""
    reps = -(-n // len(y))
    return np.tile(y, reps)[:n]


def repeat_last_second(y: np.ndarray, n: int, sr: int) -> np.ndarray:
    """AV_preprocess_tool's ``wav_fixed``: append the clip's last partial second (its last whole second when the length
    is a multiple of ``sr``; the whole clip when under 1 s) until it has at least ``n`` samples, then cut to ``n``.
    (The published loop appends once more when the length hits ``n`` exactly; the cut removes it.)"""
    tail = len(y) % sr or sr
    reps = max(-(-(n - len(y)) // tail), 0)
    return np.concatenate([y, np.tile(y[len(y) - tail:], reps)])[:n]


def require_backend(pipeline: AudioPipeline) -> None:
    """Fail early, naming the extra to install, when ``pipeline`` needs an optional library that is missing."""
    if pipeline.kind == "kaldi_fbank" and importlib.util.find_spec("torchaudio") is None:
        raise MissingExtraError(f"audio pipeline {pipeline.name!r} needs torchaudio (Kaldi fbank); install the [audio] "
                                f"extra: pip install 'augbench[audio]'")


def _kaldi_fbank(pipeline: AudioPipeline, channels: np.ndarray, sr: int) -> np.ndarray:
    """``channels``: (C, N). As the KS script: the mean over every channel's samples is subtracted, then torchaudio's
    fbank reads channel 0 (its default ``channel=-1`` means 0), so stereo is not averaged to mono here."""
    require_backend(pipeline)
    import torch
    from torchaudio.compliance import kaldi

    wave = torch.from_numpy(channels - channels.mean())
    fbank = kaldi.fbank(wave, htk_compat=True, sample_frequency=sr, use_energy=False, window_type="hanning",
                        num_mel_bins=pipeline.num_mel_bins, dither=0.0, frame_shift=pipeline.frame_shift_ms)
    fbank = fbank.numpy()
    n = pipeline.target_frames
    if len(fbank) < n:
        fbank = np.pad(fbank, ((0, n - len(fbank)), (0, 0)))
    # Normalising after padding is the published order, so padded frames hold -norm_mean / norm_std, not 0.
    return ((fbank[:n] - pipeline.norm_mean) / pipeline.norm_std).astype(np.float32)


def compute_features(pipeline: AudioPipeline, y: np.ndarray, sr: int,
                     window: tuple[int, int] | None = None) -> np.ndarray:
    """Features of one waveform ``y`` at rate ``sr`` as float32 ``pipeline.output_shape()``.

    ``y`` is mono (N,) or (channels, N); the librosa/SciPy pipelines use the mean of the channels, as ``librosa.load``
    does, the fbank pipeline channel 0, as torchaudio's fbank does. ``window`` = (start, end) in whole seconds keeps
    only the samples ``[sr * start, sr * end)`` at the pipeline's rate, before the tiling (PMR's AVE event segments,
    ``extractWav_SE``).
    """
    import librosa

    def cut(x: np.ndarray, rate: int) -> np.ndarray:
        return x[..., rate * window[0]:rate * window[1]] if window is not None else x

    if pipeline.kind == "kaldi_fbank":
        channels = np.atleast_2d(y)
        if pipeline.sample_rate and sr != pipeline.sample_rate:
            channels = librosa.resample(channels, orig_sr=sr, target_sr=pipeline.sample_rate,
                                        res_type=pipeline.res_type)
            sr = pipeline.sample_rate
        return _kaldi_fbank(pipeline, cut(channels, sr), sr)
    if y.ndim == 2:
        y = y.mean(axis=0, dtype=np.float32)
    if sr != pipeline.sample_rate:
        y = librosa.resample(y, orig_sr=sr, target_sr=pipeline.sample_rate, res_type=pipeline.res_type)
    y = cut(np.asarray(y, dtype=np.float32), pipeline.sample_rate)
    y = repeat_to(y, pipeline.num_samples) if pipeline.repeat == "tile" else \
        repeat_last_second(y, pipeline.num_samples, pipeline.sample_rate)
    if pipeline.clip:
        y = np.clip(y, -1.0, 1.0)
    if pipeline.kind == "stft":
        mag = np.abs(librosa.stft(y, n_fft=pipeline.n_fft, hop_length=pipeline.hop_length, window=pipeline.window,
                                  center=pipeline.center, pad_mode=pipeline.pad_mode))
    else:
        from scipy import signal

        _, _, mag = signal.spectrogram(y, fs=pipeline.sample_rate, nperseg=pipeline.n_fft,
                                       noverlap=pipeline.n_fft - pipeline.hop_length)
    out = np.log(mag + pipeline.log_eps) if pipeline.log else mag
    if pipeline.zscore:
        out = (out - out.mean()) / (out.std() + 1e-9)
    return np.asarray(out, dtype=np.float32)


def features_from_file(pipeline: AudioPipeline, path: Path | str,
                       window: tuple[int, int] | None = None) -> tuple[np.ndarray, float, bool]:
    """Decode ``path`` and compute its features (of the seconds in ``window`` only, when given).

    Returns:
        (features float32 ``output_shape()``, duration in seconds, whether the clip (or its window) was under 1 s).

    Raises:
        MediaError: the window holds no audio (the clip ends before it starts).
    """
    channels, sr = load_channels(path)
    n = channels.shape[1]
    kept = n if window is None else max(0, min(n, sr * window[1]) - sr * window[0])
    if kept == 0:
        raise MediaError(Path(path), "too short", f"{n / sr:.2f} s of audio: nothing in the window {window} s")
    return compute_features(pipeline, channels, sr, window), n / sr, kept < sr
