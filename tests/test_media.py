"""Audio pipelines (shapes, the OGM-GE steps, padding, short clips, fbank) and frame extraction (order, 1 fps rule)."""

from __future__ import annotations

import os
import sys
import types

import numpy as np
import pytest
import torch

from datasets.media import MediaError, is_lfs_pointer
from datasets.media.audio import (
    PIPELINES,
    MissingExtraError,
    compute_features,
    features_from_file,
    get_pipeline,
    load_channels,
    load_waveform,
    repeat_last_second,
)
from datasets.media.video import (
    extract_frames,
    frame_files,
    load_frame_folder,
    mid_second_indices,
    top_up_indices,
    top_up_span,
)
from tests.media_fixtures import (
    FRAME_NAMINGS,
    clip_code,
    second_level,
    write_frame_folder,
    write_lfs_pointer,
    write_video,
    write_wav,
)


def tone(seconds: float, sr: int = 16000) -> np.ndarray:
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * 330 * t) + 0.05 * np.sin(2 * np.pi * 2100 * t)).astype(np.float32)


@pytest.mark.parametrize("name, shape", [("ogm_stft3s", (257, 188)), ("aug_stft20s", (257, 1250)),
                                         ("amss_stft10s_35k", (257, 1003)), ("pmr_spec10s", (257, 1004)),
                                         ("vgg_stft10s", (129, 1251)), ("bml_stft10s_44k", (257, 1003))])
def test_pipeline_shapes_match_the_published_pipelines(name, shape):
    pipeline = get_pipeline(name)
    out = compute_features(pipeline, tone(1.5), 16000)
    assert out.shape == shape == pipeline.output_shape()
    assert out.dtype == np.float32 and np.isfinite(out).all()


def test_vggsound_serves_a_5s_crop_and_fbank_is_1024_by_128():
    assert get_pipeline("vgg_stft10s").served_shape() == (129, 626)
    assert get_pipeline("kaldi_fbank1024").output_shape() == (1024, 128)


@pytest.mark.parametrize("seconds", [0.4, 0.9, 1.0])
def test_short_clips_give_the_full_shape(seconds):
    import librosa

    pipeline = get_pipeline("ogm_stft3s")
    y = tone(seconds, 22050)
    out = compute_features(pipeline, y, 22050)
    assert out.shape == (257, 188)
    # Tiled until 3 s, not np.tile(y, 3) (short) and not zero-padded (a silent tail would sit at log(1e-7) = -16.1).
    tiled = np.tile(y, int(np.ceil(66150 / len(y))))[:66150]
    reference = np.log(np.abs(librosa.stft(tiled, n_fft=512, hop_length=353, pad_mode="constant")) + 1e-7)
    np.testing.assert_allclose(out, reference, atol=1e-4)
    assert out[:, -2].max() > -10


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_ogm_pipeline_equals_the_published_steps_written_out(tmp_path):
    import librosa

    path = tmp_path / "clip.wav"
    write_wav(path, 1.7, sr=16000, freq=410.0)
    samples, rate = librosa.load(str(path), sr=22050)
    resamples = np.tile(samples, 3)[:22050 * 3]
    resamples[resamples > 1.0] = 1.0
    resamples[resamples < -1.0] = -1.0
    reference = np.log(np.abs(librosa.stft(resamples, n_fft=512, hop_length=353, pad_mode="constant")) + 1e-7)
    features, duration, short = features_from_file(get_pipeline("ogm_stft3s"), path)
    np.testing.assert_allclose(features, reference, rtol=0, atol=1e-4)  # float32 log-magnitudes
    assert duration == pytest.approx(1.7, rel=1e-12) and not short  # samples / rate, in float64


def test_pad_mode_changes_only_the_edge_frames():
    constant = get_pipeline("ogm_stft3s")
    reflect = constant.replace({"pad_mode": "reflect"})
    a, b = compute_features(constant, tone(2.0), 16000), compute_features(reflect, tone(2.0), 16000)
    np.testing.assert_allclose(a[:, 2:-2], b[:, 2:-2], atol=1e-4)
    assert np.abs(a[:, 0] - b[:, 0]).max() > 0.5
    assert reflect.params()["pad_mode"] == "reflect" and constant.params()["pad_mode"] == "constant"


def test_pipeline_overrides_are_checked():
    pipeline = get_pipeline("ogm_stft3s")
    assert pipeline.replace({"seconds": 1}).output_shape() == (257, 63)
    with pytest.raises(ValueError, match="unknown audio pipeline parameter 'hop'"):
        pipeline.replace({"hop": 100})
    with pytest.raises(ValueError, match="n_fft.*expects int"):
        pipeline.replace({"n_fft": "512"})
    with pytest.raises(ValueError, match="pad_mode"):
        pipeline.replace({"pad_mode": "zeros"})
    # The description is the code's: training compares it to detect caches of an earlier pipeline version.
    for key in ("follows", "deviation", "name"):
        with pytest.raises(ValueError, match=f"unknown audio pipeline parameter '{key}'"):
            pipeline.replace({key: "my own words"})


def test_fbank_without_torchaudio_names_the_audio_extra(monkeypatch):
    import importlib.util

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torchaudio" else real_find_spec(name, *a))
    with pytest.raises(MissingExtraError, match=r"\[audio\]"):
        compute_features(get_pipeline("kaldi_fbank1024"), tone(1.0), 16000)


