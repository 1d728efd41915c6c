"""The paper's own figures (ILSVRC-2012 validation, top-1 / top-5 error in %), printed beside ours.

Keys use the mini nets' names and training-scale keys (see plan.SCALES): "s36" stands for the paper's
S = 256, "s54" for S = 384, "jitter" for S in [256; 512].
"""

# Table 3: single test scale (Q = S, or Q = 384 for jittered S)
TABLE3 = {
    ("vgg_a", "s36"): (29.6, 10.4),
    ("vgg_a_lrn", "s36"): (29.7, 10.5),
    ("vgg_b", "s36"): (28.7, 9.9),
    ("vgg_c", "s36"): (28.1, 9.4),
    ("vgg_c", "s54"): (28.1, 9.3),
    ("vgg_c", "jitter"): (27.3, 8.8),
    ("vgg_d", "s36"): (27.0, 8.8),
    ("vgg_d", "s54"): (26.8, 8.7),
    ("vgg_d", "jitter"): (25.6, 8.1),
    ("vgg_e", "s36"): (27.3, 9.0),
    ("vgg_e", "s54"): (26.9, 8.7),
    ("vgg_e", "jitter"): (25.5, 8.0),
}
# Table 4: three test scales ({S-32, S, S+32} for fixed S; {256, 384, 512} for jittered S)
TABLE4 = {
    ("vgg_b", "s36"): (28.2, 9.6),
    ("vgg_c", "s36"): (27.7, 9.2),
    ("vgg_c", "s54"): (27.8, 9.2),
    ("vgg_c", "jitter"): (26.3, 8.2),
    ("vgg_d", "s36"): (26.6, 8.6),
    ("vgg_d", "s54"): (26.5, 8.6),
    ("vgg_d", "jitter"): (24.8, 7.5),
    ("vgg_e", "s36"): (26.9, 8.7),
    ("vgg_e", "s54"): (26.7, 8.6),
    ("vgg_e", "jitter"): (24.8, 7.5),
}
# Table 5: jittered S, Q in {256, 384, 512}
TABLE5 = {
    ("vgg_d", "dense"): (24.8, 7.5),
    ("vgg_d", "multicrop"): (24.6, 7.5),
    ("vgg_d", "both"): (24.4, 7.2),
    ("vgg_e", "dense"): (24.8, 7.5),
    ("vgg_e", "multicrop"): (24.6, 7.4),
    ("vgg_e", "both"): (24.4, 7.1),
}
# Table 6: fusion (top-1 val, top-5 val); the 7-net ILSVRC submission and the post-submission D + E pair
TABLE6 = {
    "submission7": (24.7, 7.5),
    ("de", "dense"): (24.0, 7.1),
    ("de", "multicrop"): (23.9, 7.2),
    ("de", "both"): (23.7, 6.8),
}
# Table 7 (comparison with other ILSVRC entries) has no counterpart here: the other methods are not run.
