"""The disk cache: a second process loads the generated module and numba's machine code
instead of compiling; corrupted entries are detected and rebuilt."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np, sympy as sp
    import gradc, gradc.compiled
    calls = []
    real_lower = gradc.compiled.lower
    gradc.compiled.lower = lambda *a, **k: calls.append(1) or real_lower(*a, **k)
    w, x = sp.symbols("w x")
    t = time.perf_counter()
    fn = gradc.compile(sp.exp(-w * x) * sp.tanh(w + x), wrt=[w], data=[x])
    v, g = fn.value_and_grad([0.7], np.linspace(0, 1, 11))
    elapsed = time.perf_counter() - t
    st = fn.kernels.value_and_grad.stats
    print(json.dumps({"lowered": len(calls), "hits": sum(st.cache_hits.values()),
                      "misses": sum(st.cache_misses.values()), "v": v, "g": g.tolist(),
                      "seconds": elapsed}))
    """
)


def run(cache):
    env = dict(os.environ, GRADC_CACHE_DIR=str(cache))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("gradc-cache")


@pytest.fixture(scope="module")
def first(cache):
    return run(cache)


def entry(cache):
    (e,) = [p for p in cache.iterdir() if p.is_dir()]
    return e


def test_first_process_compiles(first):
    assert first["lowered"] == 1 and first["misses"] == 1 and first["hits"] == 0


def test_second_process_loads_machine_code(cache, first):
    second = run(cache)
    assert second["lowered"] == 0, "the sympy work should come from the cache"
    assert second["hits"] == 1 and second["misses"] == 0
    assert second["v"] == first["v"] and second["g"] == first["g"]


def test_entry_layout(cache, first):
    e = entry(cache)
    meta = json.loads((e / "meta.json").read_text())
    assert meta["key"] == e.name and len(meta["sha256"]) == 64
    assert (e / "kernels.py").read_text().startswith('"""gradc kernels for:')
    assert any(p.suffix == ".nbi" for p in (e / "__pycache__").iterdir())


def test_corrupted_source_is_rebuilt(cache, first):
    path = entry(cache) / "kernels.py"
    path.write_text(path.read_text()[:-200] + "\nthis is not python\n")
    again = run(cache)
    assert again["lowered"] == 1, "a corrupted entry must be regenerated"
    assert again["v"] == first["v"] and again["g"] == first["g"]
    fixed = run(cache)
    assert fixed["lowered"] == 0 and fixed["hits"] == 1


def test_corrupted_numba_cache_is_recompiled(cache, first):
    run(cache)  # make sure a good entry exists
    for p in (entry(cache) / "__pycache__").iterdir():
        if p.suffix == ".nbc":
            p.write_bytes(b"garbage")
    again = run(cache)
    assert again["v"] == first["v"] and again["g"] == first["g"]


def test_python_path_writes_nothing(tmp_path, monkeypatch):
    import sympy as sp

    import gradc

    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "c"))
    w = sp.Symbol("w")
    gradc.compile(w**2, wrt=[w], jit=False).value([1.0])
    assert not (tmp_path / "c").exists()


def test_a_function_loaded_from_the_cache_lists_its_kernels_in_the_same_order(tmp_path,
                                                                              monkeypatch):
    """The manifest keeps the kernels in spec order (it was written with sorted keys, so a
    cache hit listed them alphabetically and ``fn.kernels`` printed differently)."""
    import sympy as sp

    import gradc
    from gradc import backend

    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "c"))
    w, x = sp.symbols("w x")
    fresh = gradc.compile(sp.tanh(w * x), wrt=[w], data=[x])
    order = list(vars(fresh.kernels))
    assert order[:2] == ["value", "value_and_grad"]
    monkeypatch.setattr(backend, "_loaded", {})  # forget the loaded module: read the disk
    hit = backend.lookup(fresh._key)
    assert hit is not None and list(hit[1]["kernels"]) == order
    again = gradc.compile(sp.tanh(w * x), wrt=[w], data=[x])
    assert list(vars(again.kernels)) == order and repr(again.kernels) == repr(fresh.kernels)


def test_user_functions_with_the_same_name_do_not_share_a_cache_key():
    import sympy as sp

    from gradc.frontend import structural_key

    x = sp.Symbol("x")

    class act(sp.Function):  # noqa: N801 - the user's name
        def fdiff(self, argindex=1):
            return 2 * self.args[0]

    first = structural_key(act(x))

    class act(sp.Function):  # noqa: F811, N801 - redefined, as after fixing a notebook cell
        def fdiff(self, argindex=1):
            return 3 * self.args[0]

    assert structural_key(act(x)) != first
    assert structural_key(sp.tanh(x)) == structural_key(sp.tanh(x))


