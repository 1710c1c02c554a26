"""The examples in the README and docs run as written against a real store, and show what
their comments and prose say they show."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN, D, VOCAB = "minilm", 384, 30522  # the demo store: MiniLM, d=384, BERT's vocabulary


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


# -- Python examples ----------------------------------------------------------------------


@dataclass(repr=False)  # holds relations of closed connections
class Ran:
    """What a reader of one example would see."""

    ns: dict[str, Any]
    #: source of each bare expression statement (``s.runs  # ['minilm', ...]``) -> its value
    shown: dict[str, Any] = field(default_factory=dict)
    #: name -> every value bound to it by ``=``, in order (later ones overwrite in ``ns``)
    bound: dict[str, list[Any]] = field(default_factory=dict)
    out: str = ""


class _Record(ast.NodeTransformer):
    """Rewrite an example so that it records its bare expressions and ``=`` bindings."""

    @staticmethod
    def _call(fn: str, *args: ast.expr) -> ast.Expr:
        return ast.Expr(ast.Call(ast.Name(fn, ast.Load()), list(args), []))

    def visit_Expr(self, node: ast.Expr) -> ast.AST:
        if isinstance(node.value, ast.Constant):  # `...`
            return node
        call = self._call("__shown__", ast.Constant(ast.unparse(node.value)), node.value)
        return ast.copy_location(call, node)

    def visit_Assign(self, node: ast.Assign) -> list[ast.AST]:
        names = [
            n.id
            for t in node.targets
            for n in (t.elts if isinstance(t, ast.Tuple) else [t])
            if isinstance(n, ast.Name)
        ]
        records = [self._call("__bound__", ast.Constant(n), ast.Name(n, ast.Load())) for n in names]
        return [node, *(ast.copy_location(r, node) for r in records)]


def run_example(source: str, name: str) -> Ran:
    tree = ast.fix_missing_locations(_Record().visit(ast.parse(source)))
    ran = Ran(ns={"__name__": "__doc_example__"})
    ran.ns["__shown__"] = ran.shown.__setitem__
    ran.ns["__bound__"] = lambda n, v: ran.bound.setdefault(n, []).append(v)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        exec(compile(tree, name, "exec"), ran.ns)
    ran.out = buf.getvalue()
    return ran


@dataclass
class Reference:
    """The demo store read independently of the examples (zarr and the JSON files)."""

    store: Path
    run_json: dict[str, Any]
    #: the vectors of ``site`` (hidden.6 unless told)
    h6: np.ndarray

    @classmethod
    def read(cls, store: Path, site: str = "hidden.6") -> Reference:
        import zarr

        run_json = json.loads((store / "runs" / RUN / "run.json").read_text())
        assert len(run_json["parts"]) == 1, "the checks below read part-0000 only"
        h6 = zarr.open(str(store / "runs" / RUN / "arrays/part-0000" / site), mode="r")[:]
        return cls(store, run_json, np.asarray(h6))

    def sql(self, query: str, params: list[Any] | None = None) -> Any:
        import actstore

        with actstore.open(self.store) as s:
            return s.sql(query, params).df()

    def top_tokens(self, n: int) -> set[tuple[str, int]]:
        df = self.sql(
            f"SELECT token, count FROM vocab WHERE run = ? ORDER BY count DESC LIMIT {n}", [RUN]
        )
        return {(str(t), int(c)) for t, c in zip(df.token, df["count"], strict=True)}


def _printed_table(out: str) -> list[list[str]]:
    """Data rows of a DuckDB relation printed as a box table."""
    rows = [[c.strip() for c in line.strip("│").split("│")] for line in out.splitlines()]
    return [r for r in rows[4:] if len(r) > 1]  # after the top border, names, types, rule


def _check_readme(ran: list[Ran], ref: Reference) -> None:
    plain, query = ran
    # "Read it without actstore"
    (count,) = next(v for k, v in plain.shown.items() if k.startswith("duckdb.sql")).fetchall()[0]
    assert count == len(ref.h6)
    np.testing.assert_array_equal(plain.ns["x"], ref.h6[:100])
    # "Query it": the rows of the token 'dog', their vectors, its centroid, the embeddings
    rows, X, c, E = (query.ns[k] for k in ("rows", "X", "c", "E"))
    assert len(rows) > 0
    want = ref.sql(
        "SELECT row FROM tokens t JOIN vocab v USING (run, token_id) "
        "WHERE t.run = ? AND v.token = 'dog' ORDER BY row",
        [RUN],
    )
    assert sorted(rows) == list(want.row)
    assert X.shape == (len(rows), D)
    assert X.dtype == np.float32
    np.testing.assert_array_equal(X, ref.h6[np.asarray(rows)])
    assert c.shape == (D,)
    np.testing.assert_allclose(c, X.mean(0), rtol=1e-5, atol=1e-6)
    assert E.shape == (VOCAB, D)
    assert np.isfinite(E).all()
    assert np.abs(E).sum(1).min() > 0


def _check_format(ran: list[Ran], ref: Reference) -> None:
    by_hand, plain = ran
    # reading global row 42 through run.json's parts finds the row actstore stores there
    assert by_hand.ns["vec"].shape == (D,)
    np.testing.assert_array_equal(by_hand.ns["vec"], ref.h6[42])
    # the printed top-5 tokens are the five most frequent in the vocabulary's counts
    printed = {(t, int(n)) for t, n in _printed_table(plain.out)}
    assert printed == ref.top_tokens(5), plain.out
    np.testing.assert_array_equal(plain.ns["x"], ref.h6[:10])
    assert plain.ns["E"].shape == (VOCAB, D)


def _check_query(ran: list[Ran], ref: Reference) -> None:
    q, frames = ran
    _check_frames(frames, ref)
    assert q.shown["s.runs"] == [RUN]
    assert q.shown["s.sites('minilm')"] == [f"hidden.{i}" for i in range(7)]
    assert q.shown["s.run_info('minilm')"] == ref.run_json
    df = q.shown["rel.df()"]
    want = ref.sql("SELECT row FROM tokens WHERE run = ? AND token_id = 2001", [RUN]).row
    assert len(df) > 0
    assert sorted(df.row) == sorted(want)
    assert len(q.shown["rel.fetchall()"]) == len(df)
    assert q.shown["rel.arrow()"].num_rows == len(df)
    assert len(q.shown["rel.fetchnumpy()"]["row"]) == len(df)
    by_rows, by_query = q.bound["X"]
    assert by_rows.shape == (len(df), D)
    assert by_rows.dtype == np.float32  # the stored dtype of this store
    np.testing.assert_array_equal(by_rows, ref.h6[df.row.to_numpy()])
    pos1 = ref.sql("SELECT row FROM tokens WHERE run = ? AND pos = 1 ORDER BY row", [RUN]).row
    assert by_query.shape == (len(pos1), D)
    assert by_query.dtype == np.float32
    np.testing.assert_array_equal(by_query, ref.h6[pos1.to_numpy()])
    # after the loop: the last batch of iter_vectors ends at the last row
    rows, X = q.ns["rows"], q.ns["X"]
    assert X.shape == (len(rows), D)
    assert rows[-1] == len(ref.h6) - 1
    np.testing.assert_array_equal(X, ref.h6[rows])
    assert q.ns["E"].shape == (VOCAB, D)
    assert q.ns["E"].dtype == np.float32
    assert q.ns["c"].shape == (D,)
    assert q.ns["c"].dtype == np.float32


def _check_frames(f: Ran, ref: Reference) -> None:
    df = f.ns["df"]
    want = ref.sql(
        "SELECT row FROM tokens WHERE run = ? AND NOT special ORDER BY row LIMIT 5", [RUN]
    ).row
    assert df["row"].tolist() == want.tolist()
    np.testing.assert_array_equal(np.stack(df["vector"]), ref.h6[want.to_numpy()])
    assert {"token", "doc_id", "start", "end"} <= set(df.columns)
    ds = f.ns["ds"]
    assert ds["hidden.6"].shape == ref.h6.shape
    means = f.ns["means"]
    tid = int(means["token_id"][0])
    rows = ref.sql("SELECT row FROM tokens WHERE run = ? AND token_id = ?", [RUN, tid]).row
    np.testing.assert_allclose(
        means.values[0], ref.h6[rows.to_numpy()].astype(np.float64).mean(0), rtol=1e-4, atol=1e-5
    )


#: Each document with Python examples, and what its examples must show on the demo store.
CHECKS: dict[str, Callable[[list[Ran], Reference], None]] = {
    "README.md": _check_readme,
    "docs/format.md": _check_format,
    "docs/query.md": _check_query,
}


def test_every_doc_with_python_examples_is_checked() -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    with_examples = {str(p.relative_to(ROOT)) for p in docs if python_blocks(p)}
    assert with_examples == set(CHECKS) | set(RUN_AS_WRITTEN)


@pytest.mark.parametrize("doc", list(CHECKS))
def test_python_examples_show_what_they_say(
    doc: str, minilm_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the docs call the store demo.acts or my.acts; both are the real MiniLM store here
    for name in ("demo.acts", "my.acts"):
        (tmp_path / name).symlink_to(minilm_store)
    monkeypatch.chdir(tmp_path)
    ran = [run_example(b, f"{doc} example {i}") for i, b in enumerate(python_blocks(ROOT / doc))]
    CHECKS[doc](ran, Reference.read(minilm_store))


# -- README commands ----------------------------------------------------------------------

#: Flags whose value names a result saved in the store, and flags whose value is a file.
SAVES, WRITES = ("--save", "--name"), ("--out", "--plot")


def readme_commands() -> list[str]:
    """The README's ``actstore ... demo.acts ...`` lines, in order."""
    text = (ROOT / "README.md").read_text()
    return [
        line
        for block in re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
        for line in block.splitlines()
        if line.startswith("actstore ") and " demo.acts " in line
    ]


