"""The method study (issue 16): held-out evaluation against the world's ground truth, and its report.

The Ray job that trains the cells is `cluster.study`; this package holds what needs no Ray: the config
(`settings`), the evaluation instruments (`instruments`), the per-style measurements (`evaluation`), the report
(`report`) and its charts (`charts`).
"""
