"""deltaw's benchmarks: synthetic checkpoints with real shapes, deltaw against the baselines.

``python -m benchmarks run [--quick|--smoke]`` measures and writes results.json;
``python -m benchmarks table`` turns it into the README's table and scaling plot.
See benchmarks/README.md.
"""