def _flag(argv: list[str], flag: str) -> str | None:
    return argv[argv.index(flag) + 1] if flag in argv else None


def readme_command_groups() -> list[list[str]]:
    """The README commands, a command that reads a saved result grouped after the one that
    saves it (each group is one test, so groups may run in any order)."""
    groups: list[list[str]] = []
    saved_by: dict[str, int] = {}
    for line in readme_commands():
        argv = shlex.split(line)
        reads = {i for name, i in saved_by.items() if re.search(rf"\b{re.escape(name)}\b", line)}
        assert len(reads) <= 1, f"{line!r} reads results of several commands"
        (i,) = reads or {len(groups)}
        if i == len(groups):
            groups.append([])
        groups[i].append(line)
        saved_by |= {name: i for f in SAVES if (name := _flag(argv, f))}
    return groups


def _group_id(group: list[str]) -> str:
    words = [shlex.split(line)[1 : shlex.split(line).index("demo.acts")] for line in group]
    return "+".join("-".join(w) for w in words)


def test_readme_shows_the_demo_commands() -> None:
    assert len(readme_commands()) >= 8
    ids = [_group_id(g) for g in readme_command_groups()]
    assert len(set(ids)) == len(ids)
    assert set(SLOW) <= set(ids), "SLOW names a command the README no longer shows"


