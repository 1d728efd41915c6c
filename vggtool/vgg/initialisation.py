"""The paper's initialisation of the deeper nets B..E from the trained net A (Section 3.1): its first four
conv layers and last three FC layers, copied by name (`vggtool train --init-from-a`)."""

INIT_FROM_A_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv3_2", "fc6", "fc7", "fc8")
