"""The lowered pipeline on this machine: the target's legalised ONNX graphs run by ONNX Runtime's CPU EP.

The Hexagon target turns every deployable component call into a static-shape ONNX graph (``target/legal/``:
exported, then legalised for HTP; the same graphs are quantised to QDQ and compiled to context binaries). Without
an NPU the closest thing to running *the compiled pipeline* is to execute those very graphs on the host CPU. This
module does that: :class:`HostPipeline` is the pipeline's own fx graph with each lowered component's call
re-targeted to a :class:`HostComponent`, which picks the graph whose static input shapes match the call, feeds
the call's tensor leaves in the exporter's order and rebuilds the component's output structure. Everything the
target did not lower (schedule arithmetic, the precomputed timestep embedding, calls with an unknown signature)
runs as float32 torch, and every such fallback call is counted.

Arithmetic is float32 (the legalised graphs before QDQ): quantised numerics are the quantize-w8a16 pass's
simulation and the HTP simulator's SQNR (target/graphs.json). The first call of each signature also runs the
torch component and records the largest absolute difference (``parity``), so a timing never rests on a graph
that computes something else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from torch import fx, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from neoc.errors import InputError
from neoc.targets.hexagon.simulate import feeds

#: intra-op threads per graph: "auto" times 1 thread against all cores on each graph's first call and keeps the
#: faster. Measured on the 2-core CPU (pyramid-tiny): the 21 small denoiser stage calls take 83-88 ms on 1 thread
#: and 195 ms on 2 (ONNX Runtime's default spinning pools), the TAEHV decoder 64-81 ms on 1 and 57 ms on 2; the whole video
#: 0.16-0.19 s with "auto", 0.18-0.21 s with 1 thread everywhere.
DEFAULT_THREADS = "auto"


class HostComponent(nn.Module):
    """One component role served by its lowered graphs (one ONNX Runtime session per static signature)."""

    def __init__(self, role: str, model_paths: Sequence[Path], component: nn.Module,
                 threads: int | str = DEFAULT_THREADS):
        super().__init__()
        self.role = role
        self.component = component  # the torch component: output structure, parity, fallback
        self.thread_choices = thread_choices(threads)
        self.sessions: dict[tuple, object] = {}
        self.candidates: dict[tuple, dict[int, object]] = {}  # sessions per thread count, until timed
        self.graph_names: dict[tuple, str] = {}
        self.threads: dict[str, int] = {}  # graph name -> intra-op threads in use
        for path in model_paths:
            sessions = {n: make_session(path, n) for n in self.thread_choices}
            key = tuple(tuple(i.shape) for i in next(iter(sessions.values())).get_inputs())
            if any(not isinstance(d, int) for shape in key for d in shape):
                raise InputError(f"host runtime: {path} has a dynamic input shape; lowered graphs are static")
            self.graph_names[key] = Path(path).stem
            if len(sessions) == 1:
                (count, self.sessions[key]), = sessions.items()
                self.threads[self.graph_names[key]] = count
            else:
                self.candidates[key] = sessions
        self._out_specs: dict[tuple, tuple] = {}
        self.parity: dict[str, float] = {}  # graph name -> max |onnx - torch| on its first call
        self.graph_calls = 0
        self.fallback_calls = 0

    def forward(self, *args, **kwargs):
        # the call's tensor leaves in pytree order: the exporter's input order (graphs.call_structure, without the
        # leaf paths it also builds: this runs on every call)
        tensors = [leaf for leaf in tree_flatten((args, kwargs))[0] if isinstance(leaf, torch.Tensor)]
        key = tuple(tuple(t.shape) for t in tensors)
        if key in self.candidates:  # first call of a graph: keep the faster thread count on this call
            self.sessions[key], count = fastest(self.candidates.pop(key), tensors)
            self.threads[self.graph_names[key]] = count
        session = self.sessions.get(key)
        if session is None:
            self.fallback_calls += 1
            return self.component(*args, **kwargs)
        outputs = session.run(None, feeds(session, tensors))
        self.graph_calls += 1
        if key not in self._out_specs:  # first call of this graph: output structure and parity from torch
            reference = self.component(*args, **kwargs)
            leaves, spec = tree_flatten(reference)
            slots = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
            if len(slots) != len(outputs):
                raise InputError(f"host runtime: graph {self.graph_names[key]} returns {len(outputs)} outputs, "
                                 f"the {self.role} component {len(slots)} tensors")
            dtypes = [leaves[i].dtype for i in slots]
            self.parity[self.graph_names[key]] = max(
                float((torch.from_numpy(o).to(d) - leaves[i]).abs().max()) if leaves[i].numel() else 0.0
                for o, i, d in zip(outputs, slots, dtypes))
            # keep the structure and the non-tensor leaves only, not the reference tensors
            self._out_specs[key] = (spec, [None if i in slots else leaf for i, leaf in enumerate(leaves)], slots,
                                    dtypes)
        spec, leaves, slots, dtypes = self._out_specs[key]
        leaves = list(leaves)
        for slot, array, dtype in zip(slots, outputs, dtypes):
            leaves[slot] = torch.from_numpy(array).to(dtype)
        return tree_unflatten(leaves, spec)


def thread_choices(threads: int | str) -> list[int]:
    import os

    if threads == "auto":
        return sorted({1, os.cpu_count() or 1})
    if isinstance(threads, int) and threads >= 1:
        return [threads]
    raise InputError(f"host runtime: threads must be 'auto' or a positive integer, got {threads!r}")


def make_session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # idle pool threads sleep instead of spinning: the sessions of a pipeline (and torch's own pool) take turns on
    # the same cores, and spinning pools starve each other (all-2-thread sessions: 0.66 s per video spinning,
    # 0.22 s not)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def fastest(sessions: dict[int, object], tensors, repeats: int = 3) -> tuple[object, int]:
    """(session, threads) of the candidate with the lowest median time on ``tensors`` (one warm-up each)."""
    import statistics
    import time

    timings = {}
    for count, session in sessions.items():
        feed = feeds(session, tensors)
        session.run(None, feed)
        runs = []
        for _ in range(repeats):
            start = time.perf_counter()
            session.run(None, feed)
            runs.append(time.perf_counter() - start)
        timings[count] = statistics.median(runs)
    best = min(timings, key=timings.get)
    return sessions[best], best


class HostPipeline:
    """A pipeline whose lowered component calls run their ONNX graphs (same prompts, noise and schedule)."""

    def __init__(self, pipeline, lowered: dict[str, list[Path]], threads: int | str = DEFAULT_THREADS,
                 form: str = "the target's ONNX graphs"):
        unknown = sorted(set(lowered) - set(pipeline.components))
        if unknown:
            raise InputError(f"host runtime: the pipeline has no '{unknown[0]}' component for its lowered graphs")
        self.pipeline = pipeline
        self.hosts = {role: HostComponent(role, paths, pipeline.component(role), threads)
                      for role, paths in lowered.items()}
        root = nn.Module()
        for role, module in pipeline.components.items():
            root.add_module(role, module)
        for role, host in self.hosts.items():
            root.add_module(f"host_{role}", host)
        graph = fx.Graph()
        graph.output(graph.graph_copy(pipeline.graph_module.graph, {}))
        for node in graph.nodes:
            if node.op == "call_module" and node.target in self.hosts:
                node.target = f"host_{node.target}"
        self.graph_module = fx.GraphModule(root, graph, class_name="HostT2VPipeline")
        #: what runs, in words (the report's ``latency.compiled_form``)
        self.form = (f"{form} run by ONNX Runtime's CPU execution provider inside the pipeline's graph, the "
                     "sampler's glue ops in torch")

    def nfe(self) -> int:
        return self.pipeline.nfe()

    def generate(self, prompt: str, seed: int = 0) -> torch.Tensor:
        for module in self.pipeline.components.values():
            module.eval()
        return self.pipeline.run_graph(self.pipeline.prepare_inputs(prompt, seed), self.graph_module)

    def summary(self) -> dict:
        """Graph / fallback call counts and the first-call parity of every graph (for the report)."""
        return {"graphs": {role: sorted(h.graph_names.values()) for role, h in self.hosts.items()},
                "graph_calls": sum(h.graph_calls for h in self.hosts.values()),
                "torch_fallback_calls": sum(h.fallback_calls for h in self.hosts.values()),
                "parity_max_abs": {name: value for h in self.hosts.values() for name, value in h.parity.items()},
                "threads": {name: n for h in self.hosts.values() for name, n in h.threads.items()}}


FORMS = {"legal": "the target's lowered graphs (target/legal/*.onnx: the static-shape graphs as legalised for HTP, "
                  "what the QDQ export and the QNN compile take; float32)",
         "onnx": "the target's exported graphs (target/onnx/*.onnx, static shapes, float32)"}


def lowered_graphs(target_dir: Path, entries: Sequence[dict] | None = None,
                   folder: str = "legal") -> dict[str, list[Path]]:
    """role -> the ONNX graphs in ``target_dir/folder`` of a built target (from its graphs.json entries; the
    hexagon target's legalised graphs by default, ``folder="onnx"`` for the onnx target's exports)."""
    target_dir = Path(target_dir)
    if entries is None:
        index = target_dir / "graphs.json"
        if not index.is_file():
            raise InputError(f"{target_dir}: no graphs.json (the hexagon target has not been built there)")
        entries = json.loads(index.read_text())
    lowered: dict[str, list[Path]] = {}
    for entry in entries:
        path = target_dir / folder / f"{entry['name']}.onnx"
        if not path.is_file():
            raise InputError(f"{path}: missing; rebuild the target")
        paths = lowered.setdefault(entry["role"], [])
        if path not in paths:
            paths.append(path)
    return lowered


def host_pipeline(pipeline, target_dir: Path, entries: Sequence[dict] | None = None,
                  threads: int | str = DEFAULT_THREADS, folder: str = "legal") -> HostPipeline:
    form = FORMS.get(folder, f"the target's graphs (target/{folder}/*.onnx)")
    return HostPipeline(pipeline, lowered_graphs(target_dir, entries, folder), threads, form)
