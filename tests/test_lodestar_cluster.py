"""LodeSTAR past one machine: a stack detected as dask.distributed tasks gives the local result."""

import numpy as np
import pytest
import tifffile

from starloc import sim
from starloc.cli import main
from starloc.errors import InputError, ModelFileError
from starloc.io import read_points_csv
from starloc.lodestar.cluster import iter_detect_on_cluster
from starloc.lodestar.inference import iter_detect, iter_single
from starloc.lodestar.model import LodeSTAR
from starloc.lodestar.training import TrainConfig, train
from starloc.progress import finish
from tests.conftest import TINY


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lodestar_cluster")
    stack = np.stack([sim.simulate_scene("point", 4, size=(48, 48), snr=10, rng=s)[0] for s in range(5)])
    tifffile.imwrite(folder / "stack.tif", stack.astype(np.float32))
    crop, _, _ = sim.simulate_single("point", 10, 1, size=32, max_offset=1.0, rng=0)
    model = finish(train([crop[0]], TrainConfig(network=TINY, max_steps=20, min_steps=20, copies=4)))
    model.save(folder / "model.pt")
    return folder


class _NoSubmit:
    """A client that fails the test if any task is sent."""

    def submit(self, *args, **kwargs):
        raise AssertionError("a task was sent before the input was checked")


def test_a_frame_selection_keeps_the_stack_numbering(files):
    model, image = LodeSTAR.load(files / "model.pt"), tifffile.imread(files / "stack.tif")
    whole = finish(iter_detect(model, image))
    progress = []
    part = finish(iter_detect(model, image, frames=slice(2, 4)), progress.append)
    keep = (whole.frame >= 2) & (whole.frame < 4)
    assert keep.sum() > 0 and np.array_equal(part.frame, whole.frame[keep])
    np.testing.assert_allclose(part.positions, whole.positions[keep], atol=1e-5)
    assert progress[-1] == (2, 2)
    single = finish(iter_single(model, image, frames=(1, 3), augment=False))
    assert single.frame.tolist() == [1, 2]
    with pytest.raises(InputError, match="selects no frame"):
        finish(iter_detect(model, image, frames=slice(7, 9)))


def test_chunks_of_large_frames_hold_a_bounded_number_of_pixels(files, monkeypatch):
    import starloc.lodestar.inference as inference

    assert inference.frames_per_chunk(8, (1, 1, 256, 256)) == 8
    assert inference.frames_per_chunk(8, (4, 1, 1024, 1024)) == 4
    assert inference.frames_per_chunk(8, (4, 1, 8192, 8192)) == 1
    model, image = LodeSTAR.load(files / "model.pt"), tifffile.imread(files / "stack.tif")
    whole = finish(iter_detect(model, image))
    monkeypatch.setattr(inference, "CHUNK_PIXELS", 2 * 48 * 48)  # two of the 48 x 48 px frames
    progress = []
    part = finish(iter_detect(model, image), progress.append)
    assert progress == [(2, 5), (4, 5), (5, 5)]
    assert np.array_equal(part.frame, whole.frame)
    np.testing.assert_allclose(part.positions, whole.positions, atol=1e-4)
    progress = []
    finish(iter_single(model, image, augment=False), progress.append)
    assert progress == [(2, 5), (4, 5), (5, 5)]


@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    # threads, not processes: the same code path (tasks, futures, results) in a second of start-up
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.mark.parametrize("single", [False, True])
def test_cluster_detections_equal_the_local_ones(files, client, single):
    model, image = LodeSTAR.load(files / "model.pt"), tifffile.imread(files / "stack.tif")
    run = iter_single if single else iter_detect
    local = finish(run(model, image, frames=slice(1, 5), augment=single))
    progress = []
    found = finish(iter_detect_on_cluster(files / "model.pt", files / "stack.tif", client, single=single,
                                          frames=slice(1, 5), frames_per_task=2), progress.append)
    assert len(local) > 0 and np.array_equal(found.frame, local.frame)
    np.testing.assert_allclose(found.positions, local.positions, atol=1e-5)
    assert found.features.keys() == local.features.keys()
    for key in local.features:
        np.testing.assert_allclose(found.features[key], local.features[key], rtol=1e-5, atol=1e-6)
    assert [total for _, total in progress] == [4, 4] and progress[-1][0] == 4


def test_bad_input_fails_before_any_task_is_sent(files, tmp_path):
    with pytest.raises(InputError, match="selects no frame"):
        iter_detect_on_cluster(files / "model.pt", files / "stack.tif", _NoSubmit(), frames=slice(9, 12))
    np.save(tmp_path / "rgb.npy", np.zeros((2, 40, 48, 3), np.float32))
    with pytest.raises(InputError, match="RGB"):
        iter_detect_on_cluster(files / "model.pt", tmp_path / "rgb.npy", _NoSubmit())
    bad = tifffile.imread(files / "stack.tif")
    bad[0, 3, 4] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", bad)
    with pytest.raises(InputError, match="NaN"):
        iter_detect_on_cluster(files / "model.pt", tmp_path / "nan.tif", _NoSubmit())
    (tmp_path / "foreign.pt").write_bytes(b"not a model")
    with pytest.raises(ModelFileError):
        iter_detect_on_cluster(tmp_path / "foreign.pt", files / "stack.tif", _NoSubmit())


