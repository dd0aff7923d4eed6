#!/usr/bin/env python3
"""torch_cnn.py — the peer for bench/cnn.sh: torch_mlp.py's loop on the textbook CNN.
usage: torch_cnn.py THREADS"""
import os
import sys

sys.argv.append("cnn")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_mlp  # noqa: E402

torch_mlp.main()
