"""Mutation testing of the modules whose mistakes would be silent (a small AST mutator, no dependency).

    python tests/mutation.py                      # every target, report in runs/mutation/
    python tests/mutation.py --module export.check --max-per-module 40 --json

Each target module is parsed with `ast`; inside function bodies (never docstrings, annotations,
decorators or defaults) it makes one mutant per site and kind:

    compare    < <= > >= == != is / is not, in / not in: each swapped to its neighbour
    boolop     and <-> or
    not        `not x` -> `x`
    arith      + <-> -, * <-> /, // -> /, also in +=, -=, *=, /=  (not on strings)
    const      ints n -> n + 1, floats x1.1 (0.0 -> 1.0), True <-> False
    return     `return X` -> `return None` (X not already None or False)
    statement  a call statement, `raise`, or an assignment to an attribute or item -> `pass`
    minmax     min <-> max, minimum <-> maximum

The mutated text replaces only the node's own span of the file (comments and line numbers
elsewhere are kept). For each mutant the module's fast tests (TARGETS below) are run as
`pytest -x -q -p no:cacheprovider` with PYTHONDONTWRITEBYTECODE=1, and the module's own .pyc
files are deleted whenever its source is replaced, so no .pyc can stand in for the mutated source
(PYTHONPYCACHEPREFIX is unset for the runs: the .pyc would be beside it). The default runner forks
each run from this process, which has imported pytest, numpy and scikit-learn once (never the
project), and runs every survivor again in a fresh `python -m pytest`: only if that passes too does
the mutant count as survived (`--runner subprocess`: a fresh interpreter for every run). A failing
run kills the mutant; a run past the timeout kills it too and is counted apart as a timeout (a
mutant that hangs the code is caught, not missed). A baseline run of the same tests on the
unmutated module must pass first, or the module is reported as such and not mutated.

By default the work happens in a scratch copy of the tree (the files git knows, tracked and
untracked, not ignored; `--tree` chooses where), so the checkout is never written and someone
running the test suite meanwhile sees no mutant; `--in-place` mutates the checkout itself (CI).
Either way the original bytes are first saved under OUT/backup/, written back after every mutant
(try/finally, also on Ctrl-C and SIGTERM), and checked by sha256 at the end of each module; a run
killed harder than that (SIGKILL) is repaired from the backup by the next run.

Report: OUT/report.md (a table per module: mutants, killed, survived, timeouts; every survivor
with file:line:col, the original and the mutated code) and OUT/report.json (`--json` prints it).
Sampling (`--max-per-module`) is seeded and deterministic. docs/testing.md, "Mutation testing",
lists the survivors of the last measured run and why each is acceptable, or says it is a gap.
"""

from __future__ import annotations

import argparse
import ast
import copy
import datetime
import hashlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parent.parent
PYTEST = ["-m", "pytest", "-x", "-q", "-p", "no:cacheprovider"]
KINDS = ("compare", "boolop", "not", "arith", "const", "return", "statement", "minmax")


@dataclass(frozen=True)
class Target:
    """A module (or one class of it: `scope`) and the fast tests that must catch its mutants: each
    entry of `suites` is one pytest invocation's arguments; a test file that does not exist
    (yet) is left out of it, and an invocation left without a file is skipped."""
    name: str
    path: str
    suites: Tuple[Tuple[str, ...], ...]
    scope: Optional[str] = None  # a class (or function) name: only the functions inside it


# Chosen by reading the tests: each selection exercises the module directly and runs in seconds.
# Left out on purpose: tests needing a trained run or bundle (tiny_run / tiny_bundle fixtures:
# a minute of training before the first test, per mutant), heavy tests, real-data tests.
TARGETS: Tuple[Target, ...] = (
    Target("export.check", "export/check.py", (
        ("tests/test_export_gate.py",),
        ("tests/test_fracture_map.py", "-k", "gates_each_source or letterbox_padding"),
    )),
    Target("train.metrics", "train/metrics.py", (
        ("tests/test_metrics.py",),
        ("tests/test_localisation.py", "-k", "wilson_interval"),
    )),
    Target("edge_runtime.preprocess", "edge_runtime/preprocess.py", (
        ("tests/test_imageio_preprocess.py", "tests/test_augment.py"),
        ("tests/test_edge_runtime.py", "-k", "content_check_works_at_every_input_size"),
        ("tests/test_fracture_map.py", "-k", "letterbox"),
        ("tests/test_localisation.py", "-k", "heat_is_mapped"),
    )),
    Target("edge_runtime.bundle", "edge_runtime/bundle.py", (
        ("tests/test_robustness.py", "-k", "manifest or swapped or symlink or model_whose or exit_codes"),
        ("tests/test_signing.py", "tests/test_packaging.py", "-k", "signed or signing or keygen or packaged"),
        ("tests/test_messages.py", "-k", "training_run"),
        ("tests/test_device_update.py", "-k", "damaged"),
        ("tests/test_demo.py", "-k", "says_where_to_look"),  # the default bundle, found without --bundle
    )),
    Target("device.service.Ledger", "device/service.py", (
        ("tests/test_service_faults.py", "-k", "torn or index or kill_9 or readable_by_the_service_user"),
        ("tests/test_service_trust.py", "-k", "logs_tail or damaged_index or results_log_that_is_not or "
                                              "unwritable_log or idle_scan_opens or banners_before"),
        ("tests/test_benchmarks.py", "-k", "page_benchmark"),
    ), scope="Ledger"),
)


