"""Training: model factory, pretrained models, batching, the training loop, SAM, evaluation."""