def test_cli_scheduler_option_writes_the_local_csv(files, client, tmp_path, capsys):
    common = ["lodestar", "detect", str(files / "stack.tif"), "--model", str(files / "model.pt"),
              "--device", "cpu", "--frames", "1:4"]
    assert main([*common, "-o", str(tmp_path / "local.csv")]) == 0
    assert main([*common, "--scheduler", client.scheduler.address, "--frames-per-task", "2",
                 "-o", str(tmp_path / "cluster.csv")]) == 0
    (lf, lpos, _), (cf, cpos, _) = read_points_csv(tmp_path / "local.csv"), read_points_csv(tmp_path / "cluster.csv")
    assert len(lf) > 0 and set(lf.tolist()) <= {1, 2, 3} and np.array_equal(lf, cf)
    np.testing.assert_allclose(cpos, lpos, atol=1e-3)
    assert main([*common, "--workers", "2", "--scheduler", "tcp://127.0.0.1:1", "-o", str(tmp_path / "x.csv")]) == 2
    assert "either --scheduler" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_cluster_failures_are_one_line_errors(files, client, tmp_path, capsys):
    common = ["lodestar", "detect", str(files / "stack.tif"), "--model", str(files / "model.pt"), "--device", "cpu",
              "-o", str(tmp_path / "x.csv")]
    for address, said in (("notanaddress", "missing port number"), ("http://127.0.0.1:8799", "unknown address scheme")):
        assert main([*common, "--scheduler", address]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"starloc: error: cannot reach the dask scheduler {address!r}") and said in err[-1]
    # a task that fails on a worker (here: a model file gone by the time the worker reads it)
    # is one line saying so, not the worker's traceback
    from starloc.cluster import iter_completed

    def lost(path):
        raise FileNotFoundError(f"[Errno 2] No such file or directory: {path!r}")

    with pytest.raises(InputError, match=r"^a dask worker failed: \[Errno 2\] No such file or directory: 'm.pt'$"):
        finish(iter_completed({client.submit(lost, "m.pt", pure=False): 1}, lambda *a: a))

    def refused():
        raise InputError("image file 'x.tif' not found")

    with pytest.raises(InputError, match=r"^on a dask worker: image file 'x.tif' not found$"):
        finish(iter_completed({client.submit(refused, pure=False): 1}, lambda *a: a))
    import threading
    import time

    slow = client.submit(time.sleep, 2, pure=False)
    threading.Timer(0.2, client.cancel, ([slow],)).start()  # as a restart or another client would
    with pytest.raises(InputError, match=r"^the dask cluster cancelled this run's tasks"):
        finish(iter_completed({slow: 1}, lambda *a: a))
    assert not (tmp_path / "x.csv").exists()


def test_tasks_default_to_about_four_per_worker(client):
    from argparse import Namespace

    from starloc.cli_common import task_frames

    auto = Namespace(frames_per_task=None)
    assert task_frames(auto, client, 600) == 75  # 2 workers: 8 tasks (one task of 1000 kept a worker idle)
    assert task_frames(auto, client, 3) == 1 and task_frames(auto, client, 100_000) == 1000
    assert task_frames(Namespace(frames_per_task=7), client, 600) == 7


def test_the_output_is_written_before_the_cluster_closes(files, client, tmp_path, monkeypatch):
    # closing a cluster takes seconds: a Ctrl-C then must find the results already on disk
    import contextlib

    import starloc.cluster

    out = tmp_path / "x.csv"
    closed_with = []

    @contextlib.contextmanager
    def recording_client(scheduler, workers):
        yield client
        closed_with.append(out.exists())

    monkeypatch.setattr(starloc.cluster, "open_client", recording_client)
    assert main(["lodestar", "detect", str(files / "stack.tif"), "--model", str(files / "model.pt"),
                 "--workers", "2", "-o", str(out)]) == 0
    assert closed_with == [True]


def test_a_scheduler_without_workers_is_said_not_waited_on_silently(monkeypatch):
    distributed = pytest.importorskip("distributed")
    import warnings

    import starloc.cluster
    from starloc.errors import StarlocWarning

    monkeypatch.setattr(starloc.cluster, "POLL_S", 0.05)
    monkeypatch.setattr(starloc.cluster, "NO_WORKERS_WARN_S", 0.0)
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c, warnings.catch_warnings():
        warnings.simplefilter("error", StarlocWarning)  # stops the wait at the warning
        future = c.submit(sum, [1, 2], pure=False)
        with pytest.raises(StarlocWarning, match=r"has had no worker for 0 s .*Start workers"):
            finish(starloc.cluster.iter_completed({future: 1}, lambda *a: a))
        assert future.cancelled()  # closing the wait cancels its tasks


def test_a_worker_without_a_gpu_refuses_device_cuda_in_one_line():
    import torch

    from starloc.cluster import worker_model

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(InputError, match=r"^--device cuda, but the worker on .* has no CUDA GPU"):
        worker_model(LodeSTAR.load, "unused.pt", "cuda", 1)


def test_a_timed_out_scheduler_address_hints_at_the_dashboard_port(monkeypatch):
    distributed = pytest.importorskip("distributed")

    from starloc.cluster import open_client

    def timed_out(address, timeout):
        raise OSError(f"Timed out trying to connect to {address} after {timeout}")

    monkeypatch.setattr(distributed, "Client", timed_out)
    with pytest.raises(InputError, match=r"after 30s \(give the scheduler's own address, port 8786"):
        with open_client("tcp://127.0.0.1:8787"):
            pass