# --- finding mutants -------------------------------------------------------------------------

_CMP = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
        ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_ARITH = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div}
_MINMAX = {"min": "max", "max": "min", "minimum": "maximum", "maximum": "minimum", "amin": "amax", "amax": "amin"}
_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=", ast.Is: "is",
           ast.IsNot: "is not", ast.In: "in", ast.NotIn: "not in", ast.Add: "+", ast.Sub: "-", ast.Mult: "*",
           ast.Div: "/", ast.FloorDiv: "//", ast.And: "and", ast.Or: "or"}


@dataclass
class Mutant:
    index: int  # position in the module's list (source order): with the source, identifies it
    kind: str
    line: int
    col: int  # 1-based, in characters
    what: str  # e.g. "`<` -> `<=`"
    original: str  # the node's code as written (first line, shortened)
    mutated: str  # what replaces it
    start: int = 0  # byte span of the replaced node in the file
    end: int = 0
    text: str = ""  # the replacement
    status: str = "not run"  # killed | survived | timeout | invalid
    killed_by: str = ""
    seconds: float = 0.0

    def public(self) -> Dict[str, object]:
        return {k: v for k, v in asdict(self).items() if k not in ("start", "end", "text")}


def _is_docstring(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str)


def _functions(tree: ast.Module, scope: Optional[str]) -> Iterator[ast.AST]:
    """Top-level functions and methods (at any class depth), each once; with `scope`, only those
    whose qualified name is it or starts with it plus a dot."""
    def walk(body, prefix):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield prefix + node.name, node
            elif isinstance(node, ast.ClassDef):
                yield from walk(node.body, prefix + node.name + ".")
    for qual, fn in walk(tree.body, ""):
        if scope is None or qual == scope or qual.startswith(scope + "."):
            yield fn


def _code_nodes(fn: ast.AST) -> Iterator[ast.AST]:
    """Every node of a function's body, in field order, leaving out its docstring, annotations,
    decorators and default values (also of functions and lambdas nested in it) and f-strings'
    insides (their positions are not reliable before Python 3.12, and they are messages)."""
    body = list(fn.body)
    if body and _is_docstring(body[0]):
        body = body[1:]

    def visit(node):
        yield node
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            kids = node.body[1:] if node.body and _is_docstring(node.body[0]) else node.body
        elif isinstance(node, ast.Lambda):
            kids = [node.body]
        elif isinstance(node, ast.AnnAssign):
            kids = [node.target] + ([node.value] if node.value is not None else [])
        elif isinstance(node, (ast.JoinedStr, ast.ClassDef)):
            kids = []
        else:
            kids = list(ast.iter_child_nodes(node))
        for k in kids:
            yield from visit(k)

    for stmt in body:
        yield from visit(stmt)


def _is_generator(fn: ast.AST) -> bool:
    for node in _code_nodes(fn):
        if isinstance(node, (ast.Yield, ast.YieldFrom)):
            return True
    return False


