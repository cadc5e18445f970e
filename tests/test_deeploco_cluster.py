"""DeepLoco past one machine: a stack localized as dask.distributed tasks gives the local table."""

import signal
import warnings

import numpy as np
import pytest
import tifffile

from starloc.cli import main
from starloc.deeploco import EMCCD
from starloc.deeploco.cluster import chunk_ranges, iter_localize_stack_on_cluster
from starloc.deeploco.model import DeepLoco
from starloc.deeploco.network import DeepLocoConfig
from starloc.deeploco.stack import localize_stack
from starloc.errors import InputError, StarlocWarning
from starloc.progress import finish
from starloc.smlm_io import read_thunderstorm_csv
from tests.conftest import simulated_adu_stack

distributed = pytest.importorskip("distributed")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cluster")
    tifffile.imwrite(folder / "stack.tif", simulated_adu_stack(7, (40, 48), (2, 5)), photometric="minisblack")
    cfg = DeepLocoConfig(frame_size=32, conv_widths=(4, 8, 8), pixel_size=100.0, architecture="fcn")
    DeepLoco.new(cfg, seed=0, camera=EMCCD.smlm2016()).save(folder / "model.pt")
    return folder


@pytest.fixture(scope="module")
def client():
    # threads, not processes: the same code path (tasks, futures, results) in a second of start-up
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


def test_chunk_ranges_cover_the_selection_once():
    assert chunk_ranges(range(3, 10), 3) == [(3, 6), (6, 9), (9, 10)]
    assert chunk_ranges(range(0, 2), 5) == [(0, 2)]
    with pytest.raises(InputError, match="frames per task"):
        chunk_ranges(range(4), 0)


def test_cluster_table_equals_the_local_one(files, client):
    model_path, stack_path = files / "model.pt", files / "stack.tif"
    local = localize_stack(DeepLoco.load(model_path), stack_path, threshold=0.01, frames=slice(1, 7))
    progress = []
    table = finish(iter_localize_stack_on_cluster(model_path, stack_path, client, frames=slice(1, 7),
                                                  frames_per_task=2, threshold=0.01), progress.append)
    assert len(local["frame"]) > 0 and set(np.unique(table["frame"])) <= set(range(1, 7))
    assert table.keys() == local.keys()
    for key in local:
        np.testing.assert_allclose(table[key], local[key], rtol=0, atol=1e-4)
    assert [p.frames_total for p in progress] == [6, 6, 6] and progress[-1].frames_done == 6
    assert progress[-1].localizations == len(table["frame"])


def test_bad_input_is_refused_before_any_task_is_sent(files, client, tmp_path):
    with pytest.raises(InputError, match="selects no frame"):
        iter_localize_stack_on_cluster(files / "model.pt", files / "stack.tif", client, frames=slice(20, 30))
    with pytest.raises(InputError, match="160"):
        iter_localize_stack_on_cluster(files / "model.pt", files / "stack.tif", client, pixel_size=160.0)
    np.save(tmp_path / "rgb.npy", np.zeros((2, 40, 48, 3), np.float32))
    with pytest.raises(InputError):
        iter_localize_stack_on_cluster(files / "model.pt", tmp_path / "rgb.npy", client)
    bad = tifffile.imread(files / "stack.tif").astype(np.float32)
    bad[0, 3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(InputError, match="NaN"):
        iter_localize_stack_on_cluster(files / "model.pt", tmp_path / "nan.tif", client)


def test_warnings_reach_the_client_not_only_a_worker_log(files, client):
    model = DeepLoco.load(files / "model.pt")
    model.metadata = {"training": {"simulator": {"background_range": [20.0, 200.0]}}}
    model.save(files / "trained.pt")
    # an ADU stack read as photons: a background of thousands of "photons"/px
    with pytest.warns(StarlocWarning, match="outside the model's training range"):
        gen = iter_localize_stack_on_cluster(files / "trained.pt", files / "stack.tif", client, input_units="photons",
                                             threshold=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StarlocWarning)  # the workers of this in-process cluster warn too
        assert {"frame", "x", "y", "confidence"} <= set(finish(gen))


def test_cli_workers_option_writes_the_local_result(files, tmp_path, capsys):
    common = ["deeploco", "localize", str(files / "stack.tif"), "--model", str(files / "model.pt"),
              "--threshold", "0.01"]
    assert main([*common, "-o", str(tmp_path / "local.csv")]) == 0
    assert main([*common, "--workers", "2", "--frames-per-task", "3", "-o", str(tmp_path / "cluster.csv")]) == 0
    local, cluster = read_thunderstorm_csv(tmp_path / "local.csv"), read_thunderstorm_csv(tmp_path / "cluster.csv")
    assert len(local["x"]) > 0 and np.array_equal(local["frame"], cluster["frame"])
    np.testing.assert_allclose(cluster["x"], local["x"], atol=1e-3)
    assert main([*common, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", "-o", str(tmp_path / "x.csv")]) == 2
    assert "either --scheduler" in capsys.readouterr().err


def test_local_cluster_workers_keep_the_default_malloc_trim_and_ignore_ctrl_c():
    from starloc.deeploco.cluster import local_cluster

    def environ():
        import os
        import signal

        return os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS"), signal.getsignal(signal.SIGINT)

    handler = signal.getsignal(signal.SIGINT)
    with local_cluster(1) as cluster, distributed.Client(cluster) as c:
        (trim, omp, sigint), = c.run(environ).values()
    assert trim is None and omp == "1"  # dask's other settings stay
    # Ctrl-C is this process's to handle (workers printed a traceback each), and it still is
    assert sigint == signal.SIG_IGN and signal.getsignal(signal.SIGINT) is handler


def test_a_worker_its_nanny_starts_again_ignores_ctrl_c_too():
    import os
    import time

    from starloc.deeploco.cluster import local_cluster

    def sigint():
        return signal.getsignal(signal.SIGINT)

    with local_cluster(1) as cluster, distributed.Client(cluster) as c:
        (first,) = c.run(os.getpid).values()
        os.kill(first, signal.SIGKILL)
        deadline, pids = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                pids = list(c.run(os.getpid).values())
            except Exception:  # the dead worker is still listed
                continue
            if pids and pids != [first]:
                break
        assert pids and pids != [first], "the nanny did not start the worker again"
        assert list(c.run(sigint).values()) == [signal.SIG_IGN]