@pytest.fixture(scope="module")
def demo_cwd(minilm_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with one writable copy of the session store as ``demo.acts``, shared by the
    README commands (each saves its results and files under its own names)."""
    cwd = tmp_path_factory.mktemp("readme")
    shutil.copytree(minilm_store, cwd / "demo.acts")
    return cwd


def _check_command(argv: list[str], out: str, err: str, cwd: Path) -> None:
    import actstore

    line = shlex.join(argv)
    assert (out + err).strip(), f"{line} printed nothing"
    if "--json" in argv:
        assert json.loads(out), f"{line} printed empty JSON"
    with actstore.open(cwd / "demo.acts") as s:
        for path in (cwd / p for f in WRITES if (p := _flag(argv, f))):
            assert path.stat().st_size > 0, f"{line} wrote an empty {path.name}"
            if path.suffix == ".npy":
                rows = s.sql(_flag(argv, "--rows") or "SELECT row FROM tokens").df().row
                want = Reference.read(s.path, str(_flag(argv, "--site"))).h6[rows]
                np.testing.assert_array_equal(np.load(path), want)
            if path.suffix == ".png":
                assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        for name in (n for f in SAVES if (n := _flag(argv, f))):
            ((n_rows,),) = s.sql(f"SELECT count(*) FROM {name}").fetchall()
            assert n_rows > 0, f"{line} saved an empty result {name}"
        if argv[0] == "sql":
            df = s.sql(argv[2]).df()
            assert len(df) > 0, f"{line} selects nothing"
            for v in df.iloc[:, 0]:
                assert str(v) in out, f"{line} did not print {v}"


#: README commands over a minute on 2 shared cores, and where the time goes (none today:
#: ``similarity cka`` took 43-102 s until compare_sites computed each symmetric pair once
#: and each site's RDM ranks once, ~5 s now).
SLOW: dict[str, str] = {}


@pytest.mark.parametrize(
    "group",
    [
        pytest.param(g, id=_group_id(g), marks=pytest.mark.slow if _group_id(g) in SLOW else ())
        for g in readme_command_groups()
    ],
)
def test_readme_command_runs(
    group: list[str],
    demo_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from actstore.cli import main

    monkeypatch.chdir(demo_cwd)
    for line in group:
        argv = shlex.split(line)[1:]
        assert main(argv) == 0, line
        _check_command(argv, *capsys.readouterr(), demo_cwd)


#: Dicts whose keys are data (token strings, matrix names, atom ids), not fields.
_DATA_KEYED = {"counts_by_token", "matrices", "top_rows", "config", "spec"}


def _fields(obj: object, parent: str = "") -> set[str]:
    out: set[str] = set()
    if isinstance(obj, dict):
        data_keyed = parent in _DATA_KEYED or (
            parent == "counts"
            and all(isinstance(v, int) for v in obj.values())
            and not {"docs", "tokens"} & set(obj)
        )
        for key, value in obj.items():
            if not data_keyed:
                out.add(str(key))
            out |= _fields(value, str(key))
    elif isinstance(obj, list):
        for item in obj[:5]:
            out |= _fields(item, parent)
    return out


def test_every_printed_field_is_explained(
    minilm_store: Path, minilm_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """docs/outputs.md names every field that an analysis or `info` prints with --json."""
    import json
    import shutil

    from actstore.cli import main
    from actstore.extract import ExtractConfig, extract

    st = str(tmp_path / "o.acts")
    shutil.copytree(minilm_store, st)
    gst = str(tmp_path / "g.acts")  # a gradient run (MiniLM has no head: cosine-to-text)
    demo = ROOT / "src" / "actstore" / "data" / "demo_corpus.jsonl"
    extract(
        ExtractConfig(
            model=str(minilm_dir),
            data=str(demo),
            store=gst,
            run="g",
            sites="grad.embed",
            objective="cosine-to-text",
            objective_target="a dog barks",
            limit_docs=4,
            device="cpu",
            quiet=True,
        )
    )
    from actstore.extract.optimize import OptimizeConfig, optimize

    ost = str(tmp_path / "t.acts")  # an optimisation run (trajectories)
    optimize(
        OptimizeConfig(
            model=str(minilm_dir),
            data=str(demo),
            store=ost,
            run="t",
            objective="cosine-to-text",
            objective_target="a dog barks",
            limit_docs=2,
            steps=2,
            every=1,
            device="cpu",
            quiet=True,
        )
    )
    commands = [
        ["similarity", "pairwise", st, "--matrix", "embed", "--sample", "300"],
        ["similarity", "anisotropy", st, "--max-rows", "500", "--pairs", "500"],
        ["similarity", "centroids", st, "--site", "hidden.6", "--token", "dog", "--token", "cat"],
        [
            "similarity",
            "sinks",
            st,
            "--site",
            "hidden.6",
            "--threshold",
            "0.5",
            "--max-embed-cos",
            "0.9",
            "--top-k",
            "3",
        ],
        ["similarity", "nearest", st, "--token", "dog", "-k", "2"],
        ["similarity", "cka", st, "--sites", "hidden.1,hidden.2", "--max-rows", "300"],
        ["map", "fit", st, "--x", "hidden.0", "--y", "hidden.1", "--name", "m"],
        ["map", "eval", st, "m"],
        [
            "sparse",
            "encode",
            st,
            "--source",
            "hidden.6",
            "--rows",
            "SELECT row FROM tokens LIMIT 200",
            "--name",
            "e",
        ],
        ["sparse", "atoms", st, "e", "--first", "1", "--top", "1", "--nearest", "embed"],
        ["info", st],
        ["similarity", "grad", gst, "--top-k", "1"],
        ["similarity", "trajectory", ost, "--pairs", "200"],
        ["info", gst],
    ]
    text = (ROOT / "docs" / "outputs.md").read_text()
    missing = {}
    for argv in commands:
        assert main([*argv, "--json"]) == 0, argv
        fields = _fields(json.loads(capsys.readouterr().out))
        gaps = sorted(f for f in fields if f"`{f}`" not in text and not f.isdigit())
        if gaps:
            missing[" ".join(argv[:2])] = gaps
    assert missing == {}


# -- docs run from an empty folder, output compared -----------------------------------------

#: Docs whose bash and Python blocks run in order from an empty folder (each block in its
#: own process, as a reader would paste it), a ```text block right after a block being
#: what that block prints.
RUN_AS_WRITTEN = ("docs/gradients.md",)

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def doc_steps(path: Path) -> list[tuple[str, str, str | None]]:
    """``(language, code, shown output or None)`` for each bash and python block."""
    blocks = re.findall(r"```(\w+)\n(.*?)```", path.read_text(), flags=re.DOTALL)
    steps: list[tuple[str, str, str | None]] = []
    for i, (lang, code) in enumerate(blocks):
        if lang in ("bash", "python"):
            after = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
            steps.append((lang, code, after[1] if after[0] == "text" else None))
    return steps


def _words(out: str) -> list[str]:
    """Printed text as words: whitespace runs and the rules under table headers (whose
    widths follow the values) do not count."""
    lines = [ln for ln in out.splitlines() if ln.strip() and set(ln.strip()) - set("- ")]
    return " ".join(lines).split()


def _unit(number: str) -> float:
    """One unit in the last printed digit of ``number`` (``0.35`` -> 0.01)."""
    mantissa, _, exponent = number.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    return float(10.0 ** (int(exponent or 0) - decimals))


def same_output(got: str, shown: str, rtol: float = 1e-3) -> bool:
    """``got`` prints what ``shown`` does: the same words, each number within ``rtol`` or
    one unit of its last shown digit (the last digit may round differently elsewhere)."""
    a, b = _words(got), _words(shown)
    if len(a) != len(b):
        return False
    for x, y in zip(a, b, strict=True):
        if _NUMBER.sub("#", x) != _NUMBER.sub("#", y):
            return False
        for nx, ny in zip(_NUMBER.findall(x), _NUMBER.findall(y), strict=True):
            if abs(float(nx) - float(ny)) > max(rtol * abs(float(ny)), _unit(ny)):
                return False
    return True


def test_same_output_compares_words_and_numbers() -> None:
    shown = "says  loss\n----  ------\nbark  0.5161\n"
    assert same_output("says   loss\n-----  -----\nbark   0.51612\n", shown)
    assert not same_output("says  loss\n----  ----\nmoo   0.5161\n", shown)
    assert same_output("says  loss\n----  ----\nbark  0.5162\n", shown)
    assert not same_output("says  loss\n----  ----\nbark  0.5175\n", shown)
    assert not same_output("says  loss\n----  ----\nbark  0.52\n", shown)
    assert not same_output("says  loss\n----  ----\nbark  0.5161\nmoo  0.1\n", shown)


@pytest.mark.parametrize("doc", RUN_AS_WRITTEN)
def test_doc_runs_as_written(doc: str, minilm_dir: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = dict(os.environ)
    # `actstore` and `python` as a reader's shell finds them: the ones of this environment
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *sys.path])
    for lang, code, shown in doc_steps(ROOT / doc):
        argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable]
        done = subprocess.run(
            argv,
            input=code if lang == "python" else None,
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{doc}: {code}\n{done.stderr}"
        if shown is not None:
            assert same_output(done.stdout, shown), f"{doc}: {code}\nprinted:\n{done.stdout}"