def _stringy(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (isinstance(node, ast.Constant) and isinstance(node.value, (str, bytes)))


def _nudge(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return 1.0 if value == 0.0 else float(f"{value * 1.1:.6g}")
    return None


def _sites(fn: ast.AST) -> Iterator[Tuple[str, ast.AST, str, ast.AST]]:
    """(kind, node, what, replacement node or statement) for each mutant of one function."""
    generator = _is_generator(fn)
    for node in _code_nodes(fn):
        if isinstance(node, ast.Compare):
            for i, op in enumerate(node.ops):
                new = copy.deepcopy(node)
                new.ops[i] = _CMP[type(op)]()
                yield "compare", node, f"`{_SYMBOL[type(op)]}` -> `{_SYMBOL[_CMP[type(op)]]}`", new
        elif isinstance(node, ast.BoolOp):
            new = copy.deepcopy(node)
            new.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
            yield "boolop", node, f"`{_SYMBOL[type(node.op)]}` -> `{_SYMBOL[type(new.op)]}`", new
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            yield "not", node, "`not` removed", copy.deepcopy(node.operand)
        elif isinstance(node, ast.BinOp) and type(node.op) in _ARITH and not (
                _stringy(node.left) or _stringy(node.right)):
            new = copy.deepcopy(node)
            new.op = _ARITH[type(node.op)]()
            yield "arith", node, f"`{_SYMBOL[type(node.op)]}` -> `{_SYMBOL[type(new.op)]}`", new
        elif isinstance(node, ast.AugAssign) and type(node.op) in _ARITH and not _stringy(node.value):
            new = copy.deepcopy(node)
            new.op = _ARITH[type(node.op)]()
            yield "arith", node, f"`{_SYMBOL[type(node.op)]}=` -> `{_SYMBOL[type(new.op)]}=`", new
        elif isinstance(node, ast.Constant) and _nudge(node.value) is not None:
            new = ast.Constant(_nudge(node.value))
            yield "const", node, f"`{node.value!r}` -> `{new.value!r}`", new
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name in _MINMAX:
                new = copy.deepcopy(node)
                if isinstance(f, ast.Name):
                    new.func.id = _MINMAX[name]
                else:
                    new.func.attr = _MINMAX[name]
                yield "minmax", node, f"`{name}` -> `{_MINMAX[name]}`", new
        if isinstance(node, ast.Return) and node.value is not None and not generator and not (
                isinstance(node.value, ast.Constant) and node.value.value in (None, False)):
            yield "return", node, "`return X` -> `return None`", ast.Return(ast.Constant(None))
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) or isinstance(node, ast.Raise) or (
                isinstance(node, (ast.Assign, ast.AugAssign)) and all(
                    isinstance(t, (ast.Attribute, ast.Subscript))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target]))):
            yield "statement", node, "statement removed", ast.Pass()


def _line_starts(src: bytes) -> List[int]:
    starts = [0]
    for i, b in enumerate(src):
        if b == 0x0A:
            starts.append(i + 1)
    return starts


def _short(text: str, limit: int = 110) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def find_mutants(src: bytes, scope: Optional[str] = None, kinds: Sequence[str] = KINDS) -> List[Mutant]:
    """Every mutant of the module source `src` (bytes, as on disk), in source order. Each is
    checked to parse and to differ from the original; those that do not are left out."""
    tree = ast.parse(src)
    starts = _line_starts(src)
    base = ast.dump(tree)
    seen, out = set(), []
    for fn in _functions(tree, scope):
        for kind, node, what, new in _sites(fn):
            if kind not in kinds:
                continue
            start = starts[node.lineno - 1] + node.col_offset  # col offsets count UTF-8 bytes
            end = starts[node.end_lineno - 1] + node.end_col_offset
            if (start, end, kind, what) in seen:
                continue
            seen.add((start, end, kind, what))
            text = ast.unparse(new)
            original = src[start:end].decode("utf-8")
            if kind == "const" and original[:2].lower() in ("0o", "0x", "0b") and isinstance(new.value, int):
                text = {"0o": oct, "0x": hex, "0b": bin}[original[:2].lower()](new.value)  # 0o600 -> 0o601
                what = f"`{original}` -> `{text}`"
            if isinstance(node, ast.expr):
                text = f"({text})"  # keeps the precedence the original node had
            mutated = src[:start] + text.encode("utf-8") + src[end:]
            try:
                if ast.dump(ast.parse(mutated)) == base:
                    continue
            except SyntaxError:
                continue
            col = len(src[starts[node.lineno - 1]:start].decode("utf-8")) + 1
            out.append(Mutant(0, kind, node.lineno, col, what, _short(original), _short(text), start, end, text))
    out.sort(key=lambda m: (m.start, -m.end, KINDS.index(m.kind), m.what))
    for i, m in enumerate(out):
        m.index = i
    return out


def apply(src: bytes, m: Mutant) -> bytes:
    return src[:m.start] + m.text.encode("utf-8") + src[m.end:]


def sample(mutants: List[Mutant], n: Optional[int], seed: int, name: str) -> List[Mutant]:
    """At most n mutants, chosen by a generator seeded with (seed, module name): the same choice
    every run of the same source; kept in source order."""
    if n is None or len(mutants) <= n:
        return list(mutants)
    rng = random.Random(f"{seed}:{name}")
    return sorted(rng.sample(mutants, n), key=lambda m: m.index)


# --- the work tree and restoring ---------------------------------------------------------------

