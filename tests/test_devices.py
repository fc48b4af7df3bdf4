"""Devices and precision from config, on-device batches, and DDP's gathered Cox loss (2 gloo processes)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from multimodal.errors import MultimodalError
from multimodal.model.data import CohortArrays, CohortDataModule, DeviceBatches, rank_share
from multimodal.model.train import TrainParams, build_trainer, resolve_precision


def test_config_keys_reach_the_trainer():
    """The Trainer built by the training code path carries model.accelerator/precision/devices/num_nodes/strategy."""
    from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy

    params = TrainParams.from_config(
        {"accelerator": "cpu", "precision": "32-true", "devices": 2, "num_nodes": 1, "strategy": "ddp", "epochs": 7}
    )
    trainer = build_trainer(params)
    assert isinstance(trainer.strategy, DDPStrategy)
    assert trainer.num_devices == 2 and trainer.num_nodes == 1 and trainer.world_size == 2
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters") is True
    assert trainer.precision == "32-true" and trainer.max_epochs == 7
    assert type(trainer.accelerator).__name__ == "CPUAccelerator"

    single = build_trainer(TrainParams.from_config({"accelerator": "cpu", "precision": "auto"}))
    assert isinstance(single.strategy, SingleDeviceStrategy) and single.num_devices == 1
    assert single.precision == "32-true"  # auto on a CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_bf16_on_cpu_is_refused_in_one_line():
    params = TrainParams.from_config({"accelerator": "cpu", "precision": "bf16-mixed"})
    with pytest.raises(MultimodalError, match=r"^model\.precision: bf16-mixed needs a CUDA device .* the CPU"):
        build_trainer(params)
    assert resolve_precision(TrainParams(accelerator="auto", precision="auto")) == "32-true"
    with pytest.raises(MultimodalError, match=r"^model\.accelerator: cuda asked for, but no CUDA device"):
        build_trainer(TrainParams(accelerator="cuda"))


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"precision": "16"}, r"model\.precision must be one of 32-true, bf16-mixed, auto, got 16"),
        ({"strategy": "fsdp"}, r"model\.strategy must be one of auto, ddp, got fsdp"),
        ({"devices": 0}, r"model\.devices must be at least 1, got 0"),
        ({"num_nodes": 1.5}, r"model\.num_nodes must be a whole number, got 1.5"),
        ({"devices": 2}, r"model\.strategy must be ddp to train on 2 device\(s\) x 1 node\(s\), got auto"),
        ({"batch_size": 1}, r"model\.batch_size must be at least 2, got 1"),
    ],
)
def test_device_settings_are_checked(section, message):
    with pytest.raises(MultimodalError, match=f"^{message}$"):
        TrainParams.from_config(section)


def test_full_batch_is_the_on_device_tensors_themselves():
    tensors = (torch.arange(10.0).reshape(5, 2), torch.arange(5.0))
    batches = list(DeviceBatches(tensors))
    assert len(batches) == 1 and all(a is b for a, b in zip(batches[0], tensors, strict=True))  # no copy, no collate


def test_mini_batches_are_seeded_and_cover_every_row_once():
    tensors = (torch.arange(11.0),)

    def order(epoch: int) -> torch.Tensor:
        batches = DeviceBatches(tensors, batch_size=4, shuffle=True, seed=3, epoch=lambda: epoch)
        return torch.cat([b[0] for b in batches])

    epochs, again = [order(0), order(1)], order(1)
    assert len(DeviceBatches(tensors, batch_size=4)) == 3
    for order in epochs:
        assert sorted(order.tolist()) == list(range(11))
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert torch.equal(epochs[1], again)  # by the seed and the epoch only (a resumed run continues it)


def test_rank_shares_are_equal_sized_and_padding_is_marked():
    n = 7
    tensors = (
        torch.arange(n * 2.0).reshape(n, 2),
        torch.ones(n, 1, dtype=torch.bool),
        torch.arange(n) + 1.0,
        torch.ones(n),
        torch.zeros(n),
    )
    shares = [rank_share(tensors, rank=r, world_size=3) for r in range(3)]
    assert all(s[0].shape == (3, 2) for s in shares)
    real = torch.cat([s[2][torch.isfinite(s[2])] for s in shares])
    assert sorted(real.tolist()) == [float(i) for i in range(1, n + 1)]  # every row once, padding NaN
    assert sum(int(torch.isnan(s[2]).sum()) for s in shares) == 2
    assert all(torch.isnan(s[j][torch.isnan(s[2])]).all() for s in shares for j in (3, 4))


def _arrays(n: int, seed: int) -> CohortArrays:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(n, 6)), rng.normal(size=(n, 4))
    present_b = rng.random(n) > 0.2
    b[~present_b] = np.nan
    risk = a[:, 0] - b[:, 1].clip(-2, 2) * present_b
    time = np.round(rng.exponential(np.exp(-np.nan_to_num(risk))) * 20) + 1  # rounded: tied times
    return CohortArrays(
        patients=[f"p{i}" for i in range(n)],
        modalities=["a", "b"],
        features={"a": [f"a{j}" for j in range(6)], "b": [f"b{j}" for j in range(4)]},
        x={"a": a, "b": b},
        present={"a": np.ones(n, dtype=bool), "b": present_b},
        time=time,
        event=(rng.random(n) < 0.7).astype(float),
        response=np.where(rng.random(n) < 0.3, np.nan, (rng.random(n) < 0.5).astype(float)),
        site=np.array(["all"] * n),
    )


def test_data_module_moves_the_fold_to_the_device_once():
    arrays = _arrays(30, 1)
    data = CohortDataModule(arrays, train_rows=np.arange(24), test_rows=np.arange(24, 30))
    first, second = next(iter(data.train_dataloader())), next(iter(data.train_dataloader()))
    assert all(x.data_ptr() == y.data_ptr() for x, y in zip(first, second, strict=True))
    assert first[0].shape[0] == 24 and len(first) == 2 + 1 + 4  # inputs, mask, time, event, response, targets


DDP_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import torch
    sys.path.insert(0, {tests!r})
    from test_devices import _arrays
    from multimodal.model.data import CohortDataModule
    from multimodal.model.fusion import FusionSurvivalModel
    from multimodal.model.train import TrainParams, build_trainer

    strategy, devices, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    torch.manual_seed(5)
    arrays = _arrays(41, 2)
    data = CohortDataModule(arrays, train_rows=np.arange(41), test_rows=np.arange(41))
    model = FusionSurvivalModel(data.input_dims, hidden_dim=8, dropout=0.0, input_dropout=0.0, fusion="sum",
                                linear=True)
    params = TrainParams(accelerator="cpu", strategy=strategy, devices=devices, epochs=6)
    trainer = build_trainer(params)
    losses = []

    step = model.training_step
    def recorded(batch, batch_idx):
        loss = step(batch, batch_idx)
        losses.append(float(loss))
        return loss
    model.training_step = recorded
    trainer.fit(model, datamodule=data)
    if trainer.is_global_zero:
        torch.save({{"state": model.state_dict(), "losses": torch.tensor(losses)}}, out)
    """
)


@pytest.mark.slow
def test_ddp_on_two_gloo_processes_trains_as_one_process(tmp_path):
    """Each rank holds half the (odd number of) training rows; the gathered Cox loss and its gradient are the
    single process's, so after 6 AdamW steps the weights agree and every step's loss was the same."""
    from pathlib import Path

    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT.format(tests=str(Path(__file__).parent)))
    results = {}
    for strategy, devices in (("auto", 1), ("ddp", 2)):
        out = tmp_path / f"{strategy}.pt"
        done = subprocess.run(
            [sys.executable, str(script), strategy, str(devices), str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        results[strategy] = torch.load(out, weights_only=True)
    single, ddp = results["auto"], results["ddp"]
    assert len(single["losses"]) == len(ddp["losses"]) == 6
    torch.testing.assert_close(ddp["losses"], single["losses"], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(single["losses"][0], single["losses"][-1])  # it did train
    # the risk head's bias has no gradient (the Cox loss ignores a shift of every risk): Adam turns its
    # rounding noise into steps, so it is left out; every other weight agrees
    for name, value in single["state"].items():
        if name != "net.risk_head.bias":
            torch.testing.assert_close(ddp["state"][name], value, rtol=1e-4, atol=1e-5, msg=name)
