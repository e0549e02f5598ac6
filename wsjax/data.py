"""Datasets as uint8 arrays, the study's splits, and device placement.

Images are kept as uint8 NHWC everywhere until the compiled step converts them (see
``wsjax.augment``), so a whole CIFAR training set is 150 MB on the device.

Where data comes from (``load_dataset``), in order:
1. ``<data_dir>/<name>.npz`` with the layout of ``../shared/data/cifar10.npz``
   (``x_train`` uint8 (N, H, W, C), ``y_train`` int, ``x_test``, ``y_test``); this is also the
   cache that step 2 writes.
2. TensorFlow Datasets (``pip install 'wsjax[prepare]'``): downloaded and prepared once, then
   written to the cache of step 1, so later runs need neither TensorFlow nor the network.
3. For CIFAR-10/100 where TFDS cannot run (no TensorFlow, as on Colab's TPU runtimes): the
   official python archive from the dataset's page, checked against its published MD5, then
   written to the cache of step 1.
``data_dir`` is the argument, else ``$WSJAX_DATA_DIR``, else ``~/.cache/wsjax``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import shutil
import tarfile
import tempfile
import urllib.request
import zipfile
from pathlib import Path

import numpy as np

# Our name -> (TFDS name, number of classes).
DATASETS = {"cifar10": ("cifar10", 10), "cifar100": ("cifar100", 100), "svhn": ("svhn_cropped", 10)}

# The official python archives (https://www.cs.toronto.edu/~kriz/cifar.html): URL, MD5, the
# members holding the train and test batches, and the key of the labels in each batch.
ARCHIVES = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "c58f30108f718f92721af3b95e74349a",
                [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
                ["cifar-10-batches-py/test_batch"], b"labels"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
                 "eb9058c3a382ffc7106e4002c42a8d85", ["cifar-100-python/train"],
                 ["cifar-100-python/test"], b"fine_labels"),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A labelled image dataset in host memory: uint8 NHWC images and int32 labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if np.ndim(x) != 4:
                raise ValueError(f"dataset {self.name!r}: x_{split} must be images of shape "
                                 f"(N, H, W, C); got shape {np.shape(x)}")
            if np.ndim(y) != 1:
                raise ValueError(f"dataset {self.name!r}: y_{split} must be one label per "
                                 f"image, shape (N,); got shape {np.shape(y)} (flatten it with "
                                 f"y.reshape(-1))")
            if len(x) != len(y):
                raise ValueError(f"dataset {self.name!r}: x_{split} has {len(x)} images but "
                                 f"y_{split} {len(y)} labels")
        if np.shape(self.x_test)[1:] != np.shape(self.x_train)[1:]:
            raise ValueError(f"dataset {self.name!r}: test images are {np.shape(self.x_test)[1:]}"
                             f" but training images {np.shape(self.x_train)[1:]} (H, W, C); "
                             f"both splits need one image size")

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One image's (H, W, C)."""
        return tuple(self.x_train.shape[1:])


def fingerprint(dataset: Dataset) -> dict:
    """What the data is: its name, the shapes of its arrays and a SHA-256 of their contents
    (about 0.1 s for CIFAR-10). A run records it and refuses to resume on other data."""
    digest = hashlib.sha256()
    for key in ("x_train", "y_train", "x_test", "y_test"):
        array = np.ascontiguousarray(getattr(dataset, key))
        digest.update(f"{key}:{array.dtype}:{array.shape};".encode())
        digest.update(array.data)
    return {"name": dataset.name, "train": list(dataset.x_train.shape),
            "test": list(dataset.x_test.shape), "sha256": digest.hexdigest()}


