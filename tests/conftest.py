import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))  # tests share cases.py


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (Hopper for the kernels); run on the device")
    config.addinivalue_line("markers", "sglang: needs SGLang installed")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: run on the device machine (see README)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
