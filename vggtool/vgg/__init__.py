"""The paper's protocols, built on the engine (Net, data, io) and used by the CLI:

evaluate      the test protocol: dense (convolutionalised) or multi-crop, multi-scale, flips; scores files
extract       features of a convolutionalised net, pooled over locations and scales (Section 4.2)
svm           linear SVMs on extracted features (VOC, Caltech), top-k and mean AP
localize      box-regression nets, centre / full protocols, greedy box merging (Appendix A)
surgery       net surgery: InnerProduct -> Convolution, for dense evaluation
heatmaps      pictures of the dense class score maps; box_pictures: guessed and true boxes
initialisation  the layers the deeper nets take from net A
reproduction/   `vggtool reproduce`: the paper's tables at laptop scale

Box geometry lives in vggtool.data.boxes and the top-k rule in vggtool.ranking: the engine's Data and
Accuracy layers use them, and nothing in the engine imports from here.
"""
