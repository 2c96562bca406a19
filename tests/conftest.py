"""Suite-wide settings. Tests use tiny models, where two intra-op threads cost more than they give and, on a
loaded 2-core machine, make a forward pass orders of magnitude slower: one thread keeps timings steady."""

import torch

torch.set_num_threads(1)
