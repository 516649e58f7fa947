"""The paper's experiments: hyper-parameters, data, models, training loop, plots."""
