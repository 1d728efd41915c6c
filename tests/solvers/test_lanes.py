"""How local replicas share the machine (vggtool.solvers.lanes): which replicas run together, and the
BLAS / split-pass threads each lane gets while they do."""
import pytest

from vggtool import config
from vggtool.backend import CPU, Device
from vggtool.errors import VggtoolError
from vggtool.layers import gemm
from vggtool.solvers.lanes import cores_per_lane, cpu_cores, plan_lanes, ranks_on_this_host, share_host_between_ranks

GPUS = [Device("gpu", i) for i in range(4)]


def test_cpu_replicas_get_one_lane_per_core_with_consecutive_replicas():
    assert plan_lanes([CPU] * 4, cores=2) == [[0, 1], [2, 3]]
    assert plan_lanes([CPU] * 4, cores=3) == [[0], [1], [2, 3]]
    assert plan_lanes([CPU] * 2, cores=16) == [[0], [1]]  # never more lanes than replicas
    assert plan_lanes([CPU] * 3, cores=1) == [[0, 1, 2]]
    assert plan_lanes([CPU] * 5) == plan_lanes([CPU] * 5, cores=cpu_cores())


def test_gpus_run_one_lane_each_and_a_mix_runs_in_one():
    assert plan_lanes(GPUS, cores=1) == [[0], [1], [2], [3]]
    assert plan_lanes([GPUS[0], CPU, GPUS[1]], cores=8) == [[0, 1, 2]]


def test_threads_and_lanes_override_the_default():
    assert plan_lanes([CPU] * 4, threads=True, cores=1) == [[0], [1], [2], [3]]
    assert plan_lanes(GPUS, threads=False) == [[0, 1, 2, 3]]
    assert plan_lanes([CPU] * 4, lanes=2, cores=16) == [[0, 1], [2, 3]]
    assert plan_lanes([CPU] * 2, lanes=8) == [[0], [1]]
    with pytest.raises(VggtoolError, match="lanes must be at least 1, got 0"):
        plan_lanes([CPU] * 2, lanes=0)
    with pytest.raises(VggtoolError, match="give threads or lanes, not both"):
        plan_lanes([CPU] * 2, threads=True, lanes=2)


@pytest.fixture
def four_blas_threads(blas_thread_count):
    blas_thread_count(4)
    with config.override(num_threads=6):
        yield


def test_concurrent_lanes_split_the_threads_and_give_them_back(four_blas_threads):
    with cores_per_lane(2):
        assert gemm.blas_threads() == 2 and config.defaults().num_threads == 3
    assert gemm.blas_threads() == 4 and config.defaults().num_threads == 6
    with cores_per_lane(8):  # more lanes than threads: one each
        assert gemm.blas_threads() == 1 and config.defaults().num_threads == 1
    with cores_per_lane(1):
        assert gemm.blas_threads() == 4 and config.defaults().num_threads == 6
    with pytest.raises(RuntimeError, match="a replica failed"):
        with cores_per_lane(4):
            raise RuntimeError("a replica failed")
    assert gemm.blas_threads() == 4 and config.defaults().num_threads == 6


def test_ranks_on_one_host_take_their_share_of_the_cores(four_blas_threads):
    assert share_host_between_ranks(2, cores=4) == 2
    assert gemm.blas_threads() == 2 and config.defaults().num_threads == 2
    assert share_host_between_ranks(1, cores=8) == 2  # counts below the share are kept
    assert gemm.blas_threads() == 2 and config.defaults().num_threads == 2
    assert share_host_between_ranks(3, cores=2) == 1
    assert ranks_on_this_host(None) == 1
