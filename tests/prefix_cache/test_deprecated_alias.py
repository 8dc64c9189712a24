"""flashkit.cache, the prefix cache's old name: the same objects, with a DeprecationWarning."""
import importlib
import subprocess
import sys
import warnings

import flashkit.prefix_cache as new

MODULES = ("cli", "costs", "engine", "policy", "radix", "simulator", "traces")


def test_old_import_warns_and_aliases_the_same_objects():
    sys.modules.pop("flashkit.cache", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("flashkit.cache")
    assert any(issubclass(w.category, DeprecationWarning) and "flashkit.prefix_cache" in
               str(w.message) for w in caught)
    for name in new.__all__:
        assert getattr(old, name) is getattr(new, name), name
    for m in MODULES:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            alias = importlib.import_module(f"flashkit.cache.{m}")
        assert alias is importlib.import_module(f"flashkit.prefix_cache.{m}"), m
        assert getattr(old, m) is alias


def test_from_old_path_isinstance_holds_across_names():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from flashkit.cache.costs import HybridModelConfig as OldConfig
        from flashkit.cache.policy import PrefixCache as OldCache
    from flashkit.prefix_cache import HybridModelConfig, PrefixCache

    c = OldCache(OldConfig(), 1e9, "sglang")
    assert isinstance(c, PrefixCache) and isinstance(PrefixCache(HybridModelConfig(), 1e9),
                                                      OldCache)


def test_fresh_interpreter_old_engine_import_is_the_new_class():
    # a process that only ever spells the old path: no second copy of the module is executed
    code = ("import sys, warnings; warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n    import flashkit.cache\nexcept DeprecationWarning:\n    pass\n"
            "else:\n    sys.exit('no warning')\n"
            "warnings.simplefilter('ignore')\n"
            "from flashkit.cache.engine import Engine\n"
            "import flashkit.prefix_cache.engine as e\n"
            "assert Engine is e.Engine\n"
            "assert [m for m in sys.modules if m.endswith('.engine') and 'cache' in m and "
            "sys.modules[m] is not e] == []\n"
            "import flashkit; assert flashkit.cache is sys.modules['flashkit.cache']\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
