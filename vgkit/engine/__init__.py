"""The engine: data for a recipe, training, checkpoints, evaluation, benchmarks, prediction."""
