"""cripy's benchmark suite: cripy and containerd (CRI plugin) side by side, driven by the same CRI client.

Run it with `make bench` or `python -m bench.run [--quick] [--iterations N] [--output docs/benchmarks.md]`.
"""