def test_cache_is_pruned_least_recently_used_first(tmp_path, monkeypatch, capsys):
    from gradc import backend, cli

    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path))
    for i, key in enumerate(["old", "mid", "new"]):
        backend.store(key, f"# entry {i}\n")
        (tmp_path / key / "__pycache__").mkdir(exist_ok=True)
        (tmp_path / key / "__pycache__" / "blob.nbc").write_bytes(b"x" * 100_000)
        os.utime(tmp_path / key / "meta.json", (1000.0 + i, 1000.0 + i))
    assert backend.lookup("old") == ("# entry 0\n", None)  # a hit makes "old" the most recent
    sizes = {e["key"]: e["bytes"] for e in backend.entries()}
    assert set(sizes) == {"old", "mid", "new"} and min(sizes.values()) > 100_000
    assert backend.prune(max_bytes=sum(sizes.values()) - 1) == ["mid"]
    assert backend.prune(max_bytes=1, keep=("new",)) == ["old"]
    assert [e["key"] for e in backend.entries()] == ["new"]
    assert backend.prune(max_bytes=0) == []  # 0: no limit
    orphan = tmp_path / ("0" * 32) / "__pycache__"  # numba's files of a removed entry
    orphan.mkdir(parents=True)
    (orphan / "blob.nbc").write_bytes(b"x" * 10)
    os.utime(orphan.parent, (500.0, 500.0))
    assert backend.prune(max_bytes=sizes["new"]) == ["0" * 32]
    monkeypatch.setenv("GRADC_CACHE_MAX_MB", "0.05")  # 52 kB: the next store evicts "new"
    backend.store("newest", "# entry 3\n")
    assert [e["key"] for e in backend.entries()] == ["newest"]
    assert cli.main(["cache"]) == 0
    assert "1 entries" in capsys.readouterr().out
    assert cli.main(["cache", "--clear"]) == 0
    assert "removed 1 entries" in capsys.readouterr().out and backend.entries() == []


def test_parallel_kernels_make_openmp_wait_passively(monkeypatch):
    from gradc import backend

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    backend.njit(lambda a: a, parallel=False)
    assert "OMP_WAIT_POLICY" not in os.environ
    backend.njit(lambda a: a, parallel=True)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # a user's choice stays
    backend.njit(lambda a: a, parallel=True)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


# ----------------------------------------------------------------------------------------
# A cache only its user can write (issue 13, item 1)


def _mode(path):
    return os.stat(path).st_mode & 0o777


def test_entries_are_private_numba_files_included(cache, first):
    e = entry(cache)
    assert _mode(e) == 0o700 and _mode(e / "__pycache__") == 0o700
    for f in [*e.iterdir(), *(e / "__pycache__").iterdir()]:
        if f.is_file():
            assert _mode(f) == 0o600, f
    from gradc import backend

    assert backend.entry_problems(e) == []


def test_a_new_root_is_created_private(tmp_path, monkeypatch):
    from gradc import backend

    root = tmp_path / "new" / "gradc"
    monkeypatch.setenv("GRADC_CACHE_DIR", str(root))
    assert backend.cache_dir() == root and _mode(root) == 0o700


def test_a_root_others_can_write_is_not_used(tmp_path, monkeypatch):
    import numpy as np
    import sympy as sp

    import gradc
    from gradc import backend

    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o777)
    monkeypatch.setenv("GRADC_CACHE_DIR", str(root))
    with pytest.warns(RuntimeWarning, match=r"not using the cache folder .*writable by group "
                                            r"and others \(mode 777\)"):
        private = backend.cache_dir()
    assert private != root and _mode(private) == 0o700
    w, x = sp.symbols("w x")
    fn = gradc.compile(sp.tanh(w * x) + w ** 2, wrt=[w], data=[x])
    assert fn.grad([0.5], np.ones(3))[0] == pytest.approx(1 - np.tanh(0.5) ** 2 + 1.0)
    assert list(root.iterdir()) == []  # nothing was written into (or loaded from) it
    assert backend.verify() == [("root", f"{root}: it is writable by group and others "
                                         "(mode 777)")]


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a folder to another user")
def test_a_root_of_another_user_is_not_used(tmp_path, monkeypatch):
    from gradc import backend

    root = tmp_path / "theirs"
    root.mkdir(mode=0o700)
    os.chown(root, 12345, 12345)
    monkeypatch.setenv("GRADC_CACHE_DIR", str(root))
    with pytest.warns(RuntimeWarning, match="belongs to uid 12345"):
        assert backend.cache_dir() != root


def test_an_entry_others_can_write_is_not_loaded_but_rewritten(tmp_path, monkeypatch, capsys):
    from gradc import backend, cli

    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "c"))
    key = "0123456789abcdef0123456789abcdef"
    backend.store(key, "x = 1\n", {"kernels": {}})
    assert backend.lookup(key) == ("x = 1\n", {"kernels": {}})
    assert cli.cache_command(verify=True) == 0
    planted = tmp_path / "c" / key / "kernels.py"
    os.chmod(planted, 0o666)
    assert backend.lookup(key) is None  # not trusted
    assert cli.cache_command(verify=True) == 1
    assert "writable by group and others (mode 666)" in capsys.readouterr().out
    backend.store(key, "x = 1\n", {"kernels": {}})
    assert _mode(planted) == 0o600 and backend.lookup(key) is not None
    planted.write_text("x = 2\n")  # same owner and mode, but the hash no longer matches
    assert backend.verify() == [(key, "its files do not match the hashes in meta.json")]


def test_a_cache_that_cannot_be_written_degrades_to_compiling_in_memory(tmp_path,
                                                                        monkeypatch):
    import numpy as np
    import sympy as sp

    import gradc
    from gradc import backend

    monkeypatch.setenv("GRADC_CACHE_DIR", str(tmp_path / "c"))

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(backend, "store", full)
    w, x = sp.symbols("w x")
    with pytest.warns(RuntimeWarning, match="No space left on device"):
        fn = gradc.compile(sp.sin(w * x) + 3 * w, wrt=[w], data=[x])
    assert fn.grad([0.0], np.ones(4))[0] == pytest.approx(4.0)
