"""Where and how a process computes: its place in a torchrun job and its device, float32 and mixed-precision
modes, deterministic kernels, the counter-based randomness of training, and the provenance of a result."""
