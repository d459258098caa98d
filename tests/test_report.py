"""report.md / report.html sections and the report's figures, from a synthetic report (no model runs)."""

import torch

from neoc.eval.latency import compare_latency
from neoc.report import figures
from neoc.report.writer import empty_report, render_html, render_markdown, write_reports
from neoc.testing import toy_pipeline


def _eval(total):
    return {"total": total, "quality": total + 0.1, "semantic": total - 0.1, "num_videos": 4}


def synthetic_report():
    r = empty_report("recipes/neodragon.yaml", "builtin:pyramid-tiny")
    r["status"] = "complete"
    r["passes"] = [
        {"name": "prune-blocks", "status": "done", "seconds": 10.0, "cpu_seconds": 9.0,
         "metrics": {"removed_blocks": [2, 5], "quality_stage1": _eval(0.5), "quality_stage2": _eval(0.55),
                     "importance": [{"block": b, "visual": 0.1 * b, "text": 0.05 * b} for b in range(8)]}},
        {"name": "distill-steps", "status": "skipped", "seconds": 0.0, "metrics": {"refused": "no"},
         "reason": "preconditions do not hold: distill-steps: nope"},
        {"name": "quantize-w8a16", "status": "done", "seconds": 3.0,
         "metrics": {"sqnr_db": {"denoiser": 30.0}, "denoiser_stage_sqnr_db": {"0": 29.0},
                     "quality_float": _eval(0.56), "quality_quantized": _eval(0.55)}}]
    r["quality"] = {"before": _eval(0.56), "after": _eval(0.55)}
    r["latency"] = {"before_seconds": 7.0, "after_seconds": 0.25, "ratio": 28.0, "device": "cpu"}
    r["trajectory"] = [{"stage": "baseline", "params": 6e6, "nfe": 480, "flops_per_video": 1e11, "seconds": 7.0},
                       {"stage": "prune-blocks", "params": 5e6, "nfe": 480, "flops_per_video": 8e10, "seconds": 6.0},
                       {"stage": "distill-steps", "params": 5e6, "nfe": 480, "flops_per_video": 8e10,
                        "seconds": 6.0, "skipped": True}]
    r["timing"] = {"wall_seconds": 100.0, "cpu_seconds": 150.0, "passes_seconds": 13.0}
    return r


def test_markdown_has_every_section_and_the_refusal_reason():
    md = render_markdown(synthetic_report())
    for heading in ("## Passes", "## Trajectory through the passes", "## Quality", "### Quality at every measured",
                    "## Latency", "## Quantisation", "## Target"):
        assert heading in md, heading
    assert "preconditions do not hold: distill-steps: nope" in md
    assert "distill-steps (skipped)" in md and "Run wall time 100.0 s" in md
    assert "| prune-blocks | quality_stage2 | 0.55 |" in md


def test_figures_and_html(tmp_path):
    r = synthetic_report()
    rows = figures.quality_rows(r)
    assert [x["point"] for x in rows] == ["baseline", "quality_stage1", "quality_stage2", "quality_float",
                                          "quality_quantized", "compiled"]
    assert figures.trajectory_plot(r, tmp_path) == "trajectory.png"
    assert figures.importance_plot(r, tmp_path) == "block_importance.png"
    assert figures.quality_plot(rows, tmp_path) == "quality.png"
    video = torch.rand(2, 3, 9, 16, 16) * 2 - 1
    assert figures.frame_strip({"baseline": video, "compiled": video}, tmp_path, prompts=["a", "b"]) == "frames.png"
    for name in ("trajectory.png", "block_importance.png", "quality.png", "frames.png"):
        assert (tmp_path / name).stat().st_size > 1000
    r["figures"] = {"Trajectory": "trajectory.png"}
    write_reports(r, tmp_path)
    assert "<img alt='Trajectory' src='trajectory.png'>" in (tmp_path / "report.html").read_text()
    assert "<table>" in render_html(render_markdown(r))
    assert figures.importance_plot(empty_report("r", "m"), tmp_path) is None


