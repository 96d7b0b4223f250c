"""kcdp-train and kcdp-eval: DA and UC training, evaluation, plots."""