def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tree_files(root: Path) -> List[str]:
    """The files of the checkout as git sees them (tracked and untracked, not ignored); without
    git, every file outside virtual environments, caches, node_modules and runs/."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True, timeout=60).stdout
        return [p for p in out.decode("utf-8", "surrogateescape").split("\0") if p]
    except (OSError, subprocess.SubprocessError):
        skip = {".git", "__pycache__", "node_modules", "runs", ".pytest_cache"}
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith(".venv"))
            rel = Path(dirpath).relative_to(root)
            files += [str(rel / f) for f in sorted(filenames) if not f.endswith(".pyc")]
        return files


def copy_tree(root: Path, dest: Path) -> Path:
    for rel in _tree_files(root):
        src = root / rel
        if src.is_symlink() or not src.is_file():
            continue  # deleted in the working tree, or a link git tracks: not needed to test
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)
    return dest


def drop_pyc(path: Path) -> None:
    """Delete the compiled copies of one module (__pycache__/NAME.*.pyc beside it)."""
    for f in (path.parent / "__pycache__").glob(path.stem + ".*.pyc"):
        try:
            f.unlink()
        except FileNotFoundError:
            pass


class Restorer:
    """Holds a module's original bytes (and a backup file with a marker naming it) and puts them
    back: after each mutant, at the end, and on the next run if this one was killed."""

    def __init__(self, path: Path, backup_dir: Path):
        self.path = path
        self.original = path.read_bytes()
        self.digest = sha256(self.original)
        self.stat = path.stat()
        backup_dir.mkdir(parents=True, exist_ok=True)
        self.backup = backup_dir / (self.digest[:16] + "-" + path.name)
        self.backup.write_bytes(self.original)
        self.marker = backup_dir / "IN_PROGRESS.json"
        self.marker.write_text(json.dumps({"path": str(path), "backup": str(self.backup), "sha256": self.digest}))

    def write(self, data: bytes) -> None:
        """Replace the file whole (a reader never sees half of it), keeping its mode, and delete
        its compiled copies: whatever imports it next compiles what is there now."""
        tmp = self.path.with_name(f".{self.path.name}.mutant-{os.getpid()}")
        tmp.write_bytes(data)
        os.chmod(tmp, self.stat.st_mode & 0o7777)
        os.replace(tmp, self.path)
        drop_pyc(self.path)

    def restore(self) -> None:
        if self.path.read_bytes() != self.original:
            self.write(self.original)
        drop_pyc(self.path)  # a .pyc a test's own interpreter wrote of a mutant (without -B) goes too
        os.utime(self.path, ns=(self.stat.st_atime_ns, self.stat.st_mtime_ns))

    def verify_and_close(self) -> bool:
        self.restore()
        ok = sha256(self.path.read_bytes()) == self.digest
        if ok:
            self.marker.unlink(missing_ok=True)
            self.backup.unlink(missing_ok=True)
        return ok


def recover(backup_dir: Path) -> Optional[str]:
    """A run killed by SIGKILL left a mutant in place: put the backup back (and say so)."""
    marker = backup_dir / "IN_PROGRESS.json"
    if not marker.is_file():
        return None
    info = json.loads(marker.read_text())
    path, backup = Path(info["path"]), Path(info["backup"])
    msg = None
    if backup.is_file() and sha256(backup.read_bytes()) == info["sha256"]:
        if path.exists() and sha256(path.read_bytes()) != info["sha256"]:
            path.write_bytes(backup.read_bytes())
            msg = f"an earlier run was killed with a mutant of {path} in place: restored from {backup}"
        backup.unlink()
    marker.unlink()
    return msg


class _Terminated(KeyboardInterrupt):
    pass


def _on_sigterm(signum, frame):
    raise _Terminated()


# --- running the tests ------------------------------------------------------------------------

def _existing(args: Sequence[str], tree: Path) -> Tuple[List[str], List[str]]:
    """The invocation's arguments without the test files missing from the tree, and those; no
    arguments at all when none of its files is there."""
    kept, missing, files, option_value = [], [], 0, False
    for a in args:
        if option_value or a.startswith("-"):
            kept.append(a)
            option_value = not option_value and a in ("-k", "-m")
        elif (tree / a.split("::")[0]).exists():
            kept.append(a)
            files += 1
        else:
            missing.append(a)
    return (kept if files else []), missing


def _environment(tree: Path, in_place: bool) -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("PYTHONPYCACHEPREFIX", None)  # .pyc files beside the sources, where drop_pyc finds them
    if not in_place:  # the copy first, also for the tests' own subprocesses (not the editable install)
        env["PYTHONPATH"] = os.pathsep.join([str(tree)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _why(text: str, rc: int) -> str:
    lines = [ln for ln in text.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    return f"rc {rc}: " + _short(lines[0] if lines else (text.strip().splitlines() or [""])[-1], 160)


def _end_group(pid: int) -> None:
    """SIGKILL the process group of a child we started (its own session: its id is the group's)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _subprocess_run(args: List[str], tree: Path, env: Dict[str, str], left: float) -> Tuple[Optional[int], str]:
    """`python -m pytest -x -q -p no:cacheprovider ARGS` in a fresh interpreter: (rc or None on timeout, output)."""
    proc = subprocess.Popen([sys.executable, *PYTEST, *args], cwd=tree, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=left)
    except subprocess.TimeoutExpired:
        _end_group(proc.pid)
        proc.communicate()
        return None, ""
    except BaseException:
        _end_group(proc.pid)
        proc.wait()
        raise
    return proc.returncode, out.decode("utf-8", "replace")


PRELOAD = ("pytest", "numpy", "PIL.Image", "sklearn.metrics")  # third-party only, never the project


def preload() -> None:
    """Import what every test run would import anyway, once, before forking (fork runner)."""
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:
            pass


def _loaded_from(tree: Path) -> List[str]:
    """Modules of this process loaded from the work tree (other than this file): a forked child
    would use them as they were, not as the mutant has them."""
    here, inside = Path(__file__).resolve(), []
    for name, mod in list(sys.modules.items()):
        f = getattr(mod, "__file__", None)
        if f and Path(f).resolve() != here:
            try:
                Path(f).resolve().relative_to(tree)
                inside.append(name)
            except ValueError:
                pass
    return inside


def _fork_run(args: List[str], tree: Path, env: Dict[str, str], left: float) -> Tuple[Optional[int], str]:
    """pytest.main(-x -q -p no:cacheprovider ARGS) in a forked child of this process (which has
    imported pytest, numpy, scikit-learn but nothing of the project): the child imports the
    project from the tree, as a fresh interpreter would, without paying for the rest again."""
    fd, out_path = tempfile.mkstemp(prefix="mutation-out-")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 99
        try:
            os.setsid()
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.chdir(tree)
            os.environ.clear()
            os.environ.update(env)
            sys.dont_write_bytecode = True
            sys.pycache_prefix = None
            scripts = {str(Path(__file__).resolve().parent), ""}
            sys.path[:] = [str(tree)] + [p for p in sys.path if p not in scripts and p != str(tree)]
            import pytest
            code = int(pytest.main([*PYTEST[2:], *args]))
        except BaseException:  # noqa: BLE001 - whatever happens, the child must not go on as the parent
            import traceback
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(fd)
    try:
        deadline, rc = time.monotonic() + left, None
        try:
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    rc = os.waitstatus_to_exitcode(status)
                    break
                if time.monotonic() > deadline:
                    _end_group(pid)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.02)
        except BaseException:
            _end_group(pid)
            os.waitpid(pid, 0)
            raise
        _end_group(pid)  # anything the tests left running in the child's group
        return rc, Path(out_path).read_text("utf-8", "replace") if rc else ""
    finally:
        os.unlink(out_path)


