"""Test session set-up: four host CPU devices in every test process (before JAX starts), so a
test can compare a run on a 1-device mesh with the same run on a 4-device mesh. Engine tests
choose their mesh with `train.num_devices` (tiny_config: 1)."""
import jax

jax.config.update("jax_num_cpu_devices", 4)

# The longest modules first: with `--dist loadfile --no-loadscope-reorder` (make test) pytest-xdist
# hands out whole files in collection order, so these start at once on separate workers and the
# short files fill in around them instead of trailing behind them.
LONGEST_FIRST = ("test_strategies_stream.py", "test_train.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))



import pytest  # noqa: E402

from phn_jax.data.tfds_io import contained_tempdirs  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _temporary_files_inside_one_directory():
    """Every temporary file or directory a test (or a library it calls: tfds leaves empty
    `tmp*tfds` directories) makes goes into one directory, removed when the session ends."""
    with contained_tempdirs():
        yield