def fake_torchaudio(monkeypatch, fbank) -> None:
    """torchaudio is an optional extra: a stand-in whose ``compliance.kaldi.fbank`` is ``fbank``."""
    import importlib.util

    kaldi = types.SimpleNamespace(fbank=fbank)
    monkeypatch.setitem(sys.modules, "torchaudio", types.SimpleNamespace(compliance=types.SimpleNamespace(
        kaldi=kaldi)))
    monkeypatch.setitem(sys.modules, "torchaudio.compliance", types.SimpleNamespace(kaldi=kaldi))
    monkeypatch.setitem(sys.modules, "torchaudio.compliance.kaldi", kaldi)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "torchaudio" else real_find_spec(name, *a))


def test_fbank_pads_then_normalises_like_the_ks_script(monkeypatch):
    calls = {}

    def fbank(wave, **kwargs):
        calls.update(kwargs, mean=float(wave.mean()))
        return torch.zeros((300, kwargs["num_mel_bins"]))

    fake_torchaudio(monkeypatch, fbank)
    out = compute_features(get_pipeline("kaldi_fbank1024"), tone(1.0) + 0.2, 16000)
    assert out.shape == (1024, 128)
    # Zero fbank frames and zero padding both become (0 + 4.503877) / (5.141276 * 2) after normalising.
    np.testing.assert_allclose(out, 4.503877 / (5.141276 * 2), rtol=1e-6)
    assert abs(calls["mean"]) < 1e-6, "the waveform mean is subtracted first"
    assert calls["htk_compat"] and calls["window_type"] == "hanning" and calls["dither"] == 0.0
    assert calls["sample_frequency"] == 16000 and calls["frame_shift"] == 10.0 and not calls["use_energy"]


def test_fbank_reads_channel_0_of_stereo_after_the_global_mean_like_torchaudio(monkeypatch, tmp_path):
    # process_audio.py: waveform - waveform.mean() over every channel, then kaldi.fbank reads channel 0 (channel=-1).
    import soundfile as sf

    seen = {}

    def fbank(wave, **kwargs):
        seen["wave"] = wave.clone()
        return torch.zeros((300, kwargs["num_mel_bins"]))

    fake_torchaudio(monkeypatch, fbank)
    left, right = tone(1.0) + 0.25, -0.5 * tone(1.0) - 0.1
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    features_from_file(get_pipeline("kaldi_fbank1024"), path)
    wave = seen["wave"].numpy()
    assert wave.shape == (2, 16000)
    np.testing.assert_allclose(wave[0], left - np.concatenate([left, right]).mean(), atol=1e-6)


def test_stft_pipelines_average_stereo_channels_like_librosa(tmp_path):
    import soundfile as sf

    left, right = tone(2.0, 22050), 0.3 * tone(2.0, 22050)[::-1].copy()
    stereo, mono = tmp_path / "stereo.wav", tmp_path / "mono.wav"
    sf.write(stereo, np.stack([left, right], axis=1), 22050, subtype="FLOAT")
    sf.write(mono, (left + right) / 2, 22050, subtype="FLOAT")
    pipeline = get_pipeline("ogm_stft3s")
    np.testing.assert_allclose(features_from_file(pipeline, stereo)[0], features_from_file(pipeline, mono)[0],
                               atol=1e-5)
    y, _ = load_waveform(stereo)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-7)


def test_audio_track_of_an_mp4_decodes(tmp_path):
    path = tmp_path / "clip.mp4"
    write_video(path, 1.0, 5, 50, (24, 32), codec="mpeg4", audio_sr=16000)
    y, sr = load_waveform(path)
    assert sr == 16000 and 0.95 < len(y) / sr < 1.2 and 0.1 < np.abs(y).max() < 0.5


def test_stereo_audio_track_of_an_mp4_keeps_both_channels_and_averages_them(tmp_path):
    # AVE's audio comes from the MP4's (stereo) track: librosa.load averages the channels, the fbank reads channel 0.
    import av

    sr, path = 16000, tmp_path / "stereo.mp4"
    t = np.arange(sr) / sr
    stereo = np.stack([0.3 * np.sin(2 * np.pi * 300 * t), 0.1 * np.sin(2 * np.pi * 1200 * t)]).astype(np.float32)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=sr)
        stream.layout = "stereo"
        for start in range(0, sr, 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(stereo[:, start:start + 1024]), format="fltp",
                                               layout="stereo")
            frame.sample_rate, frame.pts = sr, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    channels, rate = load_channels(path)
    assert rate == sr and channels.shape[0] == 2
    np.testing.assert_allclose(np.abs(channels).max(axis=1), [0.3, 0.1], atol=0.05)
    y, _ = load_waveform(path)
    np.testing.assert_allclose(y, channels.mean(axis=0), atol=1e-7)


