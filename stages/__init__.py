"""Fashion-MNIST pipeline: one entry point per DVC stage plus the shared modules they use."""
