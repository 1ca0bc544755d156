"""bpfnet: Docker-style bridge networking with an eBPF fast path.

The import package is ``bpfnet``; its source folder is ``controller/``. The C
programs live in ``bpf/`` and are shipped as the ``bpfnet.bpf`` data package.
"""

__version__ = "0.1.0"
