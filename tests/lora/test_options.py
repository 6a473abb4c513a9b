"""Run options: validation, the saved form and its defaults for older runs, the learning-rate schedule."""
import pytest

import coa_lora.lora.trainer
from coa_lora.lora.options import TrainOptions, even_budgets, lr_at


def test_options_validate_and_round_trip():
    o = TrainOptions(steps=6, budgets=(2.5, 4.0, 6.0), seq_length=32, draws="quasi")
    assert TrainOptions.from_dict(o.to_dict()) == o
    with pytest.raises(ValueError, match="Unknown method"):
        TrainOptions(method="dora")
    with pytest.raises(ValueError, match="exactly one budget"):
        TrainOptions(method="qlora", budgets=(2.5, 3.0))
    assert even_budgets(2.25, 7.25, 50)[::49] == (2.25, 7.25)


def test_schedule_warms_up_then_decays_to_zero():
    o = TrainOptions(steps=10, warmup=2, lr=1.0)
    assert [lr_at(s, o) for s in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_at(9, o) < 0.05 and lr_at(6, o) == pytest.approx(0.5)


def test_runs_saved_before_draws_existed_resume_with_random_draws():
    saved = {k: v for k, v in TrainOptions().to_dict().items() if k != "draws"}
    assert TrainOptions.saved(saved).draws == "random" and TrainOptions.from_dict(saved).draws == "anchored"
    assert TrainOptions().draws == "anchored"
    with pytest.raises(ValueError, match="draws"):
        TrainOptions(draws="sobol")


def test_the_trainer_module_still_exports_the_options():
    assert coa_lora.lora.trainer.TrainOptions is TrainOptions and coa_lora.lora.trainer.lr_at is lr_at


def test_alpha_follows_the_rank_unless_given_and_u_options_are_checked():
    assert TrainOptions().adapter_options().lora_alpha == 128.0 and TrainOptions().adapter_options().scaling == 2.0
    assert TrainOptions(rank=8).adapter_options().lora_alpha == 16.0
    assert TrainOptions(rank=8, alpha=8.0).adapter_options().scaling == 1.0
    assert TrainOptions.from_dict(TrainOptions().to_dict()).alpha is None  # new runs save None: 2 x rank
    for bad in ({"u_init_std": -1.0}, {"u_init_std": float("nan")}, {"u_lr_scale": float("inf")}, {"alpha": 0.0}):
        with pytest.raises(ValueError, match=f"TrainOptions.{next(iter(bad))} must be"):
            TrainOptions(**bad)
