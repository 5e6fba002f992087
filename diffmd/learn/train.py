"""``diffmd.train``: energy and force matching of neural potentials, from Python or a TOML config;
``mlmm_model`` runs a trained model on part of a system with Amber for the rest (hybrid ML/MM)."""

from ._train import (
    METRIC_COLUMNS,
    METRICS_FILE,
    TrainConfig,
    TrainResult,
    energy_scale,
    evaluate,
    fit_energy_shift,
    make_loss,
    make_optimizer,
    train,
    write_metrics,
)
from ._mlmm import check_ml_elements, mlmm_model
from ._train_config import (
    MODEL_BUILDERS,
    build_model,
    load_config,
    load_model,
    run_config,
    save_model,
    training_energy_range,
    validate_config,
)

__all__ = [
    "METRIC_COLUMNS",
    "METRICS_FILE",
    "TrainConfig",
    "TrainResult",
    "energy_scale",
    "evaluate",
    "fit_energy_shift",
    "make_loss",
    "make_optimizer",
    "train",
    "write_metrics",
    "check_ml_elements",
    "mlmm_model",
    "MODEL_BUILDERS",
    "build_model",
    "load_config",
    "load_model",
    "run_config",
    "save_model",
    "training_energy_range",
    "validate_config",
]
