"""The CPU-kernel pin and the record of what decides a run's bits."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from mnist_vae import CPU_KERNELS, environment
from mnist_vae.environment import (
    HUGEPAGE_SWITCH,
    NATIVE_SWITCH,
    PINNED,
    PINNED_KERNELS,
    SET_BY_PIN,
    keep_arrays_off_huge_pages,
    pin_cpu_kernels,
)

x86_only = pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="the pin is for x86-64"
)


@x86_only
def test_an_avx2_cpu_gets_all_three_kernel_families_capped():
    env: dict[str, str] = {}
    assert pin_cpu_kernels(env, flags={"sse4_2", "avx2", "avx512f"}) == PINNED
    assert {k: env[k] for k in PINNED_KERNELS} == PINNED_KERNELS
    # idempotent: a child process that inherits the pin keeps it
    assert pin_cpu_kernels(env, flags={"avx2"}) == PINNED
    assert {k: env[k] for k in PINNED_KERNELS} == PINNED_KERNELS


@x86_only
def test_the_switch_in_a_child_takes_back_only_what_the_pin_set():
    env = {"MKL_CBWR": "COMPATIBLE"}  # the user's own
    pin_cpu_kernels(env, flags={"avx2"})
    child = {**env, NATIVE_SWITCH: "1"}
    assert pin_cpu_kernels(child, flags={"avx2"}) == f"native ({NATIVE_SWITCH}=1)"
    assert child == {"MKL_CBWR": "COMPATIBLE", NATIVE_SWITCH: "1"}


@x86_only
def test_what_the_user_set_wins_over_the_pin():
    env = {"ATEN_CPU_CAPABILITY": "default"}
    assert pin_cpu_kernels(env, flags={"avx2"}) == PINNED
    assert env["ATEN_CPU_CAPABILITY"] == "default"
    assert env["MKL_CBWR"] == "AVX2,STRICT"


@pytest.mark.parametrize("value", ["1", "yes"])
def test_the_switch_leaves_the_kernels_native(value):
    env = {NATIVE_SWITCH: value}
    assert pin_cpu_kernels(env, flags={"avx2"}) == f"native ({NATIVE_SWITCH}={value})"
    assert env == {NATIVE_SWITCH: value}


@x86_only
def test_a_cpu_without_avx2_is_never_pinned():
    """torch trusts ATEN_CPU_CAPABILITY blindly: pinning AVX2 there would crash."""
    env: dict[str, str] = {}
    assert pin_cpu_kernels(env, flags={"sse4_2", "avx"}) == "native (the CPU does not report AVX2)"
    assert env == {}


def test_cpu_flags_reads_the_flags_line(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert environment.cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512f"}
    assert environment.cpu_flags(tmp_path / "missing") is None


def _in_fresh_process(env: dict[str, str]) -> dict:
    code = (
        "import json, mnist_vae, torch; from mnist_vae import environment;"
        "print(json.dumps(environment.record('cpu', mnist_vae.CPU_KERNELS)))"
    )
    drop = (*PINNED_KERNELS, NATIVE_SWITCH, SET_BY_PIN)
    clean = {k: v for k, v in os.environ.items() if k not in drop}
    out = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return json.loads(out)


@pytest.mark.skipif(CPU_KERNELS != PINNED, reason="this CPU is not pinned (no AVX2)")
def test_importing_the_package_pins_torch_and_the_record_says_so():
    pinned = _in_fresh_process({})
    assert pinned["cpu_kernels"] == "avx2"
    assert pinned["cpu_capability"] == "AVX2"  # what torch itself reports
    assert (pinned["mkl_cbwr"], pinned["dnnl_max_cpu_isa"]) == ("AVX2,STRICT", "AVX2")
    assert pinned["torch"] == __import__("torch").__version__
    assert pinned["device"] == "cpu" and pinned["threads"] >= 1

    # as a child of a pinned process (the variables inherited) started with the switch
    inherited = {**PINNED_KERNELS, SET_BY_PIN: ",".join(PINNED_KERNELS)}
    native = _in_fresh_process({**inherited, NATIVE_SWITCH: "1", "OMP_NUM_THREADS": "1"})
    assert native["cpu_kernels"] == f"native ({NATIVE_SWITCH}=1)"
    assert (native["mkl_cbwr"], native["dnnl_max_cpu_isa"]) == ("auto", "all")
    assert native["cpu_capability"] != "AVX2" or "avx512f" not in (environment.cpu_flags() or ())
    assert native["threads"] == 1


_HUGE_PAGES_NOW = (
    "import {first}mnist_vae, numpy\n"
    "core = 'numpy._core' if int(numpy.__version__.split('.')[0]) >= 2 else 'numpy.core'\n"
    "print(__import__(core + '.multiarray', fromlist=['_'])._set_madvise_hugepage(False))"
)


@pytest.mark.parametrize("first", ["", "pandas, ", "mlflow, "])
def test_numpy_stops_asking_for_huge_pages_whoever_imports_it_first(first):
    """Off whether NumPy comes after the package (it reads the variable) or before it (a
    stage imports pandas or MLflow first: the switch is turned at run time)."""
    env = {k: v for k, v in os.environ.items() if k != HUGEPAGE_SWITCH}
    out = subprocess.run(
        [sys.executable, "-c", _HUGE_PAGES_NOW.format(first=first)],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "False"  # the setting before this call: off


def test_a_user_who_asks_for_huge_pages_keeps_them():
    env = {**os.environ, HUGEPAGE_SWITCH: "1"}
    assert keep_arrays_off_huge_pages(env) is False and env[HUGEPAGE_SWITCH] == "1"
    out = subprocess.run(
        [sys.executable, "-c", _HUGE_PAGES_NOW.format(first="pandas, ")],
        env=env, capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert out.strip() == "True"
