"""The LRF-Dyn device firmware in C99 (this folder's `*.c`, `*.h`, `Makefile`) and, in `launch`,
the Python helpers that build it and serve its host and QEMU builds for the host `Link`."""
