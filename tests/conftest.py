import pytest
import torch

from model import GPT, GPTConfig


@pytest.fixture
def tiny_config():
    # small enough for milliseconds per forward, big enough to have several heads and layers
    return GPTConfig(block_size=32, vocab_size=61, n_layer=3, n_head=4, n_embd=32, dropout=0.0)


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return GPT(tiny_config).eval()