def default_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: the argument, else ``$WSJAX_DATA_DIR``, else ``~/.cache/wsjax``."""
    if data_dir is None:
        data_dir = os.environ.get("WSJAX_DATA_DIR") or Path.home() / ".cache" / "wsjax"
    return Path(data_dir).expanduser().resolve()


def _validated(name: str, arrays, num_classes: int, source: str) -> Dataset:
    missing = {"x_train", "y_train", "x_test", "y_test"} - set(arrays)
    if missing:
        raise ValueError(f"{source} lacks arrays {sorted(missing)}; it needs x_train, y_train, "
                         f"x_test, y_test (see wsjax.data)")
    xs = {k: np.asarray(arrays[k]) for k in ("x_train", "x_test")}
    for k, x in xs.items():
        if x.dtype != np.uint8 or x.ndim != 4:
            raise ValueError(f"{source}: {k} must be uint8 of shape (N, H, W, C); got "
                             f"{x.dtype} {x.shape}")
    ys = {}
    for k in ("y_train", "y_test"):
        y = np.asarray(arrays[k])
        if y.ndim == 2 and y.shape[1] == 1:  # Keras stores CIFAR labels as (N, 1)
            y = y.reshape(-1)
        if y.dtype.kind not in "iu":
            raise ValueError(f"{source}: {k} must hold integer class labels; got {y.dtype}")
        ys[k] = y.astype(np.int32)
    top = max(int(ys["y_train"].max(initial=0)), int(ys["y_test"].max(initial=0)))
    if top >= num_classes or min(ys["y_train"].min(initial=0), ys["y_test"].min(initial=0)) < 0:
        raise ValueError(f"{source}: labels must lie in [0, {num_classes}); found up to {top}")
    try:
        return Dataset(name, xs["x_train"], ys["y_train"], xs["x_test"], ys["y_test"],
                       num_classes)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None


def load_dataset(name: str, data_dir: str | os.PathLike | None = None, *,
                 download: bool = True) -> Dataset:
    """Loads ``cifar10``, ``cifar100`` or ``svhn`` as uint8 arrays (see the module docstring);
    ``download=False`` reads the cache file only.

    Raises ``ValueError`` for an unknown name and ``FileNotFoundError`` saying what was tried and
    how to fix it when neither the cache file nor TFDS can supply the data.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {sorted(DATASETS)} "
                         f"(or 'synthetic' in the experiment scripts)")
    tfds_name, num_classes = DATASETS[name]
    root = default_data_dir(data_dir)
    path = root / f"{name}.npz"
    if path.exists():
        return _validated(name, read_npz(path), num_classes, str(path))
    tried = [f"no file {path}" + ("" if root.is_dir() else f" ({root} does not exist)")]
    # Downloads go to a temporary folder until one succeeds, so a mistyped directory is never
    # created (the cache file written on success creates it).
    work = root if root.is_dir() else Path(tempfile.mkdtemp(prefix="wsjax-download-"))
    # The downloading sources, in order: (what the errors call it, loader).
    sources = [(f"TFDS {tfds_name}", lambda: _load_with_tfds(tfds_name, work / "tfds"))]
    if name in ARCHIVES:
        sources.append((ARCHIVES[name][0], lambda: load_archive(name, work)))
    try:
        for source, load in sources if download else []:
            try:
                arrays = load()
            except Exception as e:  # noqa: BLE001 - every failure is reported with the fix below
                first_line = str(e).splitlines()[0] if str(e) else ""
                tried.append(f"{source}: {type(e).__name__}: {first_line}")
                continue
            dataset = _validated(name, arrays, num_classes, source)
            write_cache(dataset, path)
            return dataset
    finally:
        if work is not root:
            shutil.rmtree(work, ignore_errors=True)
    raise FileNotFoundError(
        f"could not load dataset {name!r}. Tried: {'; '.join(tried)}. Fix: put {name}.npz "
        f"(x_train, y_train, x_test, y_test; the layout of shared/data/cifar10.npz) in {root}, "
        f"or point WSJAX_DATA_DIR / --data-dir at the folder that has it; or, on a machine with "
        f"internet, `pip install 'wsjax[prepare]'` so TFDS can download and prepare it once "
        f"(CIFAR-10/100 also download without it)."
    )


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` file; ``ValueError`` naming the file when it is not a
    readable archive of plain arrays (truncated, another format, or pickled objects)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"{path} is not a readable .npz archive of arrays ({reason}): it may "
                         f"be truncated or in another format; delete it or replace it with a "
                         f"good copy (see wsjax.data)") from None


def write_cache(dataset: Dataset, path: str | os.PathLike) -> Path:
    """Writes ``dataset`` as an uncompressed ``.npz`` that ``load_dataset`` reads back."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, x_train=dataset.x_train, y_train=dataset.y_train, x_test=dataset.x_test,
             y_test=dataset.y_test)
    tmp.replace(path)  # atomic: a crash never leaves a half-written cache behind
    return path


def _load_with_tfds(tfds_name: str, tfds_dir: Path) -> dict:
    """Downloads and prepares a TFDS dataset once and returns it as numpy arrays."""
    import tensorflow as tf  # noqa: F401 - TFDS needs it to prepare; fail early if missing
    import tensorflow_datasets as tfds

    # TensorFlow would otherwise reserve the accelerators' memory that JAX needs.
    tf.config.set_visible_devices([], "GPU")
    if tf.config.list_physical_devices("TPU"):
        tf.config.set_visible_devices([], "TPU")
    out = {}
    for split in ("train", "test"):
        x, y = tfds.as_numpy(tfds.load(tfds_name, split=split, batch_size=-1, as_supervised=True,
                                       data_dir=str(tfds_dir)))
        out[f"x_{split}"], out[f"y_{split}"] = x.astype(np.uint8), y
    return out


def load_archive(name: str, root: str | os.PathLike) -> dict:
    """CIFAR-10/100 as numpy arrays from the official python archive (``ARCHIVES``), downloaded
    once into ``root`` and checked against its published MD5 before anything in it is
    unpickled. Needs no TensorFlow."""
    url, md5, train, test, label_key = ARCHIVES[name]
    archive = Path(root) / "downloads" / url.rsplit("/", 1)[-1]
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        tmp = archive.with_name(archive.name + ".part")
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            while chunk := r.read(1 << 20):
                f.write(chunk)
        tmp.replace(archive)
    digest = hashlib.md5(archive.read_bytes()).hexdigest()
    if digest != md5:
        raise ValueError(f"{archive} has MD5 {digest}, not the published {md5}: a corrupt or "
                         f"different file; delete it and load again")
    out = {}
    with tarfile.open(archive, "r:gz") as tar:
        for split, members in (("train", train), ("test", test)):
            batches = [pickle.load(tar.extractfile(m), encoding="bytes") for m in members]
            # Rows are 3072 bytes in CHW order (1024 red, 1024 green, 1024 blue).
            x = np.concatenate([b[b"data"] for b in batches]).reshape(-1, 3, 32, 32)
            out[f"x_{split}"] = np.ascontiguousarray(x.transpose(0, 2, 3, 1), dtype=np.uint8)
            out[f"y_{split}"] = np.concatenate([np.asarray(b[label_key]) for b in batches])
    return out


def synthetic_dataset(num_train: int = 512, num_test: int = 256, num_classes: int = 10,
                      image_shape=(32, 32, 3), seed: int = 0, noise: float = 60.0) -> Dataset:
    """A learnable stand-in for CIFAR: each class is a fixed random image plus pixel noise.

    For tests and ``--quick`` runs on machines without the real data.
    """
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(40, 215, size=(num_classes, *image_shape))

    def draw(n):
        y = rng.integers(0, num_classes, size=n).astype(np.int32)
        x = prototypes[y] + rng.normal(0, noise, size=(n, *image_shape))
        return np.clip(np.rint(x), 0, 255).astype(np.uint8), y

    x_train, y_train = draw(num_train)
    x_test, y_test = draw(num_test)
    return Dataset("synthetic", x_train, y_train, x_test, y_test, num_classes)


def relabel_fraction(labels: np.ndarray, fraction: float, num_classes: int, seed: int):
    """Returns a copy of ``labels`` with a random ``fraction`` replaced by uniform random labels."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in [0, 1]")
    rng = np.random.default_rng(seed)
    labels = labels.copy()
    which = rng.permutation(len(labels))[: int(round(fraction * len(labels)))]
    labels[which] = rng.integers(0, num_classes, size=len(which))
    return labels


# --- the study's splits: index arrays into the training set --------------------------------


def study_split(num_examples: int, seed: int = 0, fit_fraction: float = 2 / 3):
    """The study's split of the official training set: a random ``fit_fraction`` (2/3) is
    fitted, the rest is the validation set the paper reports. Returns ``(fit_idx, val_idx)``,
    sorted int32 index arrays; the same ``seed`` gives the same split.

    CIFAR's 50,000 give 33,333 / 16,667.
    """
    n_fit = study_split_sizes(num_examples, fit_fraction)[0]
    perm = np.random.default_rng(seed).permutation(num_examples)
    return np.sort(perm[:n_fit]).astype(np.int32), np.sort(perm[n_fit:]).astype(np.int32)


def seed_splits(num_examples: int, seeds, split_seed: int = 0,
                fit_fraction: float = 2 / 3) -> tuple[np.ndarray, np.ndarray]:
    """Each seed's own ``study_split``, its fitted part in a random order (so first-fraction
    subsets are random subsets): ``(fit_idx, val_idx)`` of shapes ``(len(seeds), n_fit)`` and
    ``(len(seeds), n_val)``, row r drawn from ``(split_seed, seeds[r])`` alone (so a seed's
    split does not depend on which other seeds run beside it).
    """
    fits, vals = [], []
    for seed in seeds:
        mixed = int(np.random.SeedSequence([split_seed, int(seed)]).generate_state(1)[0])
        fit, val = study_split(num_examples, mixed, fit_fraction)
        fits.append(shuffled(fit, mixed))
        vals.append(val)
    return np.stack(fits), np.stack(vals)


def study_split_sizes(num_examples: int, fit_fraction: float = 2 / 3) -> tuple[int, int]:
    """``(fitted, validation)`` sizes of ``study_split``."""
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction={fit_fraction} must be strictly between 0 and 1")
    n_fit = int(num_examples * fit_fraction)
    return n_fit, num_examples - n_fit


def shuffled(idx: np.ndarray, seed: int) -> np.ndarray:
    """``idx`` in a seeded random order (so that first-fraction subsets are random subsets)."""
    return np.asarray(idx)[np.random.default_rng(seed).permutation(len(idx))]


def first_fraction(idx: np.ndarray, fraction: float) -> np.ndarray:
    """The first ``fraction`` of ``idx`` (at least one example). Round 1 of the two-phase
    experiment is ``first_fraction(fit_idx, 0.5)``; shuffle ``idx`` first for a random subset.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1]")
    idx = np.asarray(idx)  # (n,), or (replicas, n): the first fraction of every row
    return idx[..., : max(1, int(round(fraction * idx.shape[-1])))]


def online_chunks(idx: np.ndarray, chunk: int) -> list[np.ndarray]:
    """The growing training sets of the online experiment: the first k, 2k, ... examples of
    ``idx``, the last one all of it (33,333 CIFAR-10 examples in chunks of 1,000: 34 rounds).
    """
    if chunk < 1:
        raise ValueError(f"chunk={chunk} must be a positive number of examples")
    idx = np.asarray(idx)  # (n,), or (replicas, n): every row grows alike
    n = idx.shape[-1]
    ends = list(range(chunk, n, chunk)) + [n]
    return [idx[..., :e] for e in ends]


def padded_batches(idx, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``idx`` cut into whole batches for an exact pass over ``x[idx]``: returns ``(ids, mask)``,
    both of shape ``(num_batches, batch_size)``, where the last batch is padded with index 0 and
    ``mask`` marks the real entries, so every example counts once (at least one batch).

    Every pass over data in wsjax (evaluation, prediction, gradient norms, BatchNorm
    statistics, the fast trainer's test-time augmentation) batches through this.

    >>> ids, mask = padded_batches(np.arange(5), 2)
    >>> ids.tolist(), mask.sum()
    ([[0, 1], [2, 3], [4, 0]], 5)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be positive")
    idx = np.asarray(idx, dtype=np.int32)
    num_batches = max(1, -(-len(idx) // batch_size))
    ids = np.zeros(num_batches * batch_size, np.int32)
    ids[: len(idx)] = idx
    mask = np.arange(num_batches * batch_size) < len(idx)
    return ids.reshape(num_batches, batch_size), mask.reshape(num_batches, batch_size)


def target_fraction(num_examples: int, fraction: float, seed: int = 0) -> np.ndarray:
    """A random ``fraction`` of a target training set, for the transfer experiments."""
    return np.sort(first_fraction(shuffled(np.arange(num_examples, dtype=np.int32), seed),
                                  fraction))
