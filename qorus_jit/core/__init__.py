"""Support code below the kernels: dtypes and the kernel decorator, threads, argument checks, aligned
allocation, atomic file writes."""
