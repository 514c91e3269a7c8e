"""eSpeak NG speech synthesis through ``ctypes``, for the AV-Digits generator (docs/datasets/av_digits.md#sources).

The library and its voice data come from the pip package ``espeakng-loader`` (the ``[demo]`` extra), so no system
package or root access is needed. The call sequence, measured with espeakng-loader 0.2.4:
``espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data_path, espeakINITIALIZE_DONT_EXIT)`` returns the sample rate
(22,050 Hz), a synth callback collects int16 chunks, ``espeak_SetVoiceByName(b"<voice>+<variant>")`` selects the
voice, ``espeak_SetParameter`` sets rate and pitch, and ``espeak_Synth`` runs one utterance, calling the callback
before it returns. The asynchronous ``AUDIO_OUTPUT_RETRIEVAL`` mode gives byte-identical clips (a whole AV-Digits
tree compared), but its ``espeak_Synchronize`` waits in 20 ms polls: about 20 ms a word against under 1 ms of
synthesis.

Determinism. Measured with espeakng-loader 0.2.4: the same text, voice, rate and pitch give different samples
(from about 0.1 s into the word) depending on what the library synthesised earlier in the process, even after
``espeak_ng_SetRandSeed`` and even after ``espeak_Terminate`` + ``espeak_Initialize``. eSpeak NG's ``wavegen.c`` keeps
synthesis state in C statics that no API call resets (the pitch-flutter table index, the echo buffer, the automatic
gain control). What is reproducible, also across processes, is a *sequence* of calls made on a freshly loaded
library. ``Espeak`` therefore
refuses to start in a process that inherited an already loaded library (a fork of a process that used it), and the
generator synthesises each fixed shard of clips in a fresh worker process.

The library is GPL-3.0-or-later [R]; only the audio it generates is used by AUG-Bench.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import InputError

# English voices valid in espeakng-loader 0.2.4 (measured: espeak_SetVoiceByName returns 0 for each; "en-gb"
# returns 2, the British voice is "en").
ENGLISH_VOICES = ("en", "en-us", "en-029", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan", "en-gb-x-gbcwmd",
                  "en-us-nyc")

_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: synthesise into the callback within espeak_Synth, no sound device
# espeak_Initialize option: without it a missing or damaged data folder makes the library call C exit(1), killing the
# process (a generator worker included) with no Python exception; with it the call returns a sample rate <= 0.
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1  # espeak_Synth flags
_PARAM_RATE = 1  # espeak_PARAMETER espeakRATE, words per minute
_PARAM_PITCH = 3  # espeak_PARAMETER espeakPITCH, 0..99
_RATE_LIMITS = (80, 450)  # eSpeak NG clamps outside these; we reject instead of silently clamping
_PITCH_LIMITS = (0, 99)
_DEMO_HINT = 'install the demo extra: pip install "augbench[demo]" (or pip install -e ".[demo]" in a checkout)'

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)

# Which process loaded the shared library; a forked child sees the parent's pid here and must not reuse its state.
_loaded_in_pid: int | None = None


class UnknownVoiceError(ValueError):
    """A voice or variant name that eSpeak NG does not know."""


class EspeakError(InputError, RuntimeError):
    """eSpeak NG failed, or was used in a way that breaks reproducibility.

    An ``InputError`` because the message names the cause and the remedy (usually a broken espeakng-loader
    install), so ``augbench`` prints it as one line.
    """


def require_espeakng_loader() -> Any:
    """Import ``espeakng_loader`` or fail with an error that names the ``[demo]`` extra."""
    try:
        import espeakng_loader
    except ImportError as err:
        raise ImportError(f"AV-Digits speech needs the 'espeakng-loader' package, which is missing; {_DEMO_HINT}") \
            from err
    return espeakng_loader


def variant_names(data_path: str | Path | None = None) -> tuple[str, ...]:
    """The voice variants shipped with the library: the file names in ``espeak-ng-data/voices/!v``."""
    if data_path is None:
        data_path = require_espeakng_loader().get_data_path()
    folder = Path(data_path) / "voices" / "!v"
    if not folder.is_dir():
        raise EspeakError(f"eSpeak NG variant folder {folder} is missing; reinstall espeakng-loader")
    return tuple(sorted(p.name for p in folder.iterdir() if p.is_file()))


class Espeak:
    """One initialised eSpeak NG library for this process.

    Args:
        seed: seed for eSpeak's internal noise generator (``espeak_ng_SetRandSeed``), so fricatives and breathy
            variants are reproducible.

    Raises:
        EspeakError: if this process already loaded the library (a second instance, or a fork of a process that
            used it); the library's global state would make the output depend on that history. Also if the library
            cannot load its voice data (a damaged espeakng-loader install).
    """

    def __init__(self, seed: int = 0) -> None:
        global _loaded_in_pid
        if _loaded_in_pid is not None:
            where = "this process" if _loaded_in_pid == os.getpid() else f"parent process {_loaded_in_pid}"
            raise EspeakError(f"eSpeak NG was already loaded by {where}; its synthesis state is global and not "
                              "resettable, so reproducible output needs one fresh process per Espeak instance")
        loader = require_espeakng_loader()
        self.data_path = loader.get_data_path()
        lib = ctypes.CDLL(loader.get_library_path())
        _loaded_in_pid = os.getpid()
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        lib.espeak_ng_SetRandSeed.restype = None
        self._lib = lib
        self.sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, self.data_path.encode(),
                                                 _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise EspeakError(f"eSpeak NG could not load its voice data from {self.data_path} (espeak_Initialize "
                              f"returned {self.sample_rate}); reinstall espeakng-loader")
        self._chunks: list[np.ndarray] = []
        # The C library calls back into this object for the library's lifetime, so the wrapper must stay referenced.
        self._callback = _SynthCallback(self._on_audio)
        lib.espeak_SetSynthCallback(self._callback)
        lib.espeak_ng_SetRandSeed(seed)
        self._variants = set(variant_names(self.data_path))
        self.voice: str | None = None

    def _on_audio(self, wav: Any, n: int, events: Any) -> int:
        if n > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
        return 0  # 0 = continue synthesis

    def set_voice(self, voice: str, variant: str | None = None) -> None:
        """Select ``voice`` (e.g. ``"en-us"``) with an optional variant (a file in ``voices/!v``, e.g. ``"f3"``).

        Raises:
            UnknownVoiceError: eSpeak rejects the voice (it would otherwise keep the previous one), or the variant
                file does not exist (eSpeak silently ignores unknown variants).
        """
        if variant is not None and variant not in self._variants:
            raise UnknownVoiceError(f"unknown eSpeak NG voice variant {variant!r}; valid variants: "
                                    f"{sorted(self._variants)}")
        name = voice if variant is None else f"{voice}+{variant}"
        code = self._lib.espeak_SetVoiceByName(name.encode())
        if code != 0:
            raise UnknownVoiceError(f"eSpeak NG rejected voice {voice!r} (espeak_SetVoiceByName({name!r}) returned "
                                    f"{code}); valid English voices: {list(ENGLISH_VOICES)}")
        self.voice = name

    def synthesize(self, text: str, rate: int, pitch: int) -> np.ndarray:
        """Speak ``text`` with the current voice at ``rate`` words per minute and ``pitch`` (0-99).

        Returns:
            int16 samples at ``self.sample_rate`` (22,050 Hz), including eSpeak's leading and trailing silence.
        """
        if self.voice is None:
            raise EspeakError("call set_voice before synthesize")
        if not _RATE_LIMITS[0] <= rate <= _RATE_LIMITS[1]:
            raise ValueError(f"speech rate {rate} wpm is outside eSpeak NG's range {_RATE_LIMITS}")
        if not _PITCH_LIMITS[0] <= pitch <= _PITCH_LIMITS[1]:
            raise ValueError(f"pitch {pitch} is outside eSpeak NG's range {_PITCH_LIMITS}")
        for param, value in ((_PARAM_RATE, rate), (_PARAM_PITCH, pitch)):
            code = self._lib.espeak_SetParameter(param, int(value), 0)
            if code != 0:
                raise EspeakError(f"espeak_SetParameter({param}, {value}) returned {code}")
        self._chunks = []
        data = text.encode()
        code = self._lib.espeak_Synth(data, len(data) + 1, 0, 0, 0, _CHARS_UTF8, None, None)
        if code != 0:
            raise EspeakError(f"espeak_Synth({text!r}) with voice {self.voice!r} returned {code}")
        return np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
