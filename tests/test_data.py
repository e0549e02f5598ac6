import sys
import types

import numpy as np
import pytest

from wsjax import data


def test_study_split_sizes_and_determinism():
    fit, val = data.study_split(50_000, seed=0)
    assert (len(fit), len(val)) == (33_333, 16_667)
    assert len(np.intersect1d(fit, val)) == 0 and len(np.union1d(fit, val)) == 50_000
    fit2, _ = data.study_split(50_000, seed=0)
    np.testing.assert_array_equal(fit, fit2)
    assert not np.array_equal(fit, data.study_split(50_000, seed=1)[0])
    with pytest.raises(ValueError, match="fit_fraction"):
        data.study_split(10, fit_fraction=1.0)


def test_subsets_chunks_and_target_fraction():
    idx = np.arange(33_333)
    assert len(data.first_fraction(idx, 0.5)) == 16_666
    chunks = data.online_chunks(idx, 1000)
    assert len(chunks) == 34 and len(chunks[0]) == 1000 and len(chunks[-1]) == 33_333
    assert all(np.array_equal(c, idx[: len(c)]) for c in chunks)
    t = data.target_fraction(1000, 0.1, seed=3)
    assert len(t) == 100 and np.array_equal(t, data.target_fraction(1000, 0.1, seed=3))
    with pytest.raises(ValueError, match="chunk"):
        data.online_chunks(idx, 0)
    with pytest.raises(ValueError, match="fraction"):
        data.first_fraction(idx, 0)


def test_relabel_fraction():
    y = np.zeros(1000, np.int32)
    noisy = data.relabel_fraction(y, 0.5, 10, seed=0)
    changed = np.mean(noisy != y)
    assert 0.4 < changed < 0.5  # a 1/10 of relabelled ones keep label 0
    assert np.array_equal(y, np.zeros(1000))


def test_load_errors_name_what_was_tried(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
        data.load_dataset("mnist", tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        data.load_dataset("cifar10", tmp_path, download=False)
    msg = str(e.value)
    assert "cifar10.npz" in msg and "WSJAX_DATA_DIR" in msg and "wsjax[prepare]" in msg


def test_cache_round_trip_and_env_dir(tmp_path, monkeypatch):
    ds = data.synthetic_dataset(20, 10, 10)
    data.write_cache(data.Dataset("cifar10", ds.x_train, ds.y_train, ds.x_test, ds.y_test, 10),
                     tmp_path / "cifar10.npz")
    monkeypatch.setenv("WSJAX_DATA_DIR", str(tmp_path))
    back = data.load_dataset("cifar10")
    np.testing.assert_array_equal(back.x_train, ds.x_train)
    assert back.y_train.dtype == np.int32 and back.num_classes == 10


def test_bad_cache_file(tmp_path):
    np.savez(tmp_path / "svhn.npz", x_train=np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="lacks arrays"):
        data.load_dataset("svhn", tmp_path)


def test_tfds_path_prepares_once_then_uses_cache(tmp_path, monkeypatch):
    calls = []
    rng = np.random.default_rng(0)

    def fake_load(name, split, batch_size, as_supervised, data_dir):
        calls.append((name, split))
        n = 6 if split == "train" else 4
        return rng.integers(0, 255, (n, 32, 32, 3)).astype(np.uint8), rng.integers(0, 10, n)

    tfds = types.SimpleNamespace(load=fake_load, as_numpy=lambda t: t)
    config = types.SimpleNamespace(set_visible_devices=lambda *a: None,
                                   list_physical_devices=lambda kind: [])
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", tfds)
    monkeypatch.setitem(sys.modules, "tensorflow", types.SimpleNamespace(config=config))
    ds = data.load_dataset("svhn", tmp_path)
    assert calls == [("svhn_cropped", "train"), ("svhn_cropped", "test")]
    assert ds.x_train.shape == (6, 32, 32, 3) and (tmp_path / "svhn.npz").exists()
    monkeypatch.delitem(sys.modules, "tensorflow_datasets")
    again = data.load_dataset("svhn", tmp_path)  # from the cache, TFDS not needed
    np.testing.assert_array_equal(again.x_test, ds.x_test)
    assert len(calls) == 2


def test_shared_cifar10(shared_cifar):
    ds = data.load_dataset("cifar10", shared_cifar)
    assert ds.x_train.shape == (50_000, 32, 32, 3) and ds.x_test.shape == (10_000, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.num_classes == 10
    assert np.bincount(ds.y_train).tolist() == [5000] * 10
    np.testing.assert_allclose(ds.x_train[:5000].reshape(-1, 3).mean(0), [125.3, 123, 114],
                               atol=2.0)


def _fake_cifar_archive(path, rng):
    """A tar.gz with the official CIFAR-10 python layout: 5 train batches and a test batch of
    3 images each, rows in CHW byte order."""
    import io
    import pickle
    import tarfile

    images = rng.integers(0, 255, (18, 32, 32, 3)).astype(np.uint8)
    labels = rng.integers(0, 10, 18)
    with tarfile.open(path, "w:gz") as tar:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        for i, name in enumerate(names):
            sl = slice(3 * i, 3 * i + 3)
            rows = images[sl].transpose(0, 3, 1, 2).reshape(3, 3072)
            blob = pickle.dumps({b"data": rows, b"labels": labels[sl].tolist()})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return images, labels


def test_official_archive_without_tensorflow(tmp_path, monkeypatch):
    import hashlib

    images, labels = _fake_cifar_archive(tmp_path / "cifar-10-python.tar.gz",
                                         np.random.default_rng(0))
    md5 = hashlib.md5((tmp_path / "cifar-10-python.tar.gz").read_bytes()).hexdigest()
    url = (tmp_path / "cifar-10-python.tar.gz").as_uri()
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # as on a Colab TPU runtime
    monkeypatch.setitem(data.ARCHIVES, "cifar10", (url, "0" * 32, *data.ARCHIVES["cifar10"][2:]))
    with pytest.raises(FileNotFoundError, match="MD5"):
        data.load_dataset("cifar10", tmp_path / "d")
    monkeypatch.setitem(data.ARCHIVES, "cifar10", (url, md5, *data.ARCHIVES["cifar10"][2:]))
    ds = data.load_dataset("cifar10", tmp_path / "d")
    np.testing.assert_array_equal(ds.x_train, images[:15])
    np.testing.assert_array_equal(ds.x_test, images[15:])
    np.testing.assert_array_equal(ds.y_train, labels[:15])
    assert (tmp_path / "d" / "cifar10.npz").exists()
