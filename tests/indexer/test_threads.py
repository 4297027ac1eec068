"""The thread budget and the compute dtype are decided from the machine, with overrides."""

import os


from indexer.threads import available_cores, cgroup_cpu_limit, thread_budget


def test_cgroup_quota_is_read_from_v2_then_v1(tmp_path):
    v2 = tmp_path / "cpu.max"
    v1 = (tmp_path / "quota", tmp_path / "period")
    v2.write_text("150000 100000\n")
    assert cgroup_cpu_limit(v2, v1) == 2  # 1.5 CPUs round up
    v2.write_text("max 100000\n")
    assert cgroup_cpu_limit(v2, v1) is None
    v2.unlink()
    v1[0].write_text("300000")
    v1[1].write_text("100000")
    assert cgroup_cpu_limit(v2, v1) == 3
    v1[0].write_text("-1")
    assert cgroup_cpu_limit(v2, v1) is None


def test_budget_is_the_usable_cores_unless_overridden():
    usable = len(os.sched_getaffinity(0))
    assert 1 <= available_cores() <= usable
    assert thread_budget(env={}) == available_cores()
    assert thread_budget(env={"DIFFSEARCH_THREADS": "3"}) == 3
    assert thread_budget(5, env={"DIFFSEARCH_THREADS": "3"}) == 5  # an explicit setting wins
    assert thread_budget(env={"DIFFSEARCH_THREADS": "many"}) == available_cores()


def test_bf16_and_fp32_vectors_agree_so_dtype_is_a_runtime_option(default_model, sample_photos):
    from indexer.embedding.config import EmbeddingConfig, RuntimeOptions
    from indexer.embedding.embedder import Embedder

    make = lambda dtype: Embedder(EmbeddingConfig(), RuntimeOptions(device="cpu", dtype=dtype), model=default_model)  # noqa: E731
    bf16, fp32 = make("bfloat16"), make("float32")
    assert bf16.fingerprint == fp32.fingerprint and bf16.projection is not None and fp32.projection is not None
    a, b = bf16.embed(sample_photos[:16]), fp32.embed(sample_photos[:16])
    assert (a * b).sum(axis=1).min() > 0.999


def test_openmp_threads_spin_only_briefly_unless_the_user_says_otherwise():
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    probe = (
        "import indexer, torch, os; torch.ones(64, 64) @ torch.ones(64, 64); "
        "print(os.environ.get('GOMP_SPINCOUNT'), os.environ.get('OMP_WAIT_POLICY'))"
    )

    def settings(**given):
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")} | given
        return subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.split()

    assert settings() == ["10000", "None"]
    assert settings(OMP_WAIT_POLICY="PASSIVE") == ["None", "PASSIVE"]  # a policy set by hand is the user's
    assert settings(GOMP_SPINCOUNT="500") == ["500", "None"]