RUNNERS = {"fork": _fork_run, "subprocess": _subprocess_run}


def run_tests(invocations: List[List[str]], tree: Path, env: Dict[str, str], timeout: float,
              runner: str = "subprocess") -> Tuple[str, str, float]:
    """('passed' | 'failed' | 'timeout', why, seconds): the invocations in turn, stopping at the
    first that fails, all within `timeout` seconds."""
    t0 = time.monotonic()
    for args in invocations:
        left = timeout - (time.monotonic() - t0)
        if left <= 0:
            return "timeout", f"over {timeout:.0f} s before " + " ".join(args), time.monotonic() - t0
        rc, out = RUNNERS[runner](args, tree, env, left)
        if rc is None:
            return "timeout", f"over {timeout:.0f} s: " + " ".join(args), time.monotonic() - t0
        if rc != 0:
            return "failed", _why(out, rc), time.monotonic() - t0
    return "passed", "", time.monotonic() - t0


# --- one module -------------------------------------------------------------------------------

@dataclass
class ModuleResult:
    name: str
    path: str
    scope: Optional[str]
    tests: List[List[str]]
    missing_tests: List[str]
    total: int = 0  # mutants found
    mutants: List[Mutant] = field(default_factory=list)  # those run (all, or the sample)
    baseline: str = ""
    baseline_seconds: float = 0.0
    timeout: float = 0.0
    runner: str = ""
    restored: bool = True
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(m.status == status for m in self.mutants)

    def summary(self) -> Dict[str, object]:
        return {"module": self.name, "file": self.path, "scope": self.scope, "found": self.total,
                "run": len(self.mutants), "killed": self.count("killed") + self.count("timeout"),
                "survived": self.count("survived"), "timeouts": self.count("timeout"),
                "baseline": self.baseline, "restored": self.restored, "seconds": round(self.seconds, 1)}