def test_compare_latency_same_prompts_both_pipelines():
    result = compare_latency(toy_pipeline(), toy_pipeline(video_steps=(1, 1, 1), first_frame_steps=(1, 1, 1)),
                             ["a red ball", "a blue square"], seed=0)
    assert result["before_seconds"] > 0 and result["after_seconds"] > 0
    assert len(result["before_runs"]) == len(result["after_runs"]) == 2
    assert result["nfe_before"] > result["nfe_after"] and result["ratio"] > 0


def test_latency_times_the_host_runtime_with_torch_alongside():
    """With the target's graphs runnable here, 'after' is theirs and the torch pipeline is timed beside them."""
    from types import SimpleNamespace

    from neoc.runner import add_host_point, measure_latency

    compiled = toy_pipeline(video_steps=(1, 1, 1), first_frame_steps=(1, 1, 1))

    class FakeHost:  # stands in for the hexagon host pipeline: the same videos, its own call counts
        calls = 0
        form = "the fake graphs run by ONNX Runtime"

        def generate(self, prompt, seed=0):
            self.calls += 1
            return compiled.generate(prompt, seed)

        def nfe(self):
            return compiled.nfe()

        def summary(self):
            return {"graph_calls": self.calls, "torch_fallback_calls": 0, "parity_max_abs": {"g": 0.0}}

    report = empty_report("r", "m")
    recipe = SimpleNamespace(seed=0, eval_prompts=None)  # what the latency measurement reads of a recipe
    measure_latency(toy_pipeline(), compiled, recipe, report, count=1, host=FakeHost())
    lat = report["latency"]
    assert lat["after_seconds"] > 0 and lat["others"]["torch"]["after_seconds"] > 0
    assert lat["others"]["torch"]["ratio"] == lat["before_seconds"] / lat["others"]["torch"]["after_seconds"]
    assert lat["compiled_form"].startswith(FakeHost.form) and "float32 torch" in lat["others"]["torch"]["form"]
    assert lat["host"]["video_max_abs_diff_vs_torch"] == 0.0 and lat["host"]["graph_calls"] == 3  # warm, timed, parity
    md = render_markdown({**synthetic_report(), "latency": lat})
    assert "Also timed in the same alternation, 'torch'" in md and "Host runtime: 3 graph calls" in md
    assert not report["notes"]  # the fake host's video equals the torch one: no warning

    class WrongHost(FakeHost):
        def generate(self, prompt, seed=0):
            return super().generate(prompt, seed) + 0.5

    measure_latency(toy_pipeline(), compiled, recipe, report, count=1, host=WrongHost())
    assert abs(report["latency"]["host"]["video_max_abs_diff_vs_torch"] - 0.5) < 1e-4
    assert "differs from the torch pipeline's by up to 0.5" in report["notes"][0]
    report["trajectory"] = [{"stage": "quantize-w8a16", "params": 10, "nfe": 21, "flops_per_video": 1.0, "seconds": 9.0}]
    add_host_point(report, FakeHost(), recipe)
    last = report["trajectory"][-1]
    assert last["stage"] == "target graphs (ONNX Runtime)" and last["nfe"] == 21 and 0 < last["seconds"] < 9.0


def test_pass_images_are_shown_in_the_report():
    r = synthetic_report()
    r["passes"].insert(0, {"name": "swap-decoder", "status": "done", "seconds": 1.0, "metrics": {},
                           "artifacts": {"samples": "passes/01-swap-decoder/artifacts/samples.png",
                                         "decoder": "passes/01-swap-decoder/artifacts/decoder.safetensors"}})
    md = render_markdown(r)
    assert "## Pass images" in md
    assert "![swap-decoder: samples](passes/01-swap-decoder/artifacts/samples.png)" in md
    assert "decoder.safetensors)" not in md
    assert "src='passes/01-swap-decoder/artifacts/samples.png'" in render_html(md)
    assert "## Pass images" not in render_markdown(synthetic_report())
