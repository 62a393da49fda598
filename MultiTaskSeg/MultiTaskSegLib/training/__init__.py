"""Training and evaluating the network: datasets in the nnU-Net layout, prepared cases, balanced
dense blocks, the training loop, held-out evaluation and the paper's experiments. Imports the engine."""
