"""The Ray engine against the local one: a small survey on a local Ray (1 CPU, small object store).

Ray runs the same task functions as the local engine, so the results must be equal exactly when
both use the same number of threads (a Ray task of one CPU runs torch on one thread; so does the
local run here: a multi-threaded BLAS may sum in another order).
"""

from __future__ import annotations

import numpy as np
import pytest

from deltaw.cache import Cache
from deltaw.engines import get_engine
from deltaw.errors import DeltawError
from deltaw.population import survey
from minilm_runs import minilm_runs

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def engine():
    from deltaw.engines.ray import RayEngine

    engine = RayEngine(num_cpus=1, object_store_memory=80 * 2**20)
    yield engine
    engine.close()
    assert not ray.is_initialized()


@pytest.mark.slow
def test_ray_survey_equals_local_exactly(engine, tmp_path):
    runs = minilm_runs()
    checkpoints = [runs.lora[(2, 0)], runs.lora[(4, 0)], runs.lora[(4, 1)], runs.lora[(8, 0)]]
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = survey(checkpoints, engine=get_engine("local"), cache=Cache.disabled())
    finally:
        torch.set_num_threads(threads)
    remote = survey(checkpoints, engine=engine, cache=Cache.disabled())
    assert remote.engine == "ray" and local.engine == "local"
    np.testing.assert_array_equal(remote.cosine, local.cosine)
    assert [m.name for m in remote.modules] == [m.name for m in local.modules]
    for a, b in zip(remote.modules, local.modules):
        np.testing.assert_array_equal(a.cosine, b.cosine)
        np.testing.assert_array_equal(a.overlap, b.overlap)
        assert a.directions == b.directions
    assert [s.to_json() for s in remote.summaries] == [s.to_json() for s in local.summaries]


def test_an_error_in_a_task_is_one_line(engine, tmp_path):
    runs = minilm_runs()
    missing = tmp_path / "gone"
    missing.mkdir()
    (missing / "adapter_config.json").write_text("{}")
    with pytest.raises(DeltawError) as err:
        survey([runs.lora[(2, 0)], missing], engine=engine, cache=Cache.disabled())
    assert "\n" not in str(err.value) and str(missing) in str(err.value)


def test_local_engine_refuses_a_ray_address():
    with pytest.raises(DeltawError, match="--ray-address is for --engine ray"):
        get_engine("local", address="auto")