def run_module(target: Target, tree: Path, out: Path, *, in_place: bool, max_mutants: Optional[int], seed: int,
               timeout: Optional[float], kinds: Sequence[str], runner: str = "subprocess", log=print) -> ModuleResult:
    """Baseline, then each (sampled) mutant of one target; with the fork runner every survivor is
    run again in a fresh interpreter (`python -m pytest`) and counts as killed if that fails."""
    path = tree / target.path
    invocations, missing = [], []
    for suite in target.suites:
        kept, gone = _existing(suite, tree)
        missing += gone
        if kept:
            invocations.append(kept)
    res = ModuleResult(target.name, target.path, target.scope, invocations, missing)
    src = path.read_bytes()
    found = find_mutants(src, target.scope, kinds)
    res.total = len(found)
    res.mutants = sample(found, max_mutants, seed, target.name)
    t0 = time.monotonic()
    env = _environment(tree, in_place)
    drop_pyc(path)
    if not invocations:
        res.baseline = "no tests found"
        return res
    status, why, secs = run_tests(invocations, tree, env, timeout or 600)
    fresh = secs
    if status == "passed" and runner != "subprocess":
        if _loaded_from(tree):
            log(f"[{target.name}] modules of the tree already loaded here ({', '.join(_loaded_from(tree)[:3])}...): "
                "a forked child would not see mutants, so the subprocess runner is used")
            runner = "subprocess"
        else:
            status, why, secs = run_tests(invocations, tree, env, timeout or 600, runner)
    res.baseline_seconds = secs
    if status != "passed":
        res.baseline = f"baseline {status}: {why}"
        log(f"[{target.name}] the tests do not pass on the unmutated module ({why}): not mutated")
        return res
    res.baseline = "passed"
    res.runner = runner
    res.timeout = timeout or max(10.0, 5 * secs)
    confirm_timeout = timeout or max(10.0, 5 * fresh)  # a fresh interpreter starts slower
    log(f"[{target.name}] {len(found)} mutants, running {len(res.mutants)}; baseline {secs:.1f} s ({runner}; "
        f"{fresh:.1f} s fresh), timeout {res.timeout:.0f} s; missing tests: {', '.join(missing) or 'none'}")
    restorer = Restorer(path, out / "backup")
    try:
        for k, m in enumerate(res.mutants, 1):
            try:
                restorer.write(apply(src, m))
                status, why, m.seconds = run_tests(invocations, tree, env, res.timeout, runner)
                if status == "passed" and runner != "subprocess":  # confirm in a fresh interpreter
                    status, why, more = run_tests(invocations, tree, env, confirm_timeout, "subprocess")
                    m.seconds += more
                    if status != "passed":
                        why = "only in a fresh interpreter: " + why
                        log(f"[{target.name}] mutant {m.index} passed forked but not in a fresh interpreter ({why})")
            finally:
                restorer.restore()
            m.status = {"passed": "survived", "failed": "killed", "timeout": "timeout"}[status]
            m.killed_by = why
            log(f"[{target.name}] {k}/{len(res.mutants)} {m.status:8} {target.path}:{m.line} {m.kind} {m.what}"
                f" ({m.seconds:.1f} s)")
    finally:
        res.restored = restorer.verify_and_close()
        res.seconds = time.monotonic() - t0
        if not res.restored:
            log(f"[{target.name}] {path} does NOT match its original sha256; the original is in {restorer.backup}")
    return res


# --- the report -------------------------------------------------------------------------------

def to_json(results: List[ModuleResult], meta: Dict[str, object]) -> Dict[str, object]:
    return {**meta, "summary": [r.summary() for r in results],
            "modules": [{**r.summary(), "tests": r.tests, "missing_tests": r.missing_tests,
                         "baseline_seconds": round(r.baseline_seconds, 1), "timeout_s": round(r.timeout, 1),
                         "runner": r.runner,
                         "by_kind": {k: {"run": sum(m.kind == k for m in r.mutants),
                                         "survived": sum(m.kind == k and m.status == "survived" for m in r.mutants)}
                                     for k in KINDS if any(m.kind == k for m in r.mutants)},
                         "survivors": [m.public() for m in r.mutants if m.status == "survived"],
                         "mutants": [m.public() for m in r.mutants]} for r in results]}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("`", "'")


