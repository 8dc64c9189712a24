import json
import os
import subprocess
import sys
import time

import pytest

from flashkit import jit

from .specs import BACKENDS, REPO, ninja_spec, spec_for

RACERS = 8

# Each racer imports the JIT first, waits for the go file so that all build at once, then builds,
# loads and calls the extension and reports on one JSON line.
RACER = """
import json, os, sys, time
import flashkit.jit as jit
from tests.jit.specs import ninja_spec
spec = ninja_spec()
while not os.path.exists(sys.argv[1]):
    time.sleep(0.002)
start = time.time()
result = jit.build(spec)
end = time.time()
module = jit.load(spec)
print(json.dumps({"compiled": result.compiled, "uri": result.uri, "start": start, "end": end,
                  "add": module.add(2, 3)}))
"""


@pytest.fixture(scope="session")
def ninja_race(tmp_path_factory):
    """8 processes that ask for one ninja spec at once, in a fresh cache.

    The one real ninja build of the session for ``ninja_spec()``: later tests reuse its cache
    (through ``ninja_cache``) instead of compiling again.
    """
    root = tmp_path_factory.mktemp("ninja-race")
    cache, go = root / "cache", root / "go"
    env = {**os.environ, "FLASHKIT_CACHE_DIR": str(cache)}
    env.pop("FLASHKIT_DISABLE_JIT", None)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(go)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(RACERS)]
    time.sleep(0.5)  # let every racer get past its imports
    go.touch()
    outputs = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, f"racer failed ({proc.returncode}):\n{out}\n{err}"
        outputs.append(json.loads(out.strip().splitlines()[-1]))
    return {"cache": cache, "spec": ninja_spec(), "outputs": outputs}


@pytest.fixture
def ninja_cache(ninja_race, monkeypatch):
    """The cache that ``ninja_race`` filled, with no in-process hits carried over."""
    from flashkit.jit import cache

    monkeypatch.setenv("FLASHKIT_CACHE_DIR", str(ninja_race["cache"]))
    monkeypatch.delenv("FLASHKIT_DISABLE_JIT", raising=False)
    saved = dict(cache._loaded)
    cache._loaded.clear()
    yield ninja_race["cache"]
    cache._loaded.clear()
    cache._loaded.update(saved)


@pytest.fixture(params=BACKENDS)
def warm(request):
    """A cache that already holds ``spec_for(backend)``; yields the backend's name.

    triton and nvrtc build into a fresh ``isolated_cache``; ninja reuses the session's race cache.
    """
    backend = request.param
    if backend == "ninja":
        request.getfixturevalue("ninja_cache")
    else:
        request.getfixturevalue("isolated_cache")
        assert jit.build(spec_for(backend)).compiled
    return backend
