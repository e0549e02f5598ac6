import jax
import pytest

from wsjax import runtime


def test_expected_accelerator_from_device_files(tmp_path):
    assert runtime.expected_accelerator(tmp_path, {}) is None
    (tmp_path / "vfio").mkdir()
    (tmp_path / "vfio" / "12").touch()
    assert runtime.expected_accelerator(tmp_path, {}) is None  # VFIO alone: not trusted
    assert runtime.expected_accelerator(tmp_path, {"COLAB_RELEASE_TAG": "x"}) == "tpu"
    assert runtime.expected_accelerator(tmp_path, {"TPU_ACCELERATOR_TYPE": "v5litepod-1"}) == "tpu"
    (tmp_path / "nvidia0").touch()
    assert runtime.expected_accelerator(tmp_path, {}) == "gpu"


def test_check_backend_fails_loudly_on_cpu_fallback():
    assert runtime.check_backend(expected="") == jax.default_backend()
    if jax.default_backend() != "cpu":
        pytest.skip("the fallback error is only raised on the CPU backend")
    with pytest.raises(RuntimeError, match="has a TPU but JAX .* runs on the CPU.*Disconnect"):
        runtime.check_backend(expected="tpu")


def test_report_names_devices_and_versions():
    d = runtime.describe()
    assert d["device_count"] == jax.device_count() and d["jax"] == jax.__version__
    text = runtime.report()
    assert f"{jax.device_count()} x {jax.devices()[0].device_kind}" in text and "flax" in text
