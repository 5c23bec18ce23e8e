"""Salt's own loader over the repository's _modules/ and _states/ (module_dirs), with
libvirt's in-process test:///default driver standing in for a node's libvirtd."""
import pytest
import salt.config
import salt.loader

from kvmtestlib import REPO, SEED_PILLAR, formula_values


@pytest.fixture(scope="session")
def minion_opts(tmp_path_factory):
    root = tmp_path_factory.mktemp("minion")
    opts = salt.config.minion_config(None)
    opts.update(
        file_client="local", cachedir=str(root / "cache"), pki_dir=str(root / "pki"),
        module_dirs=[str(REPO / "_modules")], states_dirs=[str(REPO / "_states")],
        utils_dirs=[str(REPO / "_utils")],
        id="kvm02", test=False,
    )
    opts["grains"] = salt.loader.grains(opts)
    opts["grains"]["id"] = "kvm02"
    opts["pillar"] = {"kvmcluster": SEED_PILLAR["kvmcluster"]}
    return opts


@pytest.fixture
def make_loaders(minion_opts):
    """A state run's loaders: (functions, states, context) sharing one __context__."""

    def make(test=False):
        opts = dict(minion_opts, test=test)
        context = {}
        utils = salt.loader.utils(opts)
        funcs = salt.loader.minion_mods(opts, utils=utils, context=context)
        states = salt.loader.states(opts, funcs, utils, {}, context=context)
        return funcs, states, context

    return make


@pytest.fixture
def loaders(make_loaders):
    return make_loaders()


@pytest.fixture
def parameters():
    return formula_values()


@pytest.fixture(scope="session", autouse=True)
def test_driver_kept_open():
    """test:///default keeps its state only while a connection to it is open."""
    import libvirt  # pylint: disable=import-outside-toplevel

    conn = libvirt.open("test:///default")
    yield conn
    conn.close()
