"""The host's arithmetic (kl_utils.core.precision): native bf16 from the CPU's flags and oneDNN's ISA
limit, `auto` resolved before a run id is hashed, the one warning line for bf16 without native support,
and the precision every record names."""
import io
import subprocess
import sys

import pytest

from kl_utils.config.arms import arm_spec, canonical_spec
from kl_utils.config.profiles import read_profile
from kl_utils.core import precision, records

ZEN3 = {"avx", "avx2", "fma", "sse4_2"}                       # AMD EPYC Zen 3: AVX2 only
ZEN4 = ZEN3 | {"avx512f", "avx512bw", "avx512_bf16"}          # AVX-512 BF16
SPR = ZEN4 | {"amx_bf16", "amx_tile", "amx_int8"}             # Intel with AMX


@pytest.mark.parametrize("flags,env,native", [
    (ZEN3, {}, False), (ZEN4, {}, True), (SPR, {}, True),
    (SPR, {"ONEDNN_MAX_CPU_ISA": "AVX2"}, False),              # the forced AVX2 path (make test-avx2)
    (ZEN4, {"ONEDNN_MAX_CPU_ISA": "avx512_core"}, False),      # AVX-512 without its bf16 instructions
    (ZEN4, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}, True), (SPR, {"ONEDNN_MAX_CPU_ISA": "ALL"}, True),
    (ZEN3, {"ONEDNN_MAX_CPU_ISA": "ALL"}, False),
])
def test_native_bf16_follows_the_flags_and_the_isa_limit(flags, env, native):
    assert precision.cpu_native_bf16(flags, env) is native


def test_cpu_flags_read_the_flags_line():
    text = "processor : 0\nmodel name : X\nflags : fpu avx2 avx512_bf16\n\nprocessor : 1\nflags : fpu\n"
    assert precision.cpu_flags(text) == {"fpu", "avx2", "avx512_bf16"} and precision.cpu_flags("") == set()


def test_auto_resolves_to_the_hosts_precision(monkeypatch):
    for native, want in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(precision, "native_bf16", lambda device_type="cpu", n=native: n)
        assert precision.resolve("auto", "cpu") == want
        assert precision.resolve("bf16", "cpu") == "bf16" and precision.resolve("no", "cpu") == "no"
    assert precision.resolve(None) == "no" and precision.label("no") == "fp32"


def test_auto_is_resolved_before_the_run_id(monkeypatch):
    """Precision is part of a run's identity: auto hashes as what it resolves to on the host, so an auto run
    on a bf16 host has the id of the bf16 run, and on an AVX2 host that of the fp32 run."""
    cfg = read_profile("smoke")
    ids = {}
    for native in (True, False):
        monkeypatch.setattr(precision, "native_bf16", lambda device_type="cpu", n=native: n)
        for named in ("auto", "bf16", "no"):
            c = {**cfg, "cpt": {**cfg["cpt"], "mixed_precision": named}, "it": {**cfg["it"], "mixed_precision": named}}
            ids[native, named] = arm_spec(c, "baseline", 0)[2]
    assert ids[True, "auto"] == ids[True, "bf16"] != ids[False, "auto"] == ids[False, "no"]
    assert ids[True, "bf16"] == ids[False, "bf16"]  # an explicit precision is the same run on every host
    assert canonical_spec({"cpt": {"mixed_precision": "auto"}})["cpt"]["mixed_precision"] in ("bf16", "no")


def test_bf16_without_native_support_warns_once(monkeypatch):
    monkeypatch.setattr(precision, "native_bf16", lambda device_type="cpu": False)
    monkeypatch.setattr(precision, "_WARNED", [])
    out = io.StringIO()
    assert precision.warn_slow_bf16("bf16", "cpu", where="profile x:", stream=out)
    assert precision.warn_slow_bf16("bf16", "cpu", stream=out)      # still applies, printed once
    assert not precision.warn_slow_bf16("no", "cpu", stream=out)
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "profile x:" in lines[0] and "18x slower" in lines[0] and "mixed_precision: auto" in lines[0]
    monkeypatch.setattr(precision, "native_bf16", lambda device_type="cpu": True)
    assert not precision.warn_slow_bf16("bf16", "cpu", stream=out)


def test_records_name_each_stages_precision():
    cfg = {"base": {"enabled": False}, "cpt": {"mixed_precision": "bf16"}, "it": {}, "data": {}}
    assert records.stage_precisions(cfg) == {"cpt": "bf16", "it": "fp32"}
    assert records.record_precision({"config": cfg}) == {"cpt": "bf16", "it": "fp32"}  # older records: from config
    assert records.record_precision({"precision": {"cpt": "fp32"}, "config": cfg}) == {"cpt": "fp32"}
    env = records.environment()
    assert set(env["arithmetic"]) >= {"device", "native_bf16"}


def test_matmul_rate_is_positive():
    assert precision.matmul_gflops("float32", m=64, k=64, n=64, seconds=0.01, threads=1) > 0


def test_forced_avx2_path_has_no_native_bf16():
    """make test-avx2's environment: torch reports the AVX2 kernels and bf16 counts as not native."""
    code = ("import torch; from kl_utils.core import precision as p; "
            "print(torch.backends.cpu.get_cpu_capability(), p.cpu_native_bf16())")
    env = {**__import__("os").environ, **precision.AVX2_ENV}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.split()
    assert out[0] in ("AVX2", "DEFAULT") and out[1] == "False", out


def test_makefile_forces_the_same_avx2_path():
    from kl_utils.core.paths import ROOT
    line = next(l for l in (ROOT / "Makefile").read_text().splitlines() if l.startswith("AVX2_ENV :="))
    assert dict(kv.split("=") for kv in line.split(":=")[1].split()) == precision.AVX2_ENV
