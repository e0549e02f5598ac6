import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wsjax import augment


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (16, 8, 8, 3)).astype(np.uint8)


def test_normalize_study_range(images):
    out = augment.normalize(jnp.asarray(images))
    np.testing.assert_allclose(out, images / 127.5 - 1.0, rtol=1e-6, atol=1e-6)


def test_random_crop_matches_numpy(images):
    key = jax.random.key(0)
    out = np.asarray(jax.jit(augment.random_crop)(key, images))
    offsets = np.asarray(jax.random.randint(key, (16, 2), 0, 9))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    ref = np.stack([padded[i, a:a + 8, b:b + 8] for i, (a, b) in enumerate(offsets)])
    np.testing.assert_array_equal(out, ref)
    refl = np.asarray(augment.random_crop(key, images, padding=2, mode="reflect"))
    offs2 = np.asarray(jax.random.randint(key, (16, 2), 0, 5))
    p2 = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    np.testing.assert_array_equal(refl, np.stack([p2[i, a:a + 8, b:b + 8]
                                                  for i, (a, b) in enumerate(offs2)]))


def test_random_flip_matches_numpy(images):
    key = jax.random.key(1)
    out = np.asarray(jax.jit(augment.random_flip)(key, images))
    flip = np.asarray(jax.random.bernoulli(key, 0.5, (16,)))
    ref = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    np.testing.assert_array_equal(out, ref)
    assert 0 < flip.sum() < 16


def test_cutout_matches_numpy(images):
    key = jax.random.key(2)
    out = np.asarray(jax.jit(augment.cutout, static_argnums=2)(key, images, 4))
    ky, kx = jax.random.split(key)
    cy = np.asarray(jax.random.randint(ky, (16, 1, 1), 0, 8)).ravel()
    cx = np.asarray(jax.random.randint(kx, (16, 1, 1), 0, 8)).ravel()
    ref = images.copy()
    for i in range(16):
        t, l = cy[i] - 2, cx[i] - 2
        ref[i, max(t, 0):max(t + 4, 0), max(l, 0):max(l + 4, 0)] = 0
    np.testing.assert_array_equal(out, ref)


def test_make_preprocess(images):
    pre = augment.make_preprocess(("crop", "flip", "cutout"), "cifar10")
    out = jax.jit(pre)(jax.random.key(0), images)
    assert out.shape == images.shape and out.dtype == jnp.float32
    plain = augment.make_preprocess()
    np.testing.assert_allclose(plain(None, images), images / 127.5 - 1, atol=1e-6)
    with pytest.raises(ValueError, match="unknown augmentations"):
        augment.make_preprocess(("rotate",))
    with pytest.raises(ValueError, match="unknown normalization"):
        augment.make_preprocess((), "imagenet")
