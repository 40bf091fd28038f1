"""The compiled hot path: typed bundles, kernels, activations, losses, optimizers, layout. No Python objects inside."""