def test_corrupt_and_lfs_audio_are_media_errors(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(MediaError, match="bad.wav") as err:
        load_waveform(bad)
    assert err.value.kind == "corrupt audio"
    pointer = tmp_path / "ptr.wav"
    write_lfs_pointer(pointer)
    assert is_lfs_pointer(pointer)
    with pytest.raises(MediaError, match="git lfs pull") as err:
        load_waveform(pointer)
    assert err.value.kind == "lfs pointer"


def test_video_frames_are_counted_as_decoded_and_the_first_of_each_second_kept(tmp_path):
    import av

    path = tmp_path / "clip.flv"
    write_video(path, 2.5, 10, clip_code(3), (48, 64))
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames == 0, "FLV metadata has no frame count to trust"
    frames, info = extract_frames(path, (24, 32))
    assert info == {"fps": 10, "decoded": 25, "source_size": (48, 64)}
    assert frames.shape == (3, 24, 32, 3)
    np.testing.assert_allclose(frames[..., 0].mean(axis=(1, 2)), [second_level(k) for k in range(3)], atol=4)
    np.testing.assert_allclose(frames[..., 1].mean(), clip_code(3), atol=4)
    two_per_second, _ = extract_frames(path, None, per_second=2)
    assert len(two_per_second) == 5 and two_per_second.shape[1:] == (48, 64, 3)


@pytest.mark.parametrize("naming", sorted(FRAME_NAMINGS))
def test_frame_folders_sort_numerically_whatever_the_listing_order(tmp_path, monkeypatch, naming):
    folder = tmp_path / "clip"
    names = write_frame_folder(folder, 12, 60, naming, (16, 16))
    assert [p.name for p in frame_files(folder)] == names
    expected, info = load_frame_folder(folder, None)
    assert info == {"source_size": expected.shape[1:3]}
    real_listdir = os.listdir
    rng = np.random.default_rng(0)
    monkeypatch.setattr(os, "listdir", lambda p: list(rng.permutation(real_listdir(p))))
    assert [p.name for p in frame_files(folder)] == names
    np.testing.assert_array_equal(load_frame_folder(folder, None)[0], expected)
    np.testing.assert_allclose(expected[..., 0].mean(axis=(1, 2)), [second_level(k) for k in range(12)], atol=4)


def test_frames_of_different_sizes_need_a_storage_size(tmp_path):
    from PIL import Image

    folder = tmp_path / "clip"
    write_frame_folder(folder, 2, 60, "ogm", (16, 16))
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(folder / "00090.png")
    with pytest.raises(MediaError, match="frames of different sizes") as err:
        load_frame_folder(folder, None)
    assert err.value.kind == "corrupt image"
    assert load_frame_folder(folder, (8, 8))[0].shape == (3, 8, 8, 3)


def test_lexicographic_order_would_be_wrong():
    names = [FRAME_NAMINGS["ks"](i, 1) for i in range(12)]
    assert sorted(names) != names, "the fixture must exercise frame_000010 < frame_00009 as strings"


def test_corrupt_frame_is_a_media_error(tmp_path):
    folder = tmp_path / "clip"
    write_frame_folder(folder, 3, 60, "ogm", (16, 16))
    (folder / "00030.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(MediaError, match="00030.jpg") as err:
        load_frame_folder(folder, (8, 8))
    assert err.value.kind == "corrupt image"


def test_pipeline_table_is_complete():
    assert {"ogm_stft3s", "aug_stft20s", "amss_stft10s_35k", "pmr_spec10s", "vgg_stft10s",
            "kaldi_fbank1024", "bml_stft10s_44k"} <= set(PIPELINES)
    assert all(r.follows for r in PIPELINES.values())


def test_pmr_event_segment_equals_extract_wav_se_written_out(tmp_path):
    # PMR data/AVE/video_preprocessing.py extractWav_SE: samples[sr*start:sr*end], tiled 10x (again if short), cut to
    # 10 s, clipped, scipy spectrogram(nperseg 512, noverlap 353), log(+1e-7), z-score.
    import librosa
    from scipy import signal

    path = tmp_path / "clip.wav"
    write_wav(path, 6.0, sr=16000, freq=410.0)
    samples, rate = librosa.load(str(path), sr=16000)
    cut = samples[16000 * 2:16000 * 4]
    resamples = np.tile(cut, 10)
    resamples = np.tile(resamples, 10)[:160000] if resamples.shape[0] < 160000 else resamples[:160000]
    resamples = np.clip(resamples, -1.0, 1.0)
    _, _, spectrogram = signal.spectrogram(resamples, rate, nperseg=512, noverlap=353)
    spectrogram = np.log(np.abs(spectrogram) + 1e-7)
    reference = (spectrogram - spectrogram.mean()) / (spectrogram.std() + 1e-9)
    features, _, short = features_from_file(get_pipeline("pmr_spec10s"), path, (2, 4))
    np.testing.assert_allclose(features, reference, rtol=0, atol=1e-4)  # float32 z-scored log-magnitudes
    assert not short
    with pytest.raises(MediaError, match="nothing in the window"):
        features_from_file(get_pipeline("pmr_spec10s"), path, (7, 9))


def test_a_parameter_the_pipeline_kind_does_not_read_is_refused_and_left_out_of_what_is_applied():
    pmr, fbank = get_pipeline("pmr_spec10s"), get_pipeline("kaldi_fbank1024")
    with pytest.raises(ValueError, match=r"'pmr_spec10s' \(scipy_spectrogram\) does not read 'window'"):
        pmr.replace({"window": "hamming"})
    with pytest.raises(ValueError, match=r"\(kaldi_fbank\) does not read 'n_fft'"):
        fbank.replace({"n_fft": 1024})
    assert pmr.applied()["window"].startswith("tukey(0.25)") and "pad_mode" not in pmr.applied()
    assert {"n_fft", "hop_length", "seconds", "log"}.isdisjoint(fbank.applied())
    assert fbank.applied()["num_mel_bins"] == 128
    assert get_pipeline("ogm_stft3s").replace({"pad_mode": "reflect"}).applied()["pad_mode"] == "reflect"


def loud_tone(seconds: float, sr: int) -> np.ndarray:
    """A tone that peaks at 1.5 in its second half: clipping to [-1, 1] changes the spectrogram."""
    t = np.arange(int(round(seconds * sr))) / sr
    y = 0.4 * np.sin(2 * np.pi * 330 * t) + 0.05 * np.sin(2 * np.pi * 2100 * t)
    y[len(y) // 2:] *= 3.75
    return y.astype(np.float32)


# The published STFT steps written out with their own numbers: (rate, seconds, n_fft, hop) and Hann, centred, constant
# padding, log(|S| + 1e-7) (OGM-GE/AUG CramedDataset, AMSS VADataset's on-the-fly path, OGM-GE VGGSoundDataset).
@pytest.mark.parametrize("name, rate, seconds, n_fft, hop", [("ogm_stft3s", 22050, 3, 512, 353),
                                                            ("aug_stft20s", 22050, 20, 512, 353),
                                                            ("amss_stft10s_35k", 35400, 10, 512, 353),
                                                            ("vgg_stft10s", 16000, 10, 256, 128)])
def test_stft_pipelines_equal_their_published_steps_written_out(name, rate, seconds, n_fft, hop):
    import librosa

    y = loud_tone(1.3, 22050)
    resampled = librosa.resample(y, orig_sr=22050, target_sr=rate, res_type="soxr_hq") if rate != 22050 else y
    tiled = np.clip(np.tile(resampled, seconds)[:rate * seconds], -1.0, 1.0)
    reference = np.log(np.abs(librosa.stft(tiled, n_fft=n_fft, hop_length=hop, window="hann", center=True,
                                           pad_mode="constant")) + 1e-7)
    out = compute_features(get_pipeline(name), y, 22050)
    assert np.abs(resampled).max() > 1.2, "the fixture must exercise the clip to [-1, 1]"
    np.testing.assert_allclose(out, reference, rtol=0, atol=1e-3)


def test_a_clip_longer_than_the_pipeline_keeps_its_first_seconds():
    # np.tile(x, 3)[:66150] of a 4 s clip: its first 3 s, not a later or centred window.
    import librosa

    y = loud_tone(4.0, 22050)
    reference = np.log(np.abs(librosa.stft(np.clip(y[:66150], -1.0, 1.0), n_fft=512, hop_length=353,
                                           pad_mode="constant")) + 1e-7)
    np.testing.assert_allclose(compute_features(get_pipeline("ogm_stft3s"), y, 22050), reference, rtol=0, atol=1e-3)


def test_fbank_keeps_the_native_rate_pads_at_the_end_and_cuts_the_first_1024_frames(monkeypatch):
    # process_audio.py: torchaudio.load at the file's rate (no resampling), fbank, then
    # p = 1024 - n; p > 0: ZeroPad2d((0, 0, 0, p)) (frames appended at the end); p < 0: fbank[0:1024].
    seen = {}

    def fbank(wave, **kwargs):
        seen.update(kwargs, samples=wave.shape[-1])
        frames = seen["frames"]
        return torch.arange(frames * 128, dtype=torch.float32).reshape(frames, 128) / (frames * 128)

    fake_torchaudio(monkeypatch, fbank)
    pipeline = get_pipeline("kaldi_fbank1024")
    mean, std = -4.503877, 5.141276 * 2
    seen["frames"] = 300
    out = compute_features(pipeline, tone(1.0, 44100), 44100)
    assert seen["sample_frequency"] == 44100 and seen["samples"] == 44100, "fbank reads the native rate"
    values = np.arange(300 * 128, dtype=np.float32).reshape(300, 128) / (300 * 128)
    np.testing.assert_allclose(out[:300], (values - mean) / std, rtol=1e-6)
    np.testing.assert_allclose(out[300:], -mean / std, rtol=1e-6)
    seen["frames"] = 1500
    out = compute_features(pipeline, tone(1.0, 8000), 8000)
    assert seen["sample_frequency"] == 8000 and seen["samples"] == 8000
    values = np.arange(1500 * 128, dtype=np.float32).reshape(1500, 128) / (1500 * 128)
    np.testing.assert_allclose(out, (values[:1024] - mean) / std, rtol=1e-6)


@pytest.mark.parametrize("seconds, window, short", [(0.9, None, True), (1.0, None, False), (1.7, None, False),
                                                    (6.0, (5, 9), False), (5.5, (5, 9), True)])
def test_short_is_under_one_second_of_the_clip_or_of_its_window(tmp_path, seconds, window, short):
    path = tmp_path / "clip.wav"
    write_wav(path, seconds, sr=16000)
    features, duration, is_short = features_from_file(get_pipeline("pmr_spec10s"), path, window)
    assert features.shape == (257, 1004) and duration == pytest.approx(seconds)
    assert is_short is short


def stepped_tone(seconds: float, sr: int) -> np.ndarray:
    """A tone whose frequency changes every second (300 + 150 k Hz in second k): which seconds a cut keeps shows."""
    t = np.arange(int(round(seconds * sr))) / sr
    return (0.3 * np.sin(2 * np.pi * (300 + 150 * np.floor(t)) * t)).astype(np.float32)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_pmr_event_segment_of_a_48khz_track_is_cut_after_resampling_to_16khz(tmp_path):
    # AVE's tracks are 44.1/48 kHz. extractWav_SE: librosa.load(sr=16000) of the whole file, then
    # samples[16000 * start:16000 * end] (End excluded), and spectrogram(resamples, rate) with rate = 16000.
    import librosa
    import soundfile as sf
    from scipy import signal

    path = tmp_path / "clip.wav"
    sf.write(path, stepped_tone(6.0, 48000), 48000, subtype="FLOAT")
    samples, rate = librosa.load(str(path), sr=16000)
    resamples = np.clip(np.tile(samples[16000 * 2:16000 * 4], 10)[:160000], -1.0, 1.0)
    _, _, spectrogram = signal.spectrogram(resamples, rate, nperseg=512, noverlap=353)
    spectrogram = np.log(np.abs(spectrogram) + 1e-7)
    reference = (spectrogram - spectrogram.mean()) / (spectrogram.std() + 1e-9)
    features, duration, short = features_from_file(get_pipeline("pmr_spec10s"), path, (2, 4))
    np.testing.assert_allclose(features, reference, rtol=0, atol=1e-3)  # float32 z-scored log-power
    assert duration == pytest.approx(6.0) and not short


def test_an_uncentred_stft_override_frames_the_signal_without_padding():
    # center=False: frame t is |rfft(hann(512) * x[353 t : 353 t + 512])| of the tiled, clipped clip, 186 frames.
    pipeline = get_pipeline("ogm_stft3s").replace({"center": False})
    y = loud_tone(1.3, 22050)
    out = compute_features(pipeline, y, 22050)
    assert out.shape == pipeline.output_shape() == (257, 1 + (66150 - 512) // 353)
    x = np.clip(np.tile(y.astype(np.float64), 3)[:66150], -1.0, 1.0)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)
    for t in (0, 1, 81, 185):
        frame = np.abs(np.fft.rfft(window * x[353 * t:353 * t + 512]))
        loud = frame > 1e-2  # float32 log-magnitudes, compared where rounding cannot dominate
        np.testing.assert_allclose(out[loud, t], np.log(frame[loud] + 1e-7), rtol=0, atol=1e-3)


def test_fractional_seconds_round_to_the_nearest_sample_and_a_crop_may_span_the_cache():
    assert 2.01 * 16000 < 32160 and get_pipeline("pmr_spec10s").replace({"seconds": 2.01}).num_samples == 32160
    vgg = get_pipeline("vgg_stft10s")
    assert vgg.replace({"serve_frames": 1251}).served_shape() == (129, 1251)
    with pytest.raises(ValueError, match="serve_frames 1252 exceeds the cached 1251 frames"):
        vgg.replace({"serve_frames": 1252})


def test_decoded_audio_is_float32_like_librosa_load_and_torchaudio_load(tmp_path):
    import soundfile as sf

    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([tone(0.5), tone(0.5)[::-1]], axis=1), 16000, subtype="PCM_16")
    channels, _ = load_channels(path)
    mono, _ = load_waveform(path)
    assert channels.dtype == mono.dtype == np.float32 and channels.shape == (2, 8000)


def test_fbank_overrides_reach_torchaudio_after_resampling(monkeypatch):
    seen = {}

    def fbank(wave, **kwargs):
        seen.update(kwargs, samples=wave.shape[-1], dtype=wave.dtype)
        return torch.zeros((300, kwargs["num_mel_bins"]))

    fake_torchaudio(monkeypatch, fbank)
    pipeline = get_pipeline("kaldi_fbank1024").replace({"sample_rate": 16000, "num_mel_bins": 64,
                                                         "frame_shift_ms": 20.0})
    out = compute_features(pipeline, tone(1.0, 44100), 44100)
    assert out.shape == pipeline.output_shape() == (1024, 64)
    assert seen["sample_frequency"] == 16000 and seen["samples"] == 16000, "fbank reads the resampled audio"
    assert seen["num_mel_bins"] == 64 and seen["frame_shift"] == 20.0
    assert seen["dtype"] == torch.float32, "torchaudio.load's dtype: the mean is subtracted in float32"


def test_fbank_of_an_event_segment_keeps_its_seconds_of_every_channel(monkeypatch):
    seen = {}

    def fbank(wave, **kwargs):
        seen["wave"] = wave.clone()
        return torch.zeros((300, kwargs["num_mel_bins"]))

    fake_torchaudio(monkeypatch, fbank)
    channels = np.stack([stepped_tone(4.0, 8000), 0.5 * stepped_tone(4.0, 8000) + 0.1])
    compute_features(get_pipeline("kaldi_fbank1024"), channels, 8000, (1, 3))
    segment = channels[:, 8000:24000]
    np.testing.assert_allclose(seen["wave"].numpy(), segment - segment.mean(), atol=1e-6)


def published_kept_frames(n: int, fps: float, per_second: int) -> list[int]:
    """GitHub: GeWu-Lab/OGM-GE_CVPR2022, data/CREMAD/video_preprocessing.py, video2frame_update, written out."""
    fps = int(fps)
    frame_interval = int(fps / per_second)
    kept, frame_id = [], 0
    for count in range(n):
        if count % fps == 0:
            frame_id = 0
        if frame_id < frame_interval * per_second and frame_id % frame_interval == 0:
            kept.append(count)
        frame_id += 1
    return kept


def write_counting_video(path, rate, n: int) -> np.ndarray:
    """An MPEG-4 video of ``n`` frames at ``rate``, frame i of colour (3 * (i % 85), 60 * (i // 85), 0), distinct up to
    340 frames; returns its decoded frames."""
    import av

    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=rate)
        stream.height, stream.width, stream.pix_fmt = 16, 16, "yuv420p"
        for i in range(n):
            colour = np.array([3 * (i % 85), 60 * (i // 85), 0], np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.broadcast_to(colour, (16, 16, 3)).copy(),
                                                                   format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(container.streams.video[0])])


@pytest.mark.parametrize("rate, per_second", [("30000/1001", 1), (11, 2), (10, 3), (25, 2)])
def test_extracted_frames_are_the_published_ones_for_any_rate(tmp_path, rate, per_second):
    # 29.97 fps counts seconds of int(29.97) = 29 frames; when fps is not a multiple of per_second the frames past
    # int(fps / per_second) * per_second in a second are not kept.
    from fractions import Fraction

    rate = Fraction(rate)
    path = tmp_path / "clip.mp4"
    decoded = write_counting_video(path, rate, 70)
    frames, info = extract_frames(path, None, per_second=per_second)
    assert info["fps"] == int(rate) and info["decoded"] == 70
    np.testing.assert_array_equal(frames, decoded[published_kept_frames(70, rate, per_second)])


def test_stored_frames_are_resized_with_pil_bilinear(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    folder = tmp_path / "clip"
    folder.mkdir()
    Image.fromarray(image).save(folder / "00000.png")
    Image.fromarray(image[::-1]).save(folder / "00030.PNG")
    frames, info = load_frame_folder(folder, (24, 32))
    assert info == {"source_size": (60, 80)} and len(frames) == 2, "image suffixes are matched in any case"
    reference = np.asarray(Image.fromarray(image).resize((32, 24), Image.BILINEAR))
    np.testing.assert_array_equal(frames[0], reference)


def published_wav_fixed(wav: np.ndarray, seconds: int, sr: int) -> np.ndarray:
    """GitHub: GeWu-Lab/AV_preprocess_tool, audio_2_frames.py, wav_fixed, written out: append wav[start:end], the last
    partial second (the last second when there is none), while the length is at most seconds * sr; cut."""
    target = seconds * sr
    end = len(wav)
    start = end - len(wav) % sr
    if start == end:
        start = end - sr
    out = wav
    while len(out) <= target:
        out = np.concatenate([out, wav[start:end]])
    return out[:target]


@pytest.mark.parametrize("length, sr, n", [(23, 10, 100), (20, 10, 100), (4, 10, 100), (130, 10, 100),
                                           (100, 10, 100), (95, 10, 100), (91, 10, 100)])
def test_repeat_last_second_equals_wav_fixed(length, sr, n):
    # 2.3 s: the last 0.3 s repeated; 2.0 s: the last whole second; 0.4 s: the whole clip; 13 s: the first 10 s;
    # exactly 10 s and 9.5 s (one 0.5 s append reaches 10 s exactly; the published loop appends once more, then cuts).
    y = np.arange(1, length + 1, dtype=np.float32)
    out = repeat_last_second(y, n, sr)
    np.testing.assert_array_equal(out, published_wav_fixed(y, n // sr, sr))
    assert len(out) == n


def test_repeat_last_second_repeats_only_the_tail():
    y = np.arange(23, dtype=np.float32)  # 2.3 s at 10 Hz: the partial second is samples 20, 21, 22
    out = repeat_last_second(y, 40, 10)
    np.testing.assert_array_equal(out[:23], y)
    np.testing.assert_array_equal(out[23:], np.tile([20.0, 21.0, 22.0], 6)[:17])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("seconds, sr", [(2.3, 44100), (10.6, 44100), (3.0, 44100), (1.7, 22050)])
def test_bml_pipeline_equals_av_preprocess_tool_written_out(tmp_path, seconds, sr):
    # audio_2_frames.py audio_extract: librosa.load(sr=44100), wav_fixed(wav, 10, sr), abs(stft(wav, 512,
    # hop_length=440, window='hann', center=True, pad_mode='reflect')): no clip to [-1, 1], no log.
    import librosa

    path = tmp_path / "clip.wav"
    write_wav(path, seconds, sr=sr, freq=523.0)
    wav, rate = librosa.load(str(path), sr=44100)
    reference = np.abs(librosa.stft(published_wav_fixed(wav, 10, rate), n_fft=512, hop_length=440, window="hann",
                                    center=True, pad_mode="reflect"))
    features, duration, short = features_from_file(get_pipeline("bml_stft10s_44k"), path)
    assert features.shape == reference.shape == (257, 1003) and features.dtype == np.float32
    assert duration == pytest.approx(seconds) and not short
    # float32 magnitudes up to about 150 (a 0.3-amplitude tone under a 512-point Hann window)
    np.testing.assert_allclose(features, reference, rtol=0, atol=1e-3)
    assert features.min() >= 0, "magnitudes, not log-magnitudes"


def test_bml_pipeline_frames_equal_a_numpy_dft_of_the_repeated_clip():
    # Independent of librosa's STFT: frame t is |rfft(hann(512) * x[440 t - 256 : 440 t + 256])| of the clip reflected
    # at both ends; the periodic Hann window is librosa's 'hann' (scipy.signal.get_window, fftbins=True).
    sr = 44100
    y = loud_tone(2.3, sr)
    out = compute_features(get_pipeline("bml_stft10s_44k"), y, sr)
    x = np.pad(repeat_last_second(y, 10 * sr, sr).astype(np.float64), 256, mode="reflect")
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(512) / 512)
    for t in (0, 1, 500, 522, 1002):  # both padded edges, the first repeat (2.3 s = frame 230), the end
        frame = np.abs(np.fft.rfft(window * x[440 * t:440 * t + 512]))
        np.testing.assert_allclose(out[:, t], frame, rtol=1e-4, atol=1e-3)
    # A 1.5-amplitude 330 Hz tone peaks at about 1.5 * sum(window) / 2 = 192; clipped to [-1, 1] it would stay under
    # 150. BML's tool does not clip.
    assert np.abs(y).max() > 1.2 and out.max() > 180, "the [-1, 1] clip is not applied"


def test_the_repeat_rule_is_a_checked_parameter_that_keeps_existing_cache_names():
    ogm, bml = get_pipeline("ogm_stft3s"), get_pipeline("bml_stft10s_44k")
    # The cache hash reads params(): a 'tile' pipeline records no 'repeat', as before the parameter existed.
    assert "repeat" not in ogm.params() and ogm.applied()["repeat"] == "tile"
    assert bml.params()["repeat"] == "last_second" and not bml.log and not bml.clip
    assert ogm.replace({"repeat": "last_second"}).params()["repeat"] == "last_second"
    with pytest.raises(ValueError, match="repeat 'cycle' is not one of"):
        ogm.replace({"repeat": "cycle"})
    with pytest.raises(ValueError, match=r"\(kaldi_fbank\) does not read 'repeat'"):
        get_pipeline("kaldi_fbank1024").replace({"repeat": "last_second"})


@pytest.mark.parametrize("fps, total, expected", [
    (30, 300, [14, 44, 74, 104, 134, 164, 194, 224, 254, 284]),
    # 25 fps: positions 12.5, 37.5... round half to even -> 12, 38, 62, 88 (1-based)
    (25, 100, [11, 37, 61, 87]),
    (30000 / 1001, 300, [14, 44, 74, 104, 134, 164, 194, 224, 254, 284]),
    (30, 14, []),  # under half a second: round(14 / 30) = 0 seconds
    (30, 15, []),  # exactly half a second: round(0.5) = 0 too (ties to even)
    (30, 16, [14]),
    (30, 75, [14, 44]),  # 2.5 s: round(2.5) = 2 seconds (ties to even)
    (30, 76, [14, 44, 74]),
    (24000 / 1001, 48, [11, 35]),
])
def test_mid_second_indices_are_av_preprocess_tools(fps, total, expected):
    assert mid_second_indices(total, fps) == expected


@pytest.mark.parametrize("rate, n", [("25", 100), ("30000/1001", 95), ("30", 76), ("10", 25)])
def test_hdf5_mid_extraction_keeps_the_middle_frame_of_each_second(tmp_path, rate, n):
    from fractions import Fraction

    path = tmp_path / "clip.mp4"
    decoded = write_counting_video(path, Fraction(rate), n)
    frames, info = extract_frames(path, None, extraction="frames_hdf5_mid")
    wanted = mid_second_indices(n, float(Fraction(rate)))
    assert info == {"fps": float(Fraction(rate)), "decoded": n, "source_size": (16, 16)}
    np.testing.assert_array_equal(frames, decoded[wanted])
    assert len(frames) == round(n / float(Fraction(rate)))


def test_hdf5_mid_extraction_refuses_what_it_cannot_reproduce(tmp_path):
    path = tmp_path / "slow.mp4"
    write_counting_video(path, 1, 5)
    with pytest.raises(MediaError, match=r"slow.mp4: frames_hdf5_mid .* 2-100 fps only, not 1") as err:
        extract_frames(path, None, extraction="frames_hdf5_mid")
    assert err.value.kind == "unsupported video"
    with pytest.raises(ValueError, match="one frame of every second of the whole clip; got per_second 2"):
        extract_frames(path, None, per_second=2, extraction="frames_hdf5_mid")
    with pytest.raises(ValueError, match=r"whole clip; got per_second 1, seconds \(2, 4\)"):
        extract_frames(path, None, extraction="frames_hdf5_mid", seconds=(2, 4))
    with pytest.raises(KeyError, match="unknown frame extraction 'frames_random'"):
        extract_frames(path, None, extraction="frames_random")
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    with pytest.raises(MediaError, match="bad.mp4: cannot decode video") as err:
        extract_frames(bad, None, extraction="frames_hdf5_mid")
    assert err.value.kind == "corrupt video"


@pytest.mark.parametrize("rate, n, kept", [(2, 5, [0, 2]), (100, 120, [49])])
def test_hdf5_mid_extraction_accepts_both_ends_of_its_rates(tmp_path, rate, n, kept):
    # MID_RATES is inclusive: 2 fps keeps 1-based positions 1 and 3 of round(2.5) = 2 seconds, 100 fps position 50.
    path = tmp_path / "clip.mp4"
    decoded = write_counting_video(path, rate, n)
    frames, info = extract_frames(path, None, extraction="frames_hdf5_mid")
    assert info["fps"] == rate
    np.testing.assert_array_equal(frames, decoded[kept])


def test_hdf5_mid_extraction_refuses_a_rate_just_above_100(tmp_path):
    path = tmp_path / "fast.mp4"
    write_counting_video(path, 101, 3)
    with pytest.raises(MediaError, match="not 101") as err:
        extract_frames(path, None, extraction="frames_hdf5_mid")
    assert err.value.kind == "unsupported video"


@pytest.mark.parametrize("total, kept, expected", [
    (45, [0, 30], [22]),  # 1.5 s at 30 fps: the middle (22nd) of the 43 frames not kept, 1-29 and 31-44
    (40, [0], [10, 30]),  # the middles of two equal runs of the 39 free frames (1-19 -> 10, 20-39 -> 30)
    (2, [0], [0, 0]),  # a 2-frame video: frame 0 twice, as PMR saves frame 0 under the missing names
    (3, [0], [1, 2]),  # exactly 3 frames: drawn from the video (PMR repeats frame 0 only when video_frames < 3)
    (90, [0, 30, 60], []),
])
def test_top_up_indices_are_evenly_spaced_over_the_free_frames(total, kept, expected):
    assert top_up_indices(total, kept, 3) == expected


@pytest.mark.parametrize("total, kept, span, expected", [
    # a 1 s AVE event [2, 3] at 25 fps keeps frames 50 and 75; 8 more from second 2's 24 free frames, 51-74
    (250, [50, 75], range(50, 75), [52, 55, 58, 61, 64, 67, 70, 73]),
    (45, [40], range(40, 45), [41, 42, 43, 44]),  # fewer free frames than missing: all of them, none twice
    (30, [0], range(0, 1), []),  # nothing free in the segment
    (8, [2], range(2, 4), [0] * 9),  # a video of fewer than 10 frames: frame 0 of the video, as PMR saves it
    (10, [0, 5], range(0, 10), [1, 2, 3, 4, 6, 7, 8, 9]),  # exactly 10 frames: its own, not frame 0 repeated
])
def test_top_up_indices_within_a_segment(total, kept, span, expected):
    assert top_up_indices(total, kept, 10, span) == expected


def test_top_up_span_is_the_segments_seconds_start_to_end_excluded():
    # PMR video2frame_update_SE: randint(start_t * fps, end_t * fps)
    assert top_up_span(250, 25, (2, 3)) == range(50, 75)
    assert top_up_span(250, 25, (0, 10)) == range(0, 250)
    assert top_up_span(250, 25, (3, 3)) == range(75, 100), "Start == End: second Start, as its audio"
    assert top_up_span(240, 25, (9, 10)) == range(225, 240), "only the frames the video has"
    assert top_up_span(250, 25, None) is None


def test_pmr_ave_extraction_keeps_the_segments_seconds_and_tops_up_to_10_from_them(tmp_path):
    path = tmp_path / "clip.mp4"
    decoded = write_counting_video(path, 10, 45)
    # seconds 1..2 keep frames 10 and 20; 8 of the 9 free frames of [10, 20), evenly spaced, all but 15
    frames, info = extract_frames(path, None, extraction="frames_1fps_min10", seconds=(1, 2))
    np.testing.assert_array_equal(frames, decoded[[10, 11, 12, 13, 14, 16, 17, 18, 19, 20]])
    assert info == {"fps": 10, "decoded": 45, "source_size": (16, 16)}
    np.testing.assert_array_equal(extract_frames(path, None, seconds=(1, 2))[0], decoded[[10, 20]])
    # whole clip (video2frame_update(min_save_frame=10)): 0, 10, ..., 40 and 5 of the 40 others
    whole, _ = extract_frames(path, None, extraction="frames_1fps_min10")
    np.testing.assert_array_equal(whole, decoded[[0, 5, 10, 14, 20, 23, 30, 32, 40, 41]])
    # the segment cut is per second of int(fps) frames, the top-up never leaves the segment
    tail, _ = extract_frames(path, None, extraction="frames_1fps_min10", seconds=(4, 9))
    np.testing.assert_array_equal(tail, decoded[40:45])


def test_a_segment_past_the_videos_end_keeps_no_frame_and_is_not_topped_up(tmp_path):
    # 0.5 s at 10 fps, seconds 3..4: nothing kept, and nothing to top up with (min_frames drops the clip), even though
    # the video has fewer than 10 frames (frame 0 repeated applies only to a segment with a kept frame).
    path = tmp_path / "clip.mp4"
    write_counting_video(path, 10, 5)
    frames, info = extract_frames(path, None, extraction="frames_1fps_min10", seconds=(3, 4))
    assert len(frames) == 0 and info == {"fps": 10, "decoded": 5, "source_size": None}


@pytest.mark.parametrize("n, kept", [(13, [0, 6, 10]), (2, [0, 0, 0]), (25, [0, 10, 20]), (35, [0, 10, 20, 30])])
def test_pmr_extraction_tops_up_to_3_frames(tmp_path, n, kept):
    # 1.3 s at 10 fps keeps frames 0 and 10 at 1 fps; the free frames are 1-9, 11, 12, the middle one 6.
    path = tmp_path / "clip.mp4"
    decoded = write_counting_video(path, 10, n)
    frames, info = extract_frames(path, None, extraction="frames_1fps_min3")
    assert info == {"fps": 10, "decoded": n, "source_size": (16, 16)}
    np.testing.assert_array_equal(frames, decoded[kept])
    # Deterministic: the same frames on every extraction (PMR draws them with an unseeded np.random.randint).
    np.testing.assert_array_equal(extract_frames(path, None, extraction="frames_1fps_min3")[0], frames)


def test_audio_with_no_samples_is_a_media_error_naming_the_file(tmp_path):
    import soundfile as sf

    empty = tmp_path / "empty.wav"
    sf.write(str(empty), np.zeros((0, 2), np.float32), 16000)
    for load in (load_waveform, load_channels):
        with pytest.raises(MediaError, match="empty.wav.*0 samples") as err:
            load(empty)
        assert err.value.kind == "corrupt audio"


def test_pmr_z_score_divides_by_the_population_std_of_the_clip():
    # Few enough values (5 bins x 3 frames) that n - 1 in place of n would change every value by 3.5 %.
    from scipy import signal

    pipeline = get_pipeline("pmr_spec10s").replace({"seconds": 0.001, "n_fft": 8, "hop_length": 4})
    y = np.random.default_rng(0).uniform(-0.5, 0.5, 16).astype(np.float32)
    _, _, spec = signal.spectrogram(y, fs=16000, nperseg=8, noverlap=4)
    log = np.log(spec + 1e-7)
    expected = (log - log.mean()) / (np.sqrt(((log - log.mean()) ** 2).sum() / log.size) + 1e-9)
    out = compute_features(pipeline, y, 16000)
    assert out.shape == (5, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_an_lfs_pointer_among_the_frames_is_an_lfs_pointer_error_naming_it(tmp_path):
    folder = tmp_path / "clip"
    write_frame_folder(folder, 2, 60, "ogm", (16, 16))
    write_lfs_pointer(folder / "00060.jpg")
    with pytest.raises(MediaError, match="00060.jpg") as err:
        load_frame_folder(folder, None)
    assert err.value.kind == "lfs pointer"


def test_a_segment_keeps_the_frames_of_its_seconds_counted_in_whole_seconds_of_frames(tmp_path):
    # 10 fps, 2 frames a second (positions 0 and 5 of each second): seconds 2..3 are frames 20-39, so the kept frames
    # are 20, 25, 30 and 35; frame 15, at 1.5 s, belongs to second 1.
    path = tmp_path / "clip.mp4"
    decoded = write_counting_video(path, 10, 60)
    frames, info = extract_frames(path, None, per_second=2, seconds=(2, 3))
    assert info["decoded"] == 60
    np.testing.assert_array_equal(frames, decoded[[20, 25, 30, 35]])