def to_markdown(report: Dict[str, object]) -> str:
    lines = ["# Mutation report", "", f"`{report['command']}` on {report['date']} "
             f"({report['python']}; seed {report['seed']}; work tree: {report['tree']}).", "",
             "| module | mutants found | run | killed | survived | timeouts (killed) | baseline | restored |",
             "|---|---|---|---|---|---|---|---|"]
    for s in report["summary"]:
        lines.append(f"| `{s['file']}`{' (' + s['scope'] + ')' if s['scope'] else ''} | {s['found']} | {s['run']} | "
                     f"{s['killed']} | {s['survived']} | {s['timeouts']} | {_cell(str(s['baseline']))} | "
                     f"{'sha256 verified' if s['restored'] else 'NO'} |")
    for mod in report["modules"]:
        lines += ["", f"## `{mod['file']}`{' (' + mod['scope'] + ')' if mod['scope'] else ''}", "",
                  "Tests: " + "; ".join(f"`{' '.join(shlex.quote(a) for a in t)}`" for t in mod["tests"])
                  + (f" (missing, skipped: {', '.join(mod['missing_tests'])})" if mod["missing_tests"] else ""), ""]
        if mod["by_kind"]:
            lines += ["| kind | run | survived |", "|---|---|---|"]
            lines += [f"| {k} | {v['run']} | {v['survived']} |" for k, v in mod["by_kind"].items()]
            lines.append("")
        if not mod["survivors"]:
            ran = mod["run"] and mod["baseline"] == "passed"
            lines.append("No survivors." if ran else f"Not run: {mod['baseline']}.")
            continue
        lines += ["Survivors:", "", "| # | where | kind | change | original | mutated |", "|---|---|---|---|---|---|"]
        for m in mod["survivors"]:
            lines.append(f"| {m['index']} | `{mod['file']}:{m['line']}:{m['col']}` | {m['kind']} | {_cell(m['what'])} | "
                         f"`{_cell(m['original'])}` | `{_cell(m['mutated'])}` |")
    return "\n".join(lines) + "\n"


# --- command line -----------------------------------------------------------------------------

def _parse_target(spec: str) -> Target:
    """'PATH[:SCOPE]=PYTEST ARGS[;PYTEST ARGS...]', e.g. 'pkg/mod.py=tests/test_mod.py -k cmp'."""
    where, _, tests = spec.partition("=")
    if not tests:
        raise argparse.ArgumentTypeError(f"--target needs PATH=TESTS, got {spec!r}")
    path, _, scope = where.partition(":")
    suites = tuple(tuple(shlex.split(s)) for s in tests.split(";") if s.strip())
    return Target(path if not scope else f"{path}:{scope}", path, suites, scope or None)


def _parse_limit(text: str) -> Tuple[Optional[str], Optional[int]]:
    """'N', 'NAME=N' or 'NAME=all' -> (NAME or None, N or None for all)."""
    name, _, n = text.rpartition("=")
    try:
        value = None if n == "all" else int(n)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N, NAME=N or NAME=all, got {text!r}") from None
    if value is not None and value < 0:
        raise argparse.ArgumentTypeError(f"a limit cannot be negative: {text!r}")
    return name or None, value


def _limit(limits: Sequence[Tuple[Optional[str], Optional[int]]], t: Target) -> Optional[int]:
    value = None
    for name, n in limits:  # the last that applies wins; a named one over the general one
        if name is None and not any(nm is not None and _matches(nm, t) for nm, _ in limits):
            value = n
        elif name is not None and _matches(name, t):
            value = n
    return value


def _matches(n: str, t: Target) -> bool:
    return n in (t.name, t.path) or t.name.endswith("." + n) or bool(t.scope and n == f"{t.path}:{t.scope}")


