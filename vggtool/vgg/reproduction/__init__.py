"""`vggtool reproduce`: the paper's findings (Tables 3-6 and the initialisation study) at laptop scale.

plan      the experiments: nets, training scales, initialisations, seeds, test scales, run sizes
paper     the paper's own figures, row by row, for the report
training  one cell trained in-process with vggtool's Solver (the one recipe of solver/mini/)
scoring   validation posteriors of a trained cell with vggtool.vgg.evaluate's Evaluator (dense, multi-crop)
tables    the tables' figures (mean and std over seeds) from the stored posteriors, and the findings
report    DIR/REPORT.md; plots: the PNG figures
run       the whole pipeline, from nothing to the report, resumable (each finished step is kept)
"""
