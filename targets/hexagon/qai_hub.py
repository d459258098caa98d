"""Optional Qualcomm AI Hub jobs: compile and profile the same graphs on real devices.

When an AI Hub token is configured (``~/.qai_hub/client.ini``, the file ``$QAIHUB_CLIENT_INI`` names, or
``QAI_HUB_API_TOKEN`` in the environment), each legalised graph is submitted as a compile job
(``--target_runtime qnn_context_binary``) and the compiled model as a profile job to the device of each SoC:
"Snapdragon X Elite CRD" (x-elite) and "Samsung Galaxy S25 (Family)" (8-elite). The measured latency is the
profile's ``execution_summary.estimated_inference_time`` (microseconds). Without a token nothing is submitted
and the target records why.

The client is injected (:func:`run_jobs` takes any object with ``Device``, ``submit_compile_job`` and
``submit_profile_job``), so the tests drive this path with a recorded fake instead of the network.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import attrs

from neoc.targets.hexagon.qnn import HUB_DEVICES

TOKEN_ENV = "QAI_HUB_API_TOKEN"
COMPILE_OPTIONS = "--target_runtime qnn_context_binary"


@attrs.define
class HubResult:
    graph: str
    soc: str
    device: str
    compile_job: str = ""
    profile_job: str = ""
    latency_ms: float | None = None
    status: str = "skipped"
    note: str = ""

    def to_dict(self) -> dict:
        return attrs.asdict(self)


def token_configured(environ: dict | None = None) -> str | None:
    """Where the AI Hub credentials come from, or None when there are none."""
    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        return f"${TOKEN_ENV}"
    ini = Path(os.path.expanduser(env.get("QAIHUB_CLIENT_INI", "~/.qai_hub/client.ini")))
    return str(ini) if ini.is_file() else None


def default_client(environ: dict | None = None):
    """The real ``qai_hub`` module (ini credentials) or a Client built from ``$QAI_HUB_API_TOKEN``."""
    import qai_hub

    env = os.environ if environ is None else environ
    if env.get(TOKEN_ENV):
        from qai_hub.public_rest_api import ClientConfig

        client = qai_hub.Client(config=ClientConfig(api_token=env[TOKEN_ENV]))
        client.Device = qai_hub.Device  # the same surface as the module
        return client
    return qai_hub


def latency_ms(profile: dict) -> float | None:
    summary = profile.get("execution_summary", {}) if isinstance(profile, dict) else {}
    micros = summary.get("estimated_inference_time")
    return None if micros is None else float(micros) / 1000.0


def run_jobs(client: Any, graphs: Sequence[tuple[str, Path]], socs: Sequence[str],
             timeout_s: int | None = None) -> list[HubResult]:
    """Compile + profile each ``(graph name, ONNX path)`` on each SoC's AI Hub device; failures are recorded per
    job, never raised (a device farm hiccup must not fail the build)."""
    results = []
    for soc in socs:
        device_name = HUB_DEVICES[soc]
        device = client.Device(device_name)
        for name, path in graphs:
            result = HubResult(name, soc, device_name)
            try:
                compile_job = client.submit_compile_job(model=str(path), device=device, name=f"neoc-{name}",
                                                        options=COMPILE_OPTIONS)
                result.compile_job = str(getattr(compile_job, "job_id", ""))
                target = compile_job.get_target_model()
                if target is None:
                    result.status, result.note = "compile-failed", "AI Hub compile job produced no model"
                    results.append(result)
                    continue
                profile_job = client.submit_profile_job(model=target, device=device, name=f"neoc-{name}")
                result.profile_job = str(getattr(profile_job, "job_id", ""))
                if timeout_s is not None:
                    profile_job.wait(timeout_s)
                result.latency_ms = latency_ms(profile_job.download_profile())
                result.status = "done" if result.latency_ms is not None else "no-latency"
            except Exception as exc:  # recorded per job
                result.status, result.note = "error", f"{type(exc).__name__}: {exc}"[:300]
            results.append(result)
    return results


def hub_step(graphs: Sequence[tuple[str, Path]], socs: Sequence[str], enabled: bool, client: Any = None,
             environ: dict | None = None) -> tuple[list[HubResult], str]:
    """Run the AI Hub jobs when enabled and configured; returns (results, a note for the report)."""
    if not enabled:
        return [], "qai-hub: disabled in the target config (qai_hub: false)"
    source = token_configured(environ)
    if client is None and source is None:
        return [], (f"qai-hub: skipped, no AI Hub token configured (set ${TOKEN_ENV} or run `qai-hub configure "
                    "--api_token ...`); on-device latencies were not measured")
    client = client if client is not None else default_client(environ)
    results = run_jobs(client, graphs, socs)
    done = sum(r.status == "done" for r in results)
    return results, f"qai-hub: {done}/{len(results)} compile+profile jobs measured a latency"
