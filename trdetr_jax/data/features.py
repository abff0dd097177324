"""Loading pre-extracted features: file layouts, checks, L2 norm, TEF and the memory cache.

Layouts (``feature_root`` holds the folders named in the config):

* video ``'npz'``: ``<dir>/<vid>.npz['features']`` ``[T, D]`` (QVHighlights / Charades
  SlowFast, CLIP);
* video ``'npy'``: ``<dir>/<vid>.npy`` ``[T, D]`` (Charades I3D, VGG);
* video ``'rgb_opt'``: ``<dir>/<vid>_rgb.npy`` and ``<dir>/<vid>_opt.npy`` concatenated on
  the feature axis **before** one L2 norm (TVSum I3D);
* audio: ``<dir>/<vid>.npy`` ``[T, D]`` (PANN);
* text ``'qid_npz'``: ``<dir>/qid<qid>.npz['last_hidden_state']`` ``[N, D]``, truncated to
  ``max_q_l`` then normalised (CLIP; also GloVe vectors stored the same way);
* text ``'tvsum_npz'``: ``<dir>/<qid>.npz['token']`` ``[N, D]``, used as stored.

Every source is cut to ``max_v_l`` rows and L2-normalised on its own, ``x / (|x| + 1e-5)``;
the sources are then cut to the shortest and concatenated in config order, and the TEF
``[t / T, (t + 1) / T]`` is appended last (official ``start_end_dataset.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import zipfile

import numpy as np

from trdetr_jax.data.errors import DataError

VIDEO_FORMATS = ("npz", "npy", "rgb_opt")
TEXT_FORMATS = ("qid_npz", "tvsum_npz")


def l2_normalize(x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Row-wise ``x / (||x|| + eps)`` in the array's dtype. ``x: [T, D]``."""
    return x / (np.linalg.norm(x, axis=-1, keepdims=True) + eps)


def temporal_endpoint_feature(ctx_l: int) -> np.ndarray:
    """TEF ``[ctx_l, 2]`` float32: ``[t / ctx_l, (t + 1) / ctx_l]`` (float32 maths as official)."""
    start = np.arange(ctx_l, dtype=np.float32) / np.float32(ctx_l)
    end = start + np.float32(1.0 / ctx_l)
    return np.stack([start, end], axis=1)


def _read_array(path: str, key: str | None, what: str) -> np.ndarray:
    """One array from ``.npy`` / ``.npz[key]``, float32, 2-d, finite; errors name the file."""
    if not os.path.isfile(path):
        raise DataError(f"{what}: feature file not found, tried {path}")
    try:
        if key is None:
            arr = np.load(path)
        else:
            with np.load(path) as z:
                if key not in z.files:
                    raise DataError(f"{what}: {path} has no array {key!r} (has {z.files})")
                arr = z[key]
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{what}: cannot read {path}: {e}") from None
    return check_array(arr, what, path)


def check_array(arr, what: str, where: str) -> np.ndarray:
    """``arr`` as float32 ``[length, dim]`` (a leading batch axis of 1 dropped), finite and
    non-empty; DataError naming ``what`` and ``where`` (a file, or an argument) otherwise."""
    try:
        arr = np.asarray(arr)
    except ValueError as e:  # ragged nested lists
        raise DataError(f"{what}: {where} is not a rectangular array ({e})") from None
    # Not bool, complex, strings or objects; ml_dtypes' bfloat16 / float8 are kind "V".
    if arr.dtype.kind not in "fiu" and "float" not in arr.dtype.name:
        raise DataError(
            f"{what}: {where} holds {arr.dtype} values, expected real numbers (a float or "
            "integer array)"
        )
    if arr.ndim == 3 and arr.shape[0] == 1:  # some extractors kept a batch axis
        arr = arr[0]
    if arr.ndim != 2:
        raise DataError(f"{what}: {where} holds shape {arr.shape}, expected [length, dim]")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise DataError(f"{what}: {where} contains NaN or Inf values")
    if arr.shape[0] == 0:
        raise DataError(f"{what}: {where} is empty (0 rows)")
    return arr


def video_inputs(
    sources: list[np.ndarray], audio: np.ndarray | None, *, normalize: bool, use_tef: bool
) -> tuple[np.ndarray, np.ndarray | None]:
    """Checked per-source arrays -> the model's ``(video [T, Dv(+2)], audio [T, Da(+2)])``.

    Each source (and the audio) is L2-normalised on its own (``normalize``), all are cut to
    the shortest and the video sources concatenated in order; the TEF is appended last
    (``use_tef``). The loader and :class:`trdetr_jax.Predictor` both call this.
    """
    if normalize:
        sources = [l2_normalize(s) for s in sources]
        audio = None if audio is None else l2_normalize(audio)
    ctx_l = min(len(s) for s in sources)  # some sources are a row longer than others
    if audio is not None:
        ctx_l = min(ctx_l, len(audio))
        audio = audio[:ctx_l]
    video = np.concatenate([s[:ctx_l] for s in sources], axis=1)  # [T, sum(dims)]
    if use_tef:
        tef = temporal_endpoint_feature(ctx_l)
        video = np.concatenate([video, tef], axis=1)  # [T, Dv + 2]
        if audio is not None:
            audio = np.concatenate([audio, tef], axis=1)  # [T, Da + 2]
    return video, audio


