"""QNN work in child processes: one SoC's support check and compile; each graph's HTP simulation.

The HTP backend in ``libQnnHtp.so`` runs inside the Python process, and its x86-64 simulator can segfault while
*executing* a graph it compiled without complaint (seen on the tiny MMDiT's top-stage graph: a crash in an HVX
worker thread that comes and goes as the graph's node count changes, not tied to any one op). A crash takes the
process with it, so:

* ``compile``: one child per SoC runs the support reports and writes the context binaries;
* ``simulate``: one child per graph runs the calibration calls — from its context binary, or, for graphs in a
  weight-shared binary (which the simulator cannot load), from a fresh compile of the same ONNX graph;
* a graph whose simulation crashes is simulated in parts instead (:func:`split_model`: the graph cut at a node
  boundary, each part compiled and run in its own child, part outputs fed to the next part). The parts run the
  same ops in the same fp16/W8A16 arithmetic; the hand-off tensors are exact fp16 values. The report says so.

The parent writes inputs as ``*.json`` + ``*.npz`` (numpy arrays, loaded without pickle) and reads the answers
back the same way; a child that dies is reported with the step it was on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Sequence

import attrs
import numpy as np
import onnx

from neoc.errors import CheckFailed


@attrs.define
class GraphJob:
    name: str
    model_path: str
    precision: str
    share_group: str | None


# ----------------------------------------------------------------------------------------------------------
# child side
# ----------------------------------------------------------------------------------------------------------


def compile_worker(jobs: Sequence[GraphJob], soc: str, work: Path, weight_sharing: bool,
                   progress: Path) -> dict:
    """Support reports and context binaries for every job on ``soc`` (runs in the child)."""
    from neoc.targets.hexagon import compile as qnn_compile
    from neoc.targets.hexagon import export, support

    bundle_dir = work / soc
    reports = []
    for job in jobs:
        progress.write_text(f"support check of {job.name}")
        reports.append(support.support_report(export.load_model(Path(job.model_path)), job.name, soc,
                                              work / "support" / soc))
    # written before any verdict, so a failed build still leaves the per-op answer of every graph
    (work / "support" / soc / "report.json").write_text(json.dumps([r.to_dict() for r in reports], indent=2))
    for report in reports:
        support.check_supported(report)  # names the op and the fix before any real compile
    groups: dict[str, list[GraphJob]] = {}
    for job in jobs:
        groups.setdefault(job.share_group or job.name, []).append(job)
    compiled = []
    for group in groups.values():
        progress.write_text(f"compile of {', '.join(j.name for j in group)}")
        for graph in qnn_compile.compile_group([(j.name, Path(j.model_path), j.precision) for j in group], soc,
                                               bundle_dir, weight_sharing):
            graph.session = None
            compiled.append({"name": graph.name, "context_model": str(graph.context_model),
                             "binary": str(graph.binary), "prepare_seconds": graph.prepare_seconds,
                             "cpu_fallback_nodes": graph.cpu_fallback_nodes, "qnn_nodes": graph.qnn_nodes,
                             "shared_with": graph.shared_with, "precision": graph.precision})
    return {"graphs": compiled}


def simulate_worker(model: Path, soc: str, precision: str, from_context: bool, calls: list[list[np.ndarray]],
                    progress: Path) -> dict:
    """Run ``calls`` through the HTP simulator: outputs per call and the fallback count (runs in the child)."""
    from neoc.targets.hexagon import qnn
    from neoc.targets.hexagon.simulate import feeds, load_context

    progress.write_text(f"{'load' if from_context else 'compile'} of {model.name}")
    if from_context:
        session = load_context(model, soc, precision)
    else:
        with qnn.captured_stderr():
            session = qnn.create_session(model, qnn.SessionPlan(soc, fp16=precision == "fp16"))
    outputs = []
    for number, call in enumerate(calls):
        progress.write_text(f"HTP simulation of {model.name}, call {number}")
        outputs.append([np.asarray(o) for o in session.run(None, feeds(session, call))])
    return {"outputs": outputs, "output_names": [o.name for o in session.get_outputs()],
            "cpu_fallback_nodes": len(qnn.cpu_nodes(session))}


def main(argv: Sequence[str] | None = None) -> int:
    """``worker compile|simulate FOLDER``: reads ``FOLDER/request.*``, writes ``FOLDER/answer.*``."""
    import torch

    torch.set_num_threads(1)
    mode, folder = argv if argv is not None else sys.argv[1:]
    folder = Path(folder)
    request = json.loads((folder / "request.json").read_text())
    progress = folder / "progress.txt"
    arrays: dict[str, np.ndarray] = {}
    try:
        if mode == "compile":
            answer = {"ok": compile_worker([GraphJob(**j) for j in request["jobs"]], request["soc"],
                                           Path(request["work"]), request["weight_sharing"], progress)}
        else:
            calls = load_calls(folder / "request.npz", "in")
            result = simulate_worker(Path(request["model"]), request["soc"], request["precision"],
                                     request["from_context"], calls, progress)
            arrays = {f"out.{c}.{t}": a for c, call in enumerate(result.pop("outputs")) for t, a in enumerate(call)}
            answer = {"ok": result}
    except CheckFailed as exc:
        answer = {"check_failed": str(exc)}
    except Exception as exc:  # reported to the parent with its traceback
        answer = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    np.savez(folder / "answer.npz", **arrays)
    (folder / "answer.json").write_text(json.dumps(answer, indent=2, default=float))
    return 0


# ----------------------------------------------------------------------------------------------------------
# parent side
# ----------------------------------------------------------------------------------------------------------


def save_calls(path: Path, calls: Sequence[Sequence[np.ndarray]], prefix: str) -> None:
    np.savez(path, **{f"{prefix}.{c}.{t}": np.asarray(a) for c, call in enumerate(calls) for t, a in enumerate(call)})


def load_calls(path: Path, prefix: str) -> list[list[np.ndarray]]:
    calls: dict[int, dict[int, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as arrays:
        for key in arrays.files:
            _, call, tensor = key.split(".")
            calls.setdefault(int(call), {})[int(tensor)] = arrays[key]
    return [[call[t] for t in sorted(call)] for _, call in sorted(calls.items())]


def _run_child(mode: str, folder: Path, request: dict, what: str) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("answer.json", "answer.npz", "progress.txt"):
        (folder / name).unlink(missing_ok=True)
    (folder / "request.json").write_text(json.dumps(request, indent=2))
    process = subprocess.run([sys.executable, "-c", _child_bootstrap(), mode, str(folder)], capture_output=True,
                             text=True)
    answer_path = folder / "answer.json"
    if not answer_path.exists():
        progress = folder / "progress.txt"
        where = progress.read_text() if progress.exists() else what
        tail = [line for line in process.stderr.strip().splitlines() if line.strip()][-2:]
        raise ChildCrashed(f"the QNN HTP backend crashed (exit code {process.returncode}) during {where}"
                           + (f": {' | '.join(tail)}" if tail else ""))
    answer = json.loads(answer_path.read_text())
    if "check_failed" in answer:
        raise CheckFailed(answer["check_failed"])
    if "error" in answer:
        raise CheckFailed(f"hexagon: {what}: {answer['error']}\n{answer['traceback']}")
    return answer["ok"]


def _child_bootstrap() -> str:
    """Python code that runs :func:`main` in the child with *this* process's ``neoc.targets`` package (the same
    files, whatever an editable install elsewhere on the machine would resolve ``neoc.targets`` to)."""
    package = Path(__file__).resolve().parent.parent  # the neoc.targets package this module belongs to
    return "\n".join([
        "import sys, importlib.util",
        f"sys.path[:0] = {[p for p in sys.path if p]!r}",
        "import neoc",
        f"spec = importlib.util.spec_from_file_location('neoc.targets', {str(package / '__init__.py')!r}, "
        f"submodule_search_locations=[{str(package)!r}])",
        "module = importlib.util.module_from_spec(spec)",
        "sys.modules['neoc.targets'] = module",
        "spec.loader.exec_module(module)",
        "from neoc.targets.hexagon.worker import main",
        "sys.exit(main(sys.argv[1:]))",
    ])


class ChildCrashed(CheckFailed):
    """A child process died (the simulator's segfault) without answering."""


def compile_isolated(jobs: Sequence[GraphJob], soc: str, work: Path, weight_sharing: bool) -> dict:
    folder = Path(work) / soc / "compile-job"
    request = {"jobs": [attrs.asdict(j) for j in jobs], "soc": soc, "work": str(work),
               "weight_sharing": weight_sharing}
    try:
        answer = _run_child("compile", folder, request, f"the {soc} compile")
    except ChildCrashed as exc:
        raise CheckFailed(f"hexagon: {soc}: {exc}") from None
    _cleanup(folder)
    return answer


def simulate_isolated(model: Path, soc: str, precision: str, context_model: Path | None,
                      calls: Sequence[Sequence[np.ndarray]], folder: Path) -> dict:
    """HTP-simulated outputs of ``calls``: from ``context_model`` when given (else a fresh compile of ``model``);
    on a simulator crash, ``model`` is run in parts instead (2, 4, then 8)."""
    try:
        target, from_context = (context_model, True) if context_model is not None else (model, False)
        answer = _simulate_once(target, soc, precision, from_context, calls, folder)
        return {**answer, "parts": 1, "loaded_from": "context binary" if from_context else "compiled ONNX graph"}
    except ChildCrashed as exc:
        crash = str(exc)
        _cleanup(folder)
    source = onnx.load(str(model), load_external_data=True)
    input_names = [i.name for i in source.graph.input]
    for count in (2, 4, 8):
        try:
            outputs, fallback = _simulate_parts(split_model(source, count), input_names, soc, precision, calls,
                                                folder)
        except ChildCrashed:
            for leftover in sorted(folder.glob("part*"), reverse=True):
                _cleanup(leftover) if leftover.is_dir() else leftover.unlink()
            continue
        _cleanup(folder)
        return {"outputs": outputs, "cpu_fallback_nodes": fallback, "parts": count, "crash": crash,
                "loaded_from": f"compiled ONNX graph in {count} parts (the simulator crashed on the whole graph)"}
    raise CheckFailed(f"hexagon: {model.name}: {crash}; it also crashed when run in 2, 4 and 8 parts")


def _simulate_once(model: Path, soc: str, precision: str, from_context: bool, calls, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    save_calls(folder / "request.npz", calls, "in")
    request = {"model": str(model), "soc": soc, "precision": precision, "from_context": from_context}
    answer = _run_child("simulate", folder, request, f"HTP simulation of {model.name}")
    answer["outputs"] = load_calls(folder / "answer.npz", "out")
    _cleanup(folder)
    return answer


def _simulate_parts(parts: list[onnx.ModelProto], input_names: list[str], soc: str, precision: str, calls,
                    folder: Path):
    """Run the parts in order; each part reads graph inputs and earlier parts' outputs by name."""
    values = [dict(zip(input_names, call, strict=True)) for call in calls]
    fallback = 0
    for number, part in enumerate(parts):
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"part{number}.onnx"
        onnx.save(part, str(path))
        names = [i.name for i in part.graph.input]
        answer = _simulate_once(path, soc, precision, False, [[v[n] for n in names] for v in values],
                                folder / f"part{number}")
        fallback += answer["cpu_fallback_nodes"]
        for call_values, outputs in zip(values, answer["outputs"], strict=True):
            call_values.update(zip(answer["output_names"], outputs))
        path.unlink(missing_ok=True)
    final = [o.name for o in parts[-1].graph.output]
    return [[v[name] for name in final] for v in values], fallback


def split_model(model: onnx.ModelProto, count: int) -> list[onnx.ModelProto]:
    """``model`` cut into ``count`` consecutive node ranges (topological order). Part k takes the graph inputs and
    earlier parts' tensors it reads; it outputs every tensor a later part or the graph output needs. The last
    part's outputs are the graph outputs, in order."""
    from onnx import helper

    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    nodes = []
    for node in model.graph.node:  # constants become initializers so every part sees them as static
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            initializers[node.output[0]] = numpy_helper.from_array(numpy_helper.to_array(node.attribute[0].t),
                                                                   node.output[0])
        else:
            nodes.append(node)
    values = {v.name: v for v in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output)}
    bounds = [round(i * len(nodes) / count) for i in range(count + 1)]
    chunks = [nodes[bounds[i]:bounds[i + 1]] for i in range(count)]
    final_outputs = [o.name for o in model.graph.output]
    parts = []
    for number, chunk in enumerate(chunks):
        produced = {o for n in chunk for o in n.output}
        read = [i for n in chunk for i in n.input if i and i not in produced and i not in initializers]
        later = {i for c in chunks[number + 1:] for n in c for i in n.input} | set(final_outputs)
        inputs = list(dict.fromkeys(read))
        if number == len(chunks) - 1:
            outputs = final_outputs
        else:
            outputs = [o for n in chunk for o in n.output if o in later]
        used_inits = [initializers[i] for n in chunk for i in n.input if i in initializers]
        used_inits = list({init.name: init for init in used_inits}.values())
        graph = helper.make_graph(chunk, f"{model.graph.name}_part{number}", [values[i] for i in inputs],
                                  [values[o] for o in outputs], used_inits)
        parts.append(helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version))
    return parts


def _cleanup(folder: Path) -> None:
    for name in ("request.json", "request.npz", "answer.json", "answer.npz", "progress.txt"):
        (folder / name).unlink(missing_ok=True)
    try:
        folder.rmdir()
    except OSError:
        pass


if __name__ == "__main__":
    raise SystemExit(main())
