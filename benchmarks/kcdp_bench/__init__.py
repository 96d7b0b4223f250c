"""kcdp-bench: latency and accuracy of kcdp exports through the runtime's Pipeline (installed as
kcdp_bench; the experiment scripts beside this folder in benchmarks/ are run from a checkout)."""