def text_inputs(arr: np.ndarray, *, keep: int, normalize: bool) -> np.ndarray:
    """Checked query tokens -> the model's text input: the first ``keep`` rows, normalised."""
    arr = arr[:keep]
    if normalize:
        arr = l2_normalize(arr)
    return arr


def _check_dim(arr: np.ndarray | tuple[int, ...], expected: int, key: str, path: str) -> None:
    width = (arr if isinstance(arr, tuple) else arr.shape)[1]
    if width != expected:
        raise DataError(f"{path}: feature dimension {width} disagrees with {key} = {expected}")


def _npy_shape(f, stored_bytes: int, what: str, path: str) -> tuple[int, ...]:
    """Shape from an open ``.npy`` stream's header; checks the data is all there."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        shape, _, dtype = np.lib.format._read_array_header(f, version)
    need = f.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if dtype.hasobject or stored_bytes < need:
        raise DataError(
            f"{what}: {path} is damaged: its header promises {need} bytes of {dtype} "
            f"{tuple(shape)}, the file holds {stored_bytes}"
        )
    return tuple(int(n) for n in shape)


def array_shape(path: str, key: str | None, what: str) -> tuple[int, int]:
    """``[length, dim]`` of a ``.npy`` / ``.npz[key]`` from its header alone (no data read).

    Checks what :func:`_read_array` checks except the values (NaN/Inf): the file exists and
    parses, holds a 2-d array (a leading batch axis of 1 is dropped) with at least one row,
    and is not truncated. Errors name the file.
    """
    if not os.path.isfile(path):
        raise DataError(f"{what}: feature file not found, tried {path}")
    try:
        if key is None:
            with open(path, "rb") as f:
                shape = _npy_shape(f, os.path.getsize(path), what, path)
        else:
            with zipfile.ZipFile(path) as z:
                files = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
                if key not in files:
                    raise DataError(f"{what}: {path} has no array {key!r} (has {files})")
                info = z.getinfo(key + ".npy")
                with z.open(info) as f:
                    shape = _npy_shape(f, info.file_size, what, path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{what}: cannot read {path}: {e}") from None
    if len(shape) == 3 and shape[0] == 1:  # some extractors kept a batch axis
        shape = shape[1:]
    if len(shape) != 2:
        raise DataError(f"{what}: {path} holds shape {shape}, expected [length, dim]")
    if shape[0] == 0:
        raise DataError(f"{what}: {path} is empty (0 rows)")
    return shape


class FeatureStore:
    """Reads, checks and normalises features; optionally keeps the results in memory.

    Args mirror ``config.data``. ``preload``: keep every processed array in memory after its
    first read (so only the first epoch touches the disk). ``on_long_video``:
    'truncate' (cut to ``max_v_l``, one warning per store) or 'error'.
    """

    def __init__(
        self,
        *,
        feature_root: str | None,
        v_feat_dirs,
        v_feat_dims,
        v_feat_format: str,
        t_feat_dir: str,
        t_feat_dim: int,
        t_feat_format: str,
        a_feat_dir: str | None,
        a_feat_dim: int | None,
        max_v_l: int,
        max_q_l: int,
        truncate_text: bool,
        normalize_video: bool,
        normalize_text: bool,
        use_tef: bool,
        on_long_video: str,
        preload: bool,
    ):
        if not feature_root:
            raise DataError(
                "config.data.feature_root is not set: pass --config.data.feature_root=DIR, the "
                f"folder that holds {', '.join(list(v_feat_dirs) + [t_feat_dir])}"
            )
        if not os.path.isdir(feature_root):
            raise DataError(f"config.data.feature_root = {feature_root} is not a directory")
        if v_feat_format not in VIDEO_FORMATS:
            raise DataError(f"config.data.v_feat_format must be one of {VIDEO_FORMATS}")
        if t_feat_format not in TEXT_FORMATS:
            raise DataError(f"config.data.t_feat_format must be one of {TEXT_FORMATS}")
        if len(v_feat_dirs) != len(v_feat_dims):
            raise DataError(
                f"config.data.v_feat_dirs has {len(v_feat_dirs)} entries but "
                f"config.data.v_feat_dims has {len(v_feat_dims)}"
            )
        if on_long_video not in ("truncate", "error"):
            raise DataError("config.data.on_long_video must be 'truncate' or 'error'")
        if a_feat_dir is not None and a_feat_dim is None:
            raise DataError("config.data.a_feat_dir is set but config.data.a_feat_dim is not")
        self.root = feature_root
        self.v_feat_dirs = tuple(v_feat_dirs)
        self.v_feat_dims = tuple(int(d) for d in v_feat_dims)
        self.v_feat_format = v_feat_format
        self.t_feat_dir, self.t_feat_dim, self.t_feat_format = t_feat_dir, t_feat_dim, t_feat_format
        self.a_feat_dir, self.a_feat_dim = a_feat_dir, a_feat_dim
        self.max_v_l, self.max_q_l = max_v_l, max_q_l
        self.truncate_text = truncate_text
        self.normalize_video, self.normalize_text = normalize_video, normalize_text
        self.use_tef = use_tef
        self.on_long_video = on_long_video
        self.preload = preload
        self._cache: dict = {}
        self._lock = threading.Lock()
        self._warned_long = False
        self._lengths: dict = {}  # header-only lengths, see lengths()

    # ------------------------------------------------------------------ public
    def video(self, vid: str) -> tuple[np.ndarray, np.ndarray | None]:
        """``(video [T, Dv(+2)], audio [T, Da(+2)] or None)``, both cut to a common ``T``."""
        return self._cached(("v", vid), lambda: self._load_video(vid))

    def text(self, qid) -> np.ndarray:
        """Query token features ``[N, Dt]``, ``1 <= N <= max_q_l``."""
        return self._cached(("t", qid), lambda: self._load_text(qid))

    def lengths(self, vid: str, qid) -> tuple[int, int]:
        """``(clips, tokens)`` example ``(vid, qid)`` will have once loaded, from the files'
        headers alone (no feature data is read): every source cut to ``max_v_l`` and to the
        shortest, the text cut to ``max_q_l``. Raises the :class:`DataError` loading would
        raise for a missing, unreadable, truncated, mis-shaped or too-long file (not for
        NaN/Inf values, which only loading can see)."""
        key = ("len", vid, qid)
        hit = self._lengths.get(key)
        if hit is None:
            hit = self._lengths[key] = (self._video_length(vid), self._text_length(qid))
        return hit

    def disable_cache(self) -> None:
        """Stop caching and free what is cached (the features do not fit in memory)."""
        with self._lock:
            self.preload = False
            self._cache.clear()

    # ----------------------------------------------------------------- private
    def _cached(self, key, load):
        if not self.preload:
            return load()
        with self._lock:
            hit = self._cache.get(key)
        if hit is None:
            hit = load()
            with self._lock:
                self._cache[key] = hit
        return hit

    def _path(self, folder: str, name: str) -> str:
        return os.path.join(self.root, folder, name)

    def _cut_long(self, arr: np.ndarray, vid: str, path: str) -> np.ndarray:
        if arr.shape[0] <= self.max_v_l:
            return arr
        if self.on_long_video == "error":
            raise DataError(
                f"video {vid}: {path} has {arr.shape[0]} clips > config.data.max_v_l = "
                f"{self.max_v_l} (set --config.data.on_long_video=truncate to cut it)"
            )
        if not self._warned_long:
            self._warned_long = True
            logging.warning(
                "video %s: %s has %d clips > config.data.max_v_l = %d; cutting to max_v_l "
                "as the official code does (this warning is shown once)",
                vid, path, arr.shape[0], self.max_v_l,
            )  # fmt: skip
        return arr[: self.max_v_l]

    def _long_length(self, rows: int, vid: str, path: str) -> int:
        if rows > self.max_v_l and self.on_long_video == "error":
            self._cut_long(np.empty((rows, 0)), vid, path)  # raises the loader's error
        return min(rows, self.max_v_l)

    def _video_length(self, vid: str) -> int:
        what = f"video {vid}"
        rows = []
        for folder, dim in zip(self.v_feat_dirs, self.v_feat_dims):
            key = f"config.data.v_feat_dims ({folder})"
            if self.v_feat_format == "rgb_opt":
                rgb_path = self._path(folder, f"{vid}_rgb.npy")
                opt_path = self._path(folder, f"{vid}_opt.npy")
                rgb = array_shape(rgb_path, None, what)
                opt = array_shape(opt_path, None, what)
                _check_dim((0, rgb[1] + opt[1]), dim, key, f"{rgb_path} + {opt_path}")
                n = min(
                    self._long_length(rgb[0], vid, rgb_path),
                    self._long_length(opt[0], vid, opt_path),
                )
            else:
                ext, npz_key = (
                    (".npz", "features") if self.v_feat_format == "npz" else (".npy", None)
                )
                path = self._path(folder, vid + ext)
                shape = array_shape(path, npz_key, what)
                _check_dim(shape, dim, key, path)
                n = self._long_length(shape[0], vid, path)
            rows.append(n)
        if self.a_feat_dir is not None:
            path = self._path(self.a_feat_dir, f"{vid}.npy")
            shape = array_shape(path, None, f"audio {vid}")
            _check_dim(shape, self.a_feat_dim, "config.data.a_feat_dim", path)
            rows.append(self._long_length(shape[0], vid, path))
        return min(rows)

    def _text_path(self, qid) -> tuple[str, str]:
        if self.t_feat_format == "qid_npz":
            return self._path(self.t_feat_dir, f"qid{qid}.npz"), "last_hidden_state"
        return self._path(self.t_feat_dir, f"{qid}.npz"), "token"

    def _check_text_length(self, n: int, qid, path: str) -> int:
        if n > self.max_q_l and not self.truncate_text:
            raise DataError(
                f"query {qid}: {path} has {n} tokens > config.data.max_q_l = "
                f"{self.max_q_l}; this dataset's text is not truncated (as in the official "
                "code), so raise --config.data.max_q_l"
            )
        return min(n, self.max_q_l)

    def _text_length(self, qid) -> int:
        path, key = self._text_path(qid)
        shape = array_shape(path, key, f"query {qid}")
        _check_dim(shape, self.t_feat_dim, "config.data.t_feat_dim", path)
        return self._check_text_length(shape[0], qid, path)

    def _load_video(self, vid: str):
        what = f"video {vid}"
        sources = []
        for folder, dim in zip(self.v_feat_dirs, self.v_feat_dims):
            key = f"config.data.v_feat_dims ({folder})"
            if self.v_feat_format == "rgb_opt":
                rgb_path = self._path(folder, f"{vid}_rgb.npy")
                opt_path = self._path(folder, f"{vid}_opt.npy")
                rgb = self._cut_long(_read_array(rgb_path, None, what), vid, rgb_path)
                opt = self._cut_long(_read_array(opt_path, None, what), vid, opt_path)
                n = min(len(rgb), len(opt))
                arr = np.concatenate([rgb[:n], opt[:n]], axis=1)  # [T, D_rgb + D_opt]
                _check_dim(arr, dim, key, f"{rgb_path} + {opt_path}")
            else:
                ext, npz_key = (
                    (".npz", "features") if self.v_feat_format == "npz" else (".npy", None)
                )
                path = self._path(folder, vid + ext)
                arr = _read_array(path, npz_key, what)
                _check_dim(arr, dim, key, path)
                arr = self._cut_long(arr, vid, path)
            sources.append(arr)
        audio = None
        if self.a_feat_dir is not None:
            path = self._path(self.a_feat_dir, f"{vid}.npy")
            audio = _read_array(path, None, f"audio {vid}")
            _check_dim(audio, self.a_feat_dim, "config.data.a_feat_dim", path)
            audio = self._cut_long(audio, vid, path)
        return video_inputs(sources, audio, normalize=self.normalize_video, use_tef=self.use_tef)

    def _load_text(self, qid) -> np.ndarray:
        path, key = self._text_path(qid)
        arr = _read_array(path, key, f"query {qid}")
        _check_dim(arr, self.t_feat_dim, "config.data.t_feat_dim", path)
        return text_inputs(
            arr, keep=self._check_text_length(len(arr), qid, path), normalize=self.normalize_text
        )


def input_dims(data_config) -> tuple[int, int, int | None]:
    """Model input widths ``(video, text, audio or None)`` implied by ``config.data``.

    Video is the sum of ``v_feat_dims`` plus 2 for the TEF; audio is ``a_feat_dim`` plus 2.
    """
    tef = 2 if data_config.use_tef else 0
    v = int(sum(data_config.v_feat_dims)) + tef
    a = None if data_config.a_feat_dir is None else int(data_config.a_feat_dim) + tef
    return v, int(data_config.t_feat_dim), a


def estimated_bytes(store: FeatureStore, vids, qids, sample: int = 8) -> int:
    """Rough memory the processed features of ``vids`` / ``qids`` need (from a few files)."""
    vids, qids = list(vids), list(qids)
    if not vids:
        return 0
    probe_v = vids[:: max(1, len(vids) // sample)][:sample]
    probe_q = qids[:: max(1, len(qids) // sample)][:sample]
    v_bytes = np.mean([sum(a.nbytes for a in store.video(v) if a is not None) for v in probe_v])
    t_bytes = np.mean([store.text(q).nbytes for q in probe_q]) if probe_q else 0.0
    return int(v_bytes * len(vids) + t_bytes * len(qids))


def available_memory_bytes() -> int | None:
    """Memory the OS reports available, or None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