def _select(names: Sequence[str], targets: Sequence[Target]) -> List[Target]:
    if not names:
        return list(targets)
    chosen = []
    for n in names:
        hits = [t for t in targets if _matches(n, t)]
        if not hits:
            raise SystemExit(f"mutation: no target {n!r}; the targets are: {', '.join(t.name for t in targets)}")
        chosen += [h for h in hits if h not in chosen]
    return chosen


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python tests/mutation.py", description=__doc__.split("\n\n")[0],
        epilog="targets: " + "; ".join(f"{t.name} ({t.path})" for t in TARGETS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--module", action="append", default=[], metavar="NAME",
                   help="a target by name (export.check), path (export/check.py) or last part (check); "
                        "repeatable (default: every target)")
    p.add_argument("--target", action="append", default=[], type=_parse_target, metavar="PATH[:SCOPE]=TESTS",
                   help="an ad-hoc target instead of the built-in ones: 'pkg/mod.py=tests/test_mod.py -k x', "
                        "';' between pytest invocations (default: none)")
    p.add_argument("--max-per-module", action="append", default=[], type=_parse_limit, metavar="[NAME=]N",
                   help="run at most N mutants per module, a seeded sample in source order; NAME=N (N may be "
                        "'all') for one module, repeatable (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample (default: 0)")
    p.add_argument("--kinds", default=",".join(KINDS),
                   help=f"comma-separated mutant kinds (default: all, {','.join(KINDS)})")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="seconds per mutant before it counts as a timeout (killed) (default: 5 x the "
                        "module's baseline run, at least 10)")
    p.add_argument("--out", type=Path, default=Path("runs/mutation"),
                   help="folder for report.md, report.json and the backups (default: runs/mutation)")
    p.add_argument("--root", type=Path, default=ROOT, help="the checkout (default: this file's repository)")
    p.add_argument("--in-place", action="store_true",
                   help="mutate the checkout itself instead of a scratch copy (default: a copy)")
    p.add_argument("--tree", type=Path, default=None,
                   help="where the scratch copy goes, created and removed (default: a temporary folder)")
    p.add_argument("--runner", choices=sorted(RUNNERS), default="fork" if hasattr(os, "fork") else "subprocess",
                   help="fork: each test run is a child of this process, which has imported pytest, numpy and "
                        "scikit-learn once, and every survivor is confirmed by a fresh `python -m pytest`; "
                        "subprocess: a fresh `python -m pytest` for every run (default: fork where there is fork)")
    p.add_argument("--list", action="store_true", help="list the mutants and run nothing (default: run)")
    p.add_argument("--json", action="store_true", help="print the JSON report on stdout (default: the table)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr (default: one per mutant)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parser().parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        parser().error(f"unknown kinds {bad}; choose from {', '.join(KINDS)}")
    root = args.root.resolve()
    targets = _select(args.module, args.target or TARGETS)
    out = args.out if args.out.is_absolute() else root / args.out
    log = (lambda *a: None) if args.quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))

    if args.list:
        for t in targets:
            muts = find_mutants((root / t.path).read_bytes(), t.scope, kinds)
            print(f"{t.name}: {len(muts)} mutants")
            for m in muts:
                print(f"  {m.index:4} {t.path}:{m.line}:{m.col} {m.kind:9} {m.what:28} {m.original}  =>  {m.mutated}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    msg = recover(out / "backup")
    if msg:
        log(msg)
    before = {t.path: sha256((root / t.path).read_bytes()) for t in targets}
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    made_tree = None
    try:
        if args.in_place:
            tree = root
        else:
            if args.tree:
                args.tree.mkdir(parents=True, exist_ok=False)
                made_tree = args.tree.resolve()
            else:
                made_tree = Path(tempfile.mkdtemp(prefix="mutation-tree-"))
            tree = copy_tree(root, made_tree)
            log(f"work tree: a copy of {root} in {tree}")
        if args.runner == "fork":
            preload()
        started = datetime.datetime.now(datetime.timezone.utc)
        results = []
        for t in targets:  # Ctrl-C or SIGTERM: each module is restored on the way out (finally)
            results.append(run_module(t, tree, out, in_place=args.in_place, max_mutants=_limit(args.max_per_module, t),
                                      seed=args.seed, timeout=args.timeout, kinds=kinds, runner=args.runner, log=log))
    except KeyboardInterrupt:
        print("mutation: interrupted; the module being mutated was restored, no report written", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if made_tree is not None:
            shutil.rmtree(made_tree, ignore_errors=True)
    changed = [p for p, d in before.items() if sha256((root / p).read_bytes()) != d]
    given = argv if argv is not None else sys.argv[1:]
    command = "python tests/mutation.py" + "".join(" " + shlex.quote(a) for a in given)
    report = to_json(results, {
        "command": command, "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1),
        "python": f"Python {sys.version.split()[0]}", "seed": args.seed, "kinds": kinds, "runner": args.runner,
        "tree": "the checkout (in place)" if args.in_place else "a scratch copy",
        "max_per_module": {t.name: _limit(args.max_per_module, t) for t in targets}, "checkout_unchanged": not changed})
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(to_markdown(report))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(to_markdown(report).split("\n## ")[0].rstrip())
        print(f"\nreport: {out / 'report.md'} and report.json")
    if changed or not all(r.restored for r in results):
        print(f"mutation: a module was left changed: {changed}", file=sys.stderr)
        return 3
    return 1 if any(r.baseline not in ("passed",) for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
