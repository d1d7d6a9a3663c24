"""Evaluation: how well bundles do on data the models never saw.

evaluate.py scores one bundle on a manifest or an image folder (`ichdet evaluate`): metrics.json,
predictions.csv, figures. comparison.py compares models on the same cases (AUC with DeLong and
bootstrap CIs, pairwise DeLong tests, operating points, ROC curves). cv.py runs `ichdet cv`'s
k-fold cross-validation of the 2D models, and cv_results.py turns its out-of-fold scores into
metrics.json, predictions.csv and (through `ichdet.report.cv`) the report.
"""
