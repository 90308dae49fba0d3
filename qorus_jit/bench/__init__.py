"""The benchmarks behind ``qorus bench``: ``suite`` (the figures, runner, table and perf gate), one
``bench_<family>`` module per kernel family (ours beside NumPy), and the model workloads ``train``, ``decode``,
``mlp_train``, ``model_startup`` and ``breakdown`` (ours beside PyTorch and ``transformers``). Each runs alone as
``python -m qorus_jit.bench.<name>``. References that are test extras (torch, transformers, scipy) are
imported only inside the functions that use them. docs/perf.md lists every figure.
"""
