"""Model tests run torch single-threaded (two CPU cores are shared by the whole team)."""

import torch

torch.set_num_threads(1)
